"""Per-sample scores: one compressed file per (label, seed) next to its record (`run --save-scores`), from which every
OOD metric of the record is recomputed exactly (`python -m harness metrics --scores FILE`, `verify`).

The file (`FORMAT`, docs/submissions.md) is an `.npz` read with `allow_pickle=False`:
- `meta`: a JSON string with the format, benchmark, label, seed, fpr_positive, fpr_rule, and `sets`: per evaluated
  set in the order the run scored it (the ID test set first, named "ID", then the OOD sets) its name, item count
  and content fingerprint (`harness.data.fingerprints`);
- `scores_<i>`: set i's scores as `Method.score` returned them (float64; higher = more in-distribution);
- `ids_<i>`: set i's item ids (file paths); absent when they are the positions 0..count-1 (in-memory sets).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import atomic_write_bytes
from harness.config import MAX_SEED, is_whole
from harness.data.fingerprints import ID_SET, SetIdentity
from harness.metrics import METRIC_NAMES, FprRule, Positive, average_metrics, ood_metrics
from harness.paths import SAFE_NAME
from harness.records.results import RunRecord

FORMAT = "oodbench-scores/1"
POSITIVES = ("id", "ood")
RULES = ("recall-at-least", "hendrycks")
MAX_UNPACKED_BYTES = 1 << 30  # what a scores file may unpack to (hostile files: `read_scores`)


def shown(text: Any) -> str:
    """`text` for a one-line message: as it is when printable, else escaped (records and bundles may be hostile)."""
    return text[:200] if isinstance(text, str) and text.isprintable() else ascii(text)[:200]


def run_name(benchmark: Any, label: Any, seed: Any) -> str:
    return f"{shown(benchmark)}/{shown(label)}/seed{seed}"


@dataclass(frozen=True)
class SetScores:
    name: str
    fingerprint: str
    ids: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class ScoresFile:
    """The per-sample scores of one run: `sets[0]` is the ID test set, the others the OOD sets, in scoring order."""

    benchmark: str
    label: str
    seed: int
    fpr_positive: str
    fpr_rule: str
    sets: tuple[SetScores, ...]

    @property
    def where(self) -> str:
        return run_name(self.benchmark, self.label, self.seed)

    def metrics(self, positive: Positive | None = None, rule: FprRule | None = None
                ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """Every OOD set's metrics and their average, as the run computed them (`harness.runner.evaluate`), under
        the file's FPR95 conventions unless `positive` / `rule` are given."""
        id_scores = self.sets[0].scores
        per_set = {s.name: ood_metrics(id_scores, s.scores, positive or self.fpr_positive, rule or self.fpr_rule)
                   for s in self.sets[1:]}
        return per_set, average_metrics(per_set)


def scores_path(record: RunRecord, out_dir: Path) -> Path:
    return record.directory(out_dir) / f"seed{record.seed}_scores.npz"


def encode_scores(scores: ScoresFile, dtype: type = np.float64) -> bytes:
    """The `.npz` bytes of `scores`, its scores stored as `dtype`; the same scores give the same bytes."""
    meta = {"format": FORMAT, "benchmark": scores.benchmark, "label": scores.label, "seed": scores.seed,
            "fpr_positive": scores.fpr_positive, "fpr_rule": scores.fpr_rule,
            "sets": [{"name": s.name, "count": len(s.scores), "fingerprint": s.fingerprint} for s in scores.sets]}
    arrays = {"meta": np.array(json.dumps(meta, sort_keys=True))}
    for i, s in enumerate(scores.sets):
        arrays[f"scores_{i}"] = np.asarray(s.scores, dtype=dtype)
        if s.ids.dtype.kind != "i" or not np.array_equal(s.ids, np.arange(len(s.ids))):
            arrays[f"ids_{i}"] = s.ids
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:  # np.savez_compressed with fixed times
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def published_form(record: RunRecord, scores: ScoresFile) -> bytes:
    """The bytes `publish` stores for `scores`: float32 (half the size) when every metric of `record` recomputes
    exactly from the rounded scores, else float64 (rounding can tie two scores and move a metric by a rank)."""
    single = encode_scores(scores, np.float32)
    return single if not check_against_record(record, decode_scores(single)) else encode_scores(scores)


def save_scores(record: RunRecord, out_dir: Path, scores: dict[str, np.ndarray],
                identities: dict[str, SetIdentity]) -> str:
    """Write the scores of `record`'s run (by set name, in scoring order) next to it; returns the file's path
    relative to `out_dir`, for the record's `scores_file`."""
    sets = tuple(SetScores(name, identities[name].fingerprint, identities[name].ids, values)
                 for name, values in scores.items())
    path = scores_path(record, out_dir)
    atomic_write_bytes(path, encode_scores(ScoresFile(record.benchmark, record.label, record.seed,
                                                      record.fpr_positive, record.fpr_rule, sets)))
    return path.relative_to(out_dir).as_posix()


def _field(meta: dict[str, Any], key: str, kind: type) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"meta.{key} is {shown(value)}, not a {kind.__name__}")
    return value


def decode_scores(data: bytes) -> ScoresFile:
    """The scores file in `data`, checked field by field (it may be hostile: no pickles, bounded unpacked size);
    ValueError naming the first problem."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > MAX_UNPACKED_BYTES:
            raise ValueError(f"it unpacks to {unpacked:,} bytes, more than a scores file may ({MAX_UNPACKED_BYTES:,})")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as err:
        raise ValueError(f"not an .npz scores file ({type(err).__name__}: {err})") from None
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, json.JSONDecodeError):
        raise ValueError("its meta entry is missing or not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"not a scores file of format {FORMAT}")
    seed = meta.get("seed")
    if not is_whole(seed, 0, MAX_SEED):
        raise ValueError(f"meta.seed {seed!r} is not an integer from 0 to {MAX_SEED}")
    positive, rule = _field(meta, "fpr_positive", str), _field(meta, "fpr_rule", str)
    if positive not in POSITIVES or rule not in RULES:
        raise ValueError(f"FPR95 conventions {positive!r}, {rule!r} are not among {POSITIVES} and {RULES}")
    entries = _field(meta, "sets", list)
    if len(entries) < 2 or not all(isinstance(e, dict) for e in entries):
        raise ValueError("meta.sets must list the ID set and at least one OOD set")
    sets = []
    for i, entry in enumerate(entries):
        name = _field(entry, "name", str)
        if not SAFE_NAME.fullmatch(name) or name in {s.name for s in sets} or (i == 0) != (name == ID_SET):
            raise ValueError(f"set {i} is named {name!r}: sets need distinct safe names, {ID_SET!r} first and only")
        count, values = _field(entry, "count", int), arrays.get(f"scores_{i}")
        if values is None or values.dtype.kind != "f" or values.shape != (count,):
            raise ValueError(f"set {name}: scores_{i} is not {count} floating-point scores")
        ids = arrays.get(f"ids_{i}", np.arange(count))
        if ids.dtype.kind not in "iU" or ids.shape != (count,):
            raise ValueError(f"set {name}: ids_{i} is not {count} integers or strings")
        if not np.isfinite(values).all():
            raise ValueError(f"set {name}: scores contain NaN or infinity")
        fingerprint = _field(entry, "fingerprint", str)
        if not re.fullmatch(r"[0-9a-f]{16}", fingerprint):
            raise ValueError(f"set {name}: fingerprint {shown(fingerprint)} is not 16 hex digits")
        sets.append(SetScores(name, fingerprint, ids, values.astype(np.float64)))
    return ScoresFile(_field(meta, "benchmark", str), _field(meta, "label", str), seed, positive, rule, tuple(sets))


def read_scores(path: Path) -> ScoresFile:
    """The scores file at `path`; ValueError naming the problem when it is not one."""
    return decode_scores(Path(path).read_bytes())


def check_against_record(record: RunRecord, scores: ScoresFile) -> list[str]:
    """One line per disagreement between `record` and its scores: which run, the conventions, the sets and their
    sizes, and every metric recomputed from the scores (compared exactly: a JSON float keeps every bit)."""
    where = f"record {run_name(record.benchmark, record.label, record.seed)}"
    claimed = (record.benchmark, record.label, record.seed, record.fpr_positive, record.fpr_rule)
    stored = (scores.benchmark, scores.label, scores.seed, scores.fpr_positive, scores.fpr_rule)
    if claimed != stored:
        return [f"{where}: its scores file is of {scores.where} (fpr {scores.fpr_positive}, {scores.fpr_rule}), not "
                f"of this run (fpr {record.fpr_positive}, {record.fpr_rule})"]
    sizes = {s.name: len(s.scores) for s in scores.sets}
    if set(sizes) != {ID_SET, *record.metrics}:
        return [f"{where}: scores of sets {', '.join(sizes)}, but the record's are {ID_SET}, "
                f"{', '.join(map(shown, record.metrics))}"]
    evaluated = record.eval_sizes if isinstance(record.eval_sizes, dict) else {}
    problems = [f"{where}: set {name} has {sizes[name]} scores, the record evaluated {shown(evaluated.get(name))}"
                for name in sizes if evaluated.get(name) != sizes[name]]
    per_set, average = scores.metrics()
    for name, recomputed in [*per_set.items(), ("Average", average)]:
        stored_metrics = record.average if name == "Average" else record.metrics[name]
        for metric in METRIC_NAMES:
            value = stored_metrics.get(metric)
            if value != recomputed[metric]:
                problems.append(f"{where}: set {name} {metric} stored {value!r}, recomputed {recomputed[metric]!r}")
    return problems


def metrics_table(scores: ScoresFile, positive: Positive | None = None, rule: FprRule | None = None) -> str:
    """The metrics recomputed from `scores`, one row per OOD set and the average, every digit shown."""
    from tabulate import tabulate

    per_set, average = scores.metrics(positive, rule)
    rows = [[name, *(values[m] for m in METRIC_NAMES)] for name, values in [*per_set.items(), ("Average", average)]]
    counts = ", ".join(f"{s.name} {len(s.scores)}" for s in scores.sets)
    conventions = (f"FPR95 positive {positive or scores.fpr_positive}, rule {rule or scores.fpr_rule}"
                   + ("" if (positive or scores.fpr_positive, rule or scores.fpr_rule)
                      == (scores.fpr_positive, scores.fpr_rule) else " (the file's: "
                      f"{scores.fpr_positive}, {scores.fpr_rule})"))
    return (f"{scores.where}: {conventions}; items: {counts}\n"
            + tabulate(rows, headers=["set", *METRIC_NAMES], tablefmt="github", floatfmt=""))
