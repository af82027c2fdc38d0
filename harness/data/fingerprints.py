"""What a per-sample scores file names the evaluated sets by (`harness.records.scores`): each set's portable content
fingerprint, which `verify` recomputes from local data, and each item's id.

- In-memory image sets and text sets: their `fingerprint`, a SHA-256 (first 16 hex digits) of the pixels (texts) and
  labels in order. Item ids are positions in the set as evaluated (after the subset draw the record's `data` names).
- File-backed image sets (`storage: files`): a SHA-256 of the preprocessing, each file's SHA-256 in order, and the
  labels, which reads every file once: it is cached under the set's own fingerprint (paths, sizes and modification
  times), so an unchanged set is not read again. Item ids are the file paths, relative to the data root when under
  it. File names do not enter the fingerprint: the same bytes under another data root match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import Cache
from harness.data.benchmarks import Benchmark, load_benchmark
from harness.data.check import check_data, data_problem_message, reads_data_root
from harness.data.readers import resolve_data_root
from harness.data.sets import AnyImageSet, FileImageSet
from harness.data.spec import BenchmarkSpec
from harness.errors import HarnessError
from harness.paths import file_sha256

FINGERPRINT_VERSION = 1  # bump when the fingerprint of file-backed sets changes (its cache key holds it)
ID_SET = "ID"  # the name of the ID test set in scores files and records' `eval_sizes`


def content_fingerprint(data_set: Any, cache: Cache) -> str:
    """The set's portable content fingerprint (module docstring)."""
    if not isinstance(data_set, FileImageSet):
        return data_set.fingerprint

    def compute() -> str:
        digest = hashlib.sha256(f"{data_set.size} {data_set.channels} {data_set.preprocess} {data_set.resize}".encode())
        for file in data_set.files:
            digest.update(bytes.fromhex(file_sha256(Path(file))))
        if data_set.labels is not None:
            digest.update(data_set.labels.numpy().astype(np.int64).tobytes())
        return digest.hexdigest()[:16]

    return cache.get_or_compute("set-fingerprint", f"v{FINGERPRINT_VERSION}-{data_set.fingerprint}", compute)


def item_ids(data_set: Any, data_root: Path | None) -> np.ndarray:
    """The ids of the set's items in order (module docstring): int64 positions, or file paths as strings."""
    if not isinstance(data_set, FileImageSet):
        return np.arange(len(data_set), dtype=np.int64)
    root = Path(data_root).expanduser().resolve() if data_root else None

    def shown(file: str) -> str:
        path = Path(file).resolve()
        return str(path.relative_to(root)) if root and path.is_relative_to(root) else file

    return np.array([shown(file) for file in data_set.files], dtype=str)


@dataclass(frozen=True)
class SetIdentity:
    """What a scores file names one evaluated set by: its content fingerprint and its items' ids."""

    fingerprint: str
    ids: np.ndarray


def evaluated_sets(benchmark: Benchmark) -> dict[str, AnyImageSet]:
    """The sets a run scores, in the order it scores them: the ID test set (`ID_SET`), then the OOD sets."""
    return {ID_SET: benchmark.test, **benchmark.ood}


def identify_sets(benchmark: Benchmark, cache: Cache, data_root: Path | None) -> dict[str, SetIdentity]:
    """Every evaluated set's identity, by set name in scoring order."""
    return {name: SetIdentity(content_fingerprint(data_set, cache), item_ids(data_set, data_root))
            for name, data_set in evaluated_sets(benchmark).items()}


def local_fingerprints(spec: BenchmarkSpec, preset: str, data_root: Path | None, cache: Cache) -> dict[str, str]:
    """The content fingerprint of every set `spec` evaluates under `preset`, from the data found here (`data_root`
    as `--data-root` takes it); a HarnessError naming the first set that cannot be read."""
    root = resolve_data_root(data_root) if data_root or reads_data_root(spec) else None
    check = check_data(spec, root)
    problem = data_problem_message(spec, check, allow_incomplete=False)
    if problem:
        raise HarnessError(problem)
    benchmark = load_benchmark(spec, cache, root, spec.preset(preset), check)
    return {name: content_fingerprint(data_set, cache) for name, data_set in evaluated_sets(benchmark).items()}
