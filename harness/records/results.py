"""Result records: one JSON file per (benchmark, method label, seed), with everything needed to trust and redo it."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_bytes
from harness.config import MAX_SEED, content_hash, is_number, is_whole
from harness.errors import HarnessError
from harness.paths import CODE_ROOT, check_name, path_under
from harness.records.provenance import numeric_facts
from harness.version import __version__

LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "faiss-cpu", "faiss-gpu", "pandas", "timm",
             "diffusers", "transformers", "FrEIA")


def code_version() -> str:
    """Git commit of the harness checkout (with `-dirty` if tracked files changed), else the package version."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=CODE_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=CODE_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return f"v{__version__}"


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def run_label(method: str, changes: dict[str, Any]) -> str:
    """`knn` for defaults; `knn(k=100,classifier.epochs=2)` when settings differ from the defaults."""
    if not changes:
        return method
    return f"{method}(" + ",".join(f"{k}={v}" for k, v in sorted(changes.items())) + ")"


def label_slug(label: str) -> str:
    """A file-system-safe directory name for a label: readable prefix plus a hash when settings differ."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", label):
        return label
    head = re.sub(r"[^A-Za-z0-9_.-]+", "_", label.split("(")[0])
    return f"{head}--{content_hash(label, length=10)}"


@dataclass
class RunRecord:
    benchmark: str
    method: str
    label: str
    seed: int
    paper: str
    kind: str
    config: dict[str, Any]
    classifier_config: dict[str, Any] | None
    fpr_positive: str
    metrics: dict[str, dict[str, float]]
    average: dict[str, float]
    id_accuracy: float | None
    eval_sizes: dict[str, int]
    stage_seconds: dict[str, float]
    device: str
    code_version: str = field(default_factory=code_version)
    libraries: dict[str, str] = field(default_factory=library_versions)
    details: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    scores_file: str | None = None  # the per-sample scores (`--save-scores`), relative to the out dir (records.scores)
    data: dict[str, Any] = field(default_factory=dict)  # preset, data root, per set: source, path, subset drawn
    fpr_rule: str = "recall-at-least"  # FPR95 threshold rule (harness.metrics); older records used this one
    environment: dict[str, Any] = field(default_factory=dict)  # threads, kernels, CPU/GPU, CUDA/cuDNN, flags
    plugin: dict[str, str] = field(default_factory=dict)  # the method's distribution, version and source hash
    model: dict[str, Any] = field(default_factory=dict)  # your own classifier (`--model`): `ModelSpec.facts`
    # per OOD group ("near", "far") present, each metric's mean over its sets (records.statistics.group_averages)
    group_average: dict[str, dict[str, float]] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)  # per-stage seconds and peak memory, images (records.cost)

    @property
    def facts(self) -> dict[str, Any]:
        """The numerics-relevant provenance (code version, torch, threads, hardware: records.provenance)."""
        return numeric_facts(self.code_version, self.libraries, self.environment)

    def directory(self, out_dir: Path) -> Path:
        return path_under(out_dir, "records", check_name(self.benchmark, "benchmark name"), label_slug(self.label))

    def path(self, out_dir: Path) -> Path:
        if not is_whole(self.seed, 0, MAX_SEED):
            raise HarnessError(f"seed {self.seed!r} of {self.label} must be an integer from 0 to {MAX_SEED}")
        return self.directory(out_dir) / f"seed{self.seed}.json"

    def save(self, out_dir: Path) -> Path:
        path = self.path(out_dir)
        atomic_write_bytes(path, (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode())
        return path


def read_record(path: Path) -> RunRecord:
    """The record stored at `path`, checked for what leaderboards and regress read; ValueError naming the problem
    when it is truncated, not a record, or of the wrong shape."""
    return parse_record(Path(path).read_bytes())


def parse_record(data: bytes) -> RunRecord:
    """The record in the JSON bytes `data`, checked as `read_record` says."""
    try:
        raw = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not valid JSON ({type(err).__name__})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"a JSON {type(raw).__name__}, not a record object")
    try:
        record = RunRecord(**raw)
    except TypeError as err:
        raise ValueError(str(err).replace("RunRecord.__init__() ", "")) from None
    for name in ("benchmark", "method", "label", "kind", "fpr_positive"):
        if not isinstance(getattr(record, name), str):
            raise ValueError(f"{name} is {getattr(record, name)!r}, not a string")
    check_name(record.benchmark, "benchmark name")
    if not is_whole(record.seed, 0, MAX_SEED):
        raise ValueError(f"seed {record.seed!r} is not an integer from 0 to {MAX_SEED}")
    per_set = record.metrics if isinstance(record.metrics, dict) else None
    if not per_set or not all(isinstance(m, dict) and all(is_number(v) for v in m.values()) for m in per_set.values()):
        raise ValueError("metrics must map each set to numbers")
    if not isinstance(record.average, dict) or not all(is_number(v) for v in record.average.values()):
        raise ValueError("average must map each metric to a number")
    if not isinstance(record.group_average, dict) or not all(
            isinstance(m, dict) and all(is_number(v) for v in m.values()) for m in record.group_average.values()):
        raise ValueError("group_average must map each OOD group to numbers")
    if record.id_accuracy is not None and not is_number(record.id_accuracy):
        raise ValueError(f"id_accuracy {record.id_accuracy!r} is not a number")
    return record


def read_records(paths: list[Path]) -> list[RunRecord]:
    """The readable records of `paths`; each broken one is reported in one warning line naming it, and skipped."""
    records = []
    for path in paths:
        try:
            records.append(read_record(path))
        except (ValueError, HarnessError) as err:
            print(f"warning: skipping record {path}: {err}", file=sys.stderr)
    return records


def load_records(out_dir: Path, benchmark: str | None = None) -> list[RunRecord]:
    root = Path(out_dir) / "records"
    pattern = f"{benchmark}/*/seed*.json" if benchmark else "*/*/seed*.json"
    return read_records(sorted(root.glob(pattern)))


def load_record_tree(directory: Path, benchmark: str) -> list[RunRecord]:
    """Every record under `directory` (a results directory, its `records/`, or one benchmark's records), all of
    which must be of `benchmark`."""
    records = read_records(sorted(Path(directory).rglob("seed*.json")))
    if not records:
        raise HarnessError(f"no records (seed*.json) under {directory}; pass the directory a run wrote")
    others = sorted({r.benchmark for r in records} - {benchmark})
    if others:
        raise HarnessError(f"--records {directory} holds records of benchmark {others[0]!r}, not {benchmark!r}; "
                           f"pass --benchmark {others[0]} or that benchmark's records")
    return records
