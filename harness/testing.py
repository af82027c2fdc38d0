"""Regression checks, once for `python -m harness regress` and for test suites: hold a method (a built-in or your
plugin) within the tolerances of committed expectations (`harness.records.regression`).

    from harness.testing import assert_within_tolerance

    def test_my_method_holds_its_numbers(tmp_path):
        assert_within_tolerance("mymethod", expectations=Path(__file__).with_name("expectations.json"),
                                out_dir=tmp_path)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.cache import Cache
from harness.config import parse_set_options
from harness.plan import Plan, RunRequest, plan
from harness.records import regression
from harness.records.results import RunRecord
from harness.runner import execute


def held_to(planned: Plan, doc: dict[str, Any] | None, path: Path, seeds_given: bool = True,
            threads_given: bool = True, new_labels: bool = False) -> Plan:
    """`planned` as the expectations `doc` (read from `path`) hold it: every label must be in them (unless
    `new_labels`, for an `--update` that adds some) and, unless given, the run takes their recorded thread count
    and seeds. With no expectations yet (`doc` None, a first `--update`) the plan is returned as it is."""
    if doc is None:
        return planned
    if not new_labels:  # a label the expectations lack: an error before any work
        regression.check_labels(doc, planned.labels, path)
    changes: dict[str, Any] = {}
    if not threads_given:
        changes["threads"] = regression.recorded_threads(doc, planned.labels)
    if not seeds_given:
        changes["seeds"] = regression.recorded_seeds(doc, planned.labels)
    return planned.with_request(**changes)


def report(checks: list[regression.Check], doc: dict[str, Any], records: list[RunRecord], path: Path) -> str:
    """The comparison as a person reads it: the table of every check, a note on runs without portable kernels,
    the provenance that differs from the expectations', the minimal detectable effect per label, and the verdict
    naming the failing checks."""
    lines = [regression.table(checks)]
    unpinned = regression.unpinned_labels(records)
    if unpinned:
        lines.append(f"\nnote: {', '.join(unpinned)} ran without portable kernels (--native-kernels, a GPU, or a CPU "
                     "the portable set cannot run on): exact reproduction is expected only in the very environment "
                     "the expectations hold, measured-drift tolerances apply elsewhere")
    notes = regression.provenance_notes(doc, records)
    if notes:
        lines.append("\nprovenance differs from the expectations' (a likely cause of any difference):")
        lines += [f"  {note}" for note in notes]
    lines.append("\nminimal detectable effect per label (pp; a shift of every seed beyond it fails):")
    lines += [f"  {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in effects.items())
              for label, effects in regression.detectable_effects(checks).items()]
    failed = [c for c in checks if not c.passed]
    if failed:
        lines.append(f"\n{len(failed)} of {len(checks)} checks beyond tolerance against {path}: " +
                     ", ".join(f"{c.label} {c.where} {c.set} {c.metric}" for c in failed))
    else:
        lines.append(f"\nall {len(checks)} checks within tolerance ({path})")
    return "\n".join(lines)


def assert_within_tolerance(methods: str | Sequence[str], benchmark: str = "mnist5k", seeds: Sequence[int] = (0,),
                            out_dir: Path | None = None, settings: Sequence[str] = (),
                            expectations: Path | None = None, tolerance: dict[str, float] | None = None,
                            cache: Cache | None = None, preset: str = "paper", device: str = "auto",
                            cache_dir: Path | None = None) -> list[RunRecord]:
    """Run `methods` (names, with `settings` as `SCOPE.FIELD=VALUE` like `--set`) for `seeds` on the torch thread
    count the expectations were recorded with, and raise AssertionError with `report` when any metric leaves its
    tolerance (percentage points; `tolerance` {metric or "*": pp} overrides the file's). `expectations` is a
    plugin's own file (written by `python -m harness regress --expectations FILE --update`); the default is the
    harness's committed file for `benchmark`. `cache` (or a `cache_dir`) defaults to $OODBENCH_CACHE's. Returns the
    records."""
    names = [methods] if isinstance(methods, str) else list(methods)
    request = RunRequest(methods=names, benchmark=benchmark, seeds=list(seeds), overrides=parse_set_options(
        list(settings)), out_dir=out_dir or Path("runs"), preset=preset, device=device, cache_dir=cache_dir)
    planned = plan(request)
    path = expectations or regression.expectations_path(planned.spec.name)
    doc = regression.load_expectations(path, planned.spec.name)
    records = execute(held_to(planned, doc, path, threads_given=False), cache=cache)
    checks = regression.compare(doc, records, tolerance, path)
    if not all(c.passed for c in checks):
        raise AssertionError(report(checks, doc, records, path))
    return records
