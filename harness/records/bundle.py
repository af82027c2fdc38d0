"""A verifiable submission (docs/submissions.md). `python -m harness submit` bundles records with their per-sample
scores (`harness.records.scores`), the data fingerprints and the submitting environment into one `.tar.gz` whose
`manifest.json` holds the SHA-256 of every other member; `python -m harness verify` recomputes every metric from the
scores, checks the fingerprints against the local benchmark data, and checks the manifest.

A bundle is hostile input: it is read in memory, never extracted. Every member must be a regular file of bounded
size named as a bundle names its members (`MEMBER_NAME`); anything else refuses the whole file in one line.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cache import Cache, atomic_write_bytes
from harness.data.fingerprints import local_fingerprints
from harness.data.spec import load_spec
from harness.errors import HarnessError
from harness.numerics import current_mode
from harness.paths import SAFE_NAME
from harness.records.results import RunRecord, code_version, label_slug, library_versions, parse_record, read_record
from harness.records.scores import ScoresFile, check_against_record, decode_scores, read_scores, run_name, shown

FORMAT = "oodbench-submission/1"
MANIFEST, ENVIRONMENT, FINGERPRINTS = "manifest.json", "environment.json", "fingerprints.json"
MEMBER_NAME = re.compile(r"(manifest|environment|fingerprints)\.json|"
                         rf"records/{SAFE_NAME.pattern}/[A-Za-z0-9_.-]{{1,200}}/seed[0-9]{{1,10}}(\.json|_scores\.npz)")
RECORD_MEMBER = re.compile(r"records/.*/seed[0-9]+\.json")
MAX_MEMBER_BYTES = 256 << 20
MAX_BUNDLE_BYTES = 4 << 30  # unpacked, all members together
MAX_MEMBERS = 100_000
SUBMIT_HINT = "make one with `python -m harness submit --records DIR`"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_member(record: RunRecord) -> str:
    return f"records/{record.benchmark}/{label_slug(record.label)}/seed{record.seed}.json"


def scores_member(record: RunRecord) -> str:
    """Where a run writes its scores relative to its out dir (`scores.save_scores`), and the bundle holds them."""
    return f"records/{record.benchmark}/{label_slug(record.label)}/seed{record.seed}_scores.npz"


def seal(members: dict[str, bytes]) -> bytes:
    """The `.tar.gz` of `members` and their manifest, byte-for-byte reproducible (sorted, fixed times and owners)."""
    manifest = {"format": FORMAT, "members": {name: sha256(data) for name, data in sorted(members.items())}}
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed, tarfile.open(fileobj=packed, mode="w") as tar:
        for name, data in [(MANIFEST, json.dumps(manifest, indent=2).encode()), *sorted(members.items())]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _member_problem(member: tarfile.TarInfo, seen: dict[str, bytes], total: int) -> str | None:
    if not member.isfile():
        return "is not a regular file (a link, folder or device); a bundle holds regular files only"
    if not MEMBER_NAME.fullmatch(member.name) or {".", ".."} & set(member.name.split("/")):
        return f"is not a name a bundle holds ({MANIFEST}, {ENVIRONMENT}, {FINGERPRINTS}, records/B/L/seedN.json or " \
               "records/B/L/seedN_scores.npz)"
    if member.name in seen:
        return "appears twice"
    if member.size > MAX_MEMBER_BYTES or total + member.size > MAX_BUNDLE_BYTES or len(seen) >= MAX_MEMBERS:
        return f"is too large ({member.size:,} bytes; at most {MAX_MEMBER_BYTES:,} a member, " \
               f"{MAX_BUNDLE_BYTES:,} in all, {MAX_MEMBERS:,} members)"
    return None


def read_bundle(path: Path) -> dict[str, bytes]:
    """Every member of the bundle at `path` by name, read in memory (module docstring); a HarnessError naming the
    problem when it is not a bundle, is corrupt, or holds a member it must not."""
    refused = f"{path} is not an oodbench submission"
    members: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                problem = _member_problem(member, members, total)
                if problem:
                    raise HarnessError(f"{refused}: member {member.name[:200]!r} {problem}; {SUBMIT_HINT}")
                members[member.name] = tar.extractfile(member).read()
                total += member.size
    except FileNotFoundError:
        raise HarnessError(f"bundle {path} does not exist; pass the file `python -m harness submit` wrote") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise HarnessError(f"{refused} (not a readable .tar.gz: {type(err).__name__}: {str(err)[:200]}); "
                           f"{SUBMIT_HINT}") from None
    if MANIFEST not in members:
        raise HarnessError(f"{refused} (no {MANIFEST}); {SUBMIT_HINT}")
    return members


def submit(records_dir: Path, out_file: Path) -> list[RunRecord]:
    """Bundle every record under `records_dir` with its scores into `out_file`; refuses (one line, nothing written)
    a record without scores, with scores that do not give its numbers, or two runs of different data for one set."""
    import torch

    from harness.records.provenance import environment

    paths = sorted(Path(records_dir).rglob("seed*.json"))
    if not paths:
        raise HarnessError(f"no records (seed*.json) under {records_dir}; pass the --out directory of a run")
    members: dict[str, bytes] = {}
    fingerprints: dict[str, dict[str, dict[str, str]]] = {}
    records, lacking = [], []
    for path in paths:
        try:
            record = read_record(path)
        except ValueError as err:
            raise HarnessError(f"record {path} cannot be read ({err}); remove it or rerun it") from None
        if not record.scores_file:
            lacking.append(path)
            continue
        scores_file = path.with_name(Path(record.scores_file).name)
        try:
            scores = read_scores(scores_file)
        except (OSError, ValueError) as err:
            raise HarnessError(f"scores file {scores_file} of record {path} cannot be read ({err}); rerun the record "
                               "with --save-scores") from None
        problems = check_against_record(record, scores)
        if problems:
            raise HarnessError(f"{problems[0]} (and {len(problems) - 1} more): the scores next to {path} do not give "
                               "its numbers; rerun it with --save-scores")
        if record_member(record) in members:
            raise HarnessError(f"two records of {scores.where} under {records_dir}; keep one")
        sets = fingerprints.setdefault(record.benchmark, {}).setdefault(_preset(record), {})
        for s in scores.sets:
            if sets.setdefault(s.name, s.fingerprint) != s.fingerprint:
                raise HarnessError(f"records under {records_dir} were scored on different data for set {s.name} of "
                                   f"{record.benchmark} (fingerprints {sets[s.name]} and {s.fingerprint}, the latter "
                                   f"in {path}); submit runs of one data version")
        members[record_member(record)] = path.read_bytes()
        members[scores_member(record)] = scores_file.read_bytes()
        records.append(record)
    if lacking:
        raise HarnessError(f"{len(lacking)} of {len(paths)} records have no per-sample scores (first: {lacking[0]}); "
                           "rerun them with --save-scores (python -m harness run ... --save-scores)")
    members[FINGERPRINTS] = json.dumps(fingerprints, indent=2, sort_keys=True).encode()
    members[ENVIRONMENT] = json.dumps({"code_version": code_version(), "libraries": library_versions(),
                                       "environment": environment(torch.device("cpu"))}, indent=2).encode()
    atomic_write_bytes(Path(out_file), seal(members))
    return records


def _preset(record: RunRecord) -> str:
    preset = record.data.get("preset", "paper") if isinstance(record.data, dict) else "paper"
    return preset if isinstance(preset, str) else "paper"


@dataclass
class Verification:
    """What `verify` found: one line per problem, and how many checks matched."""

    problems: list[str] = field(default_factory=list)
    records: int = 0
    exact_records: int = 0  # records whose every metric equals the one recomputed from their scores
    fingerprints: int = 0
    members: int = 0

    @property
    def summary(self) -> str:
        matched = (f"{self.exact_records} of {self.records} records give every metric exactly from their scores, "
                   f"{self.fingerprints} set fingerprints match the local data, {self.members} member hashes match "
                   "the manifest")
        if self.problems:
            return f"verify: FAILED, {len(self.problems)} problem(s); {matched}"
        return f"verify: OK; {matched}"


def _manifest(members: dict[str, bytes], path: Path) -> dict[str, str]:
    try:
        manifest = json.loads(members[MANIFEST].decode())
        listed = manifest["members"]
        if manifest["format"] != FORMAT or not all(isinstance(v, str) for v in listed.values()):
            raise ValueError(f"format {manifest['format']!r}")
        return listed
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise HarnessError(f"{path} is not an oodbench submission ({MANIFEST} is not a {FORMAT} manifest: "
                           f"{type(err).__name__}); {SUBMIT_HINT}") from None


def verify(path: Path, data_root: Path | None = None, benchmark: str | None = None,
           cache: Cache | None = None) -> Verification:
    """Check the bundle at `path`: the manifest's hashes, every record's metrics recomputed from its scores, and
    every set's fingerprint against the data found here (`benchmark`: the spec to load, by name or path, when a
    record's benchmark is not a shipped one; `cache`: where the local data is built, default the stage cache)."""
    import torch

    from harness.records.provenance import numerics_scope

    members = read_bundle(path)
    listed = _manifest(members, path)
    result = Verification()
    for name in sorted((set(members) - {MANIFEST}) | set(listed)):
        if name not in members:
            result.problems.append(f"member {shown(name)}: listed in the manifest, missing from the bundle")
        elif name not in listed:
            result.problems.append(f"member {name}: in the bundle, not in the manifest")
        elif sha256(members[name]) != listed[name]:
            result.problems.append(f"member {name}: sha256 {sha256(members[name])[:16]}… differs from the "
                                   f"manifest's {listed[name][:16]}…")
        else:
            result.members += 1
    try:
        bundled = json.loads(members.get(FINGERPRINTS, b"{}").decode())
    except (UnicodeDecodeError, ValueError):
        bundled = None
    if not isinstance(bundled, dict):
        result.problems.append(f"member {FINGERPRINTS}: not a JSON object")
        bundled = {}
    cache = (cache or Cache()).scoped(numerics_scope(torch.device("cpu")))
    local: dict[tuple[str, str], dict[str, str] | str] = {}
    scored = set()
    for name in sorted(n for n in members if RECORD_MEMBER.fullmatch(n)):
        try:
            record = parse_record(members[name])
        except (ValueError, HarnessError) as err:
            result.problems.append(f"member {name}: not a readable record ({err})")
            continue
        where = f"record {run_name(record.benchmark, record.label, record.seed)}"
        if name != record_member(record):
            result.problems.append(f"member {name}: holds {where}, which belongs at {record_member(record)}")
            continue
        result.records += 1
        scores_name = scores_member(record)
        scored.add(scores_name)
        if record.scores_file != scores_name or scores_name not in members:
            result.problems.append(f"{where}: its scores {scores_name} are not in the bundle (scores_file "
                                   f"{record.scores_file!r})")
            continue
        try:
            scores = decode_scores(members[scores_name])
        except ValueError as err:
            result.problems.append(f"{where}: scores {scores_name} cannot be read ({err})")
            continue
        problems = check_against_record(record, scores)
        result.problems += problems
        result.exact_records += not problems
        _check_fingerprints(record, scores, where, bundled, local, data_root, benchmark, cache, result)
    result.problems += [f"member {name}: scores that no record in the bundle names" for name in
                        sorted(n for n in members if n.endswith("_scores.npz") and n not in scored)]
    if not result.records:
        result.problems.append(f"{path} holds no records: nothing to verify")
    return result


def _check_fingerprints(record: RunRecord, scores: ScoresFile, where: str, bundled: dict[str, Any],
                        local: dict[tuple[str, str], dict[str, str] | str], data_root: Path | None,
                        benchmark: str | None, cache: Cache, result: Verification) -> None:
    """Each scored set's fingerprint against `fingerprints.json` and the local data of the record's benchmark and
    preset (loaded once per pair into `local`; a string there is why they could not be)."""
    preset = _preset(record)
    key = (record.benchmark, preset)
    if key not in local:
        try:
            spec = load_spec(benchmark or record.benchmark)
            if spec.name != record.benchmark:
                raise HarnessError(f"--benchmark {benchmark} is benchmark {spec.name}, not {record.benchmark}")
            local[key] = local_fingerprints(spec, preset, data_root, cache)
        except HarnessError as err:
            local[key] = str(err)
            result.problems.append(f"benchmark {record.benchmark} (preset {preset}): fingerprints not checked: {err}")
    found = local[key]
    presets = bundled.get(record.benchmark)
    summary = presets.get(preset) if isinstance(presets, dict) else None
    summary = summary if isinstance(summary, dict) else {}
    for s in scores.sets:
        if summary.get(s.name) != s.fingerprint:
            result.problems.append(f"{where}: set {s.name} fingerprint {s.fingerprint} is not the one {FINGERPRINTS} "
                                   f"lists ({shown(summary.get(s.name))})")
        if isinstance(found, str):
            continue
        if s.name not in found:
            result.problems.append(f"{where}: set {s.name} is not a set of benchmark {record.benchmark} here; its "
                                   "data cannot be checked")
        elif found[s.name] != s.fingerprint:
            ran = record.environment.get("kernels", {}).get("mode") if isinstance(record.environment, dict) else None
            hint = f"; the run used --kernels {ran}, this check {current_mode()}" if ran != current_mode() else ""
            result.problems.append(f"{where}: set {s.name} fingerprint stored {s.fingerprint}, local data "
                                   f"{found[s.name]} (benchmark {record.benchmark}, preset {preset}{hint})")
        else:
            result.fingerprints += 1
