"""Regression checks from a test suite: hold a method (a built-in or your plugin) within the tolerances of a
benchmark's committed expectations (`harness.records.regression`), as `python -m harness regress` does.

    from harness.testing import assert_within_tolerance

    def test_my_method_holds_its_numbers(tmp_path):
        assert_within_tolerance("mymethod", benchmark="mnist5k", out_dir=tmp_path)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.cache import Cache
from harness.config import parse_set_options
from harness.records.regression import (
    compare,
    expectations_path,
    load_expectations,
    provenance_notes,
    recorded_threads,
    table,
)
from harness.records.results import RunRecord
from harness.runner import RunRequest, execute, plan


def assert_within_tolerance(methods: str | Sequence[str], benchmark: str = "mnist5k", seeds: Sequence[int] = (0,),
                            out_dir: Path | None = None, settings: Sequence[str] = (),
                            expectations: Path | None = None, tolerance: dict[str, float] | None = None,
                            cache: Cache | None = None, preset: str = "paper", device: str = "auto"
                            ) -> list[RunRecord]:
    """Run `methods` (names, with `settings` as `SCOPE.FIELD=VALUE` like `--set`) for `seeds` on the torch thread
    count the expectations were recorded with, and raise AssertionError with the table of every check, the failing
    ones named, and the provenance differences, when any metric leaves its tolerance (percentage points; `tolerance`
    {metric or "*": pp} overrides the file's). Returns the records."""
    names = [methods] if isinstance(methods, str) else list(methods)
    request = RunRequest(methods=names, benchmark=benchmark, seeds=list(seeds), overrides=parse_set_options(
        list(settings)), out_dir=out_dir or Path("runs"), preset=preset, device=device)
    planned = plan(request)
    labels, name = [m.label for m in planned.methods], planned.spec.name
    path = expectations or expectations_path(name)
    doc = load_expectations(path, name)
    request.threads = recorded_threads(doc, labels)
    records = execute(request, cache=cache)
    checks = compare(doc, records, tolerance, path)
    failed = [c for c in checks if not c.passed]
    if failed:
        notes = provenance_notes(doc, records)
        named = ", ".join(f"{c.label} {c.where} {c.set} {c.metric}" for c in failed)
        raise AssertionError(f"{len(failed)} of {len(checks)} metrics beyond tolerance ({named}) against {path}\n"
                             + table(checks) + ("\nprovenance differs: " + "; ".join(notes) if notes else ""))
    return records
