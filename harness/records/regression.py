"""Regression checks: committed per-benchmark expectations (metric means over seeds, their seed spread, the
environment they came from) and the comparison of new records against them, with per-metric tolerances.

All values are in percentage points. The default tolerance of a metric is

    tolerance = max(floor_pp, spread_factor * s)

where `s` is the sample standard deviation (ddof=1) of the metric over the expectation's seeds (0 for a single
seed, so the floor alone applies); `floor_pp` (1.0) and `spread_factor` (2.0) are stored in the file. An entry's
`tolerance_pp` ({metric: pp}) overrides the default for that method, and the command line overrides both.
Records of a subset of the expected seeds are compared with the mean of the same seeds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import atomic_write_bytes
from harness.errors import HarnessError
from harness.paths import EXPECTATIONS_DIR
from harness.records.provenance import differences
from harness.records.results import RunRecord

DEFAULT_FLOOR_PP = 1.0
DEFAULT_SPREAD_FACTOR = 2.0
METRICS = ("fpr95", "auroc", "accuracy")
AVERAGE, ID = "Average", "ID"


def expectations_path(benchmark: str, directory: Path = EXPECTATIONS_DIR) -> Path:
    return Path(directory) / f"{benchmark}.json"


def record_values(record: RunRecord) -> dict[tuple[str, str], float]:
    """(set, metric) -> value in percentage points: every OOD set's and the average's FPR95/AUROC, ID accuracy."""
    values = {(name, metric): 100 * m[metric] for name, m in record.metrics.items() for metric in ("fpr95", "auroc")}
    values.update({(AVERAGE, metric): 100 * record.average[metric] for metric in ("fpr95", "auroc")})
    if record.id_accuracy is not None:
        values[(ID, "accuracy")] = 100 * record.id_accuracy
    return values


def group_by_label(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.label, r.seed)):
        groups[record.label].append(record)
    return dict(groups)


def environments(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """The distinct numerics-relevant environments of `runs`, in seed order."""
    found: list[dict[str, Any]] = []
    for run in runs:
        if run.facts not in found:
            found.append(run.facts)
    return found


def expectation_entry(runs: list[RunRecord], tolerance_pp: dict[str, float] | None = None) -> dict[str, Any]:
    """One method label's expectations from its records (one per seed)."""
    per_seed = [record_values(r) for r in runs]
    metrics: dict[str, dict[str, Any]] = defaultdict(dict)
    for key in per_seed[0]:
        values = [v[key] for v in per_seed if key in v]
        metrics[key[0]][key[1]] = {
            "mean": float(np.mean(values)),
            "spread": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "per_seed": {str(r.seed): v[key] for r, v in zip(runs, per_seed, strict=True) if key in v}}
    return {"seeds": [r.seed for r in runs], "environments": environments(runs), "tolerance_pp": tolerance_pp or {},
            "metrics": dict(metrics)}


def build_expectations(benchmark: str, records: list[RunRecord], previous: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """The expectations document for `records` merged into `previous`: its other labels, floor, factor and
    per-entry tolerances are kept; the labels of `records` are replaced."""
    previous = previous or {}
    old = previous.get("methods", {})
    fresh = {label: expectation_entry(runs, old.get(label, {}).get("tolerance_pp"))
             for label, runs in group_by_label(records).items()}
    return {"benchmark": benchmark,
            "formula": "tolerance_pp = max(floor_pp, spread_factor * std over seeds (ddof=1)), unless tolerance_pp "
                       "of the entry or --tolerance sets it",
            "floor_pp": previous.get("floor_pp", DEFAULT_FLOOR_PP),
            "spread_factor": previous.get("spread_factor", DEFAULT_SPREAD_FACTOR),
            "methods": dict(sorted({**old, **fresh}.items()))}


def _bad(path: Path, problem: str) -> HarnessError:
    return HarnessError(f"expectations file {path} {problem}; regenerate it with `python -m harness regress "
                        "--update` (or `publish`) or fix it by hand")


def load_expectations(path: Path, benchmark: str) -> dict[str, Any]:
    """The expectations document at `path`, checked for the fields `compare` reads."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"no expectations file {path}; create it with `python -m harness regress --benchmark "
                           f"{benchmark} --records DIR --update` or pass --expectations FILE")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _bad(path, f"is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("methods"), dict):
        raise _bad(path, "has no 'methods' object")
    if doc.get("benchmark") != benchmark:
        raise _bad(path, f"is for benchmark {doc.get('benchmark')!r}, not {benchmark!r}")
    for key in ("floor_pp", "spread_factor"):
        check_tolerance(doc.get(key), f"{path} {key}")
    for label, entry in doc["methods"].items():
        try:
            for metrics in entry["metrics"].values():
                for stats in metrics.values():
                    float(stats["mean"]), float(stats["spread"]), dict(stats["per_seed"])
            for metric, value in entry.get("tolerance_pp", {}).items():
                check_tolerance(value, f"{path} {label} tolerance_pp.{metric}")
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise _bad(path, f"has a malformed entry for {label!r} ({type(err).__name__}: {err})") from None
    return doc


def check_tolerance(value: Any, where: str) -> float:
    """A tolerance in percentage points: a number >= 0, else a one-line error naming `where`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise HarnessError(f"tolerance {value!r} ({where}) is not a number; give percentage points, e.g. 1.5") \
            from None
    if not np.isfinite(number) or number < 0:
        raise HarnessError(f"tolerance {value!r} ({where}) must be a finite number >= 0 (percentage points)")
    return number


def parse_tolerances(options: list[str]) -> dict[str, float]:
    """`--tolerance PP` (every metric) or `--tolerance METRIC=PP` (repeatable) -> {metric or "*": pp}."""
    parsed: dict[str, float] = {}
    for option in options:
        metric, sep, value = option.rpartition("=")
        metric = metric if sep else "*"
        if metric != "*" and metric not in METRICS:
            raise HarnessError(f"--tolerance {option!r} names no metric; use one of {', '.join(METRICS)} "
                               "(e.g. --tolerance fpr95=2) or a bare number for all")
        parsed[metric] = check_tolerance(value, f"--tolerance {option}")
    return parsed


def recorded_threads(doc: dict[str, Any], labels: list[str]) -> int | None:
    """The one torch thread count the expectations of `labels` were recorded with, else None."""
    threads = {env.get("torch_threads") for label in labels
               for env in doc["methods"].get(label, {}).get("environments", [])} - {None, "unrecorded"}
    return threads.pop() if len(threads) == 1 else None


def check_labels(doc: dict[str, Any], labels: list[str], path: Path | None = None) -> None:
    """A one-line error for the first label `doc` has no entry for."""
    for label in labels:
        if label not in doc["methods"]:
            raise HarnessError(f"expectations {path or ''} have no entry for {label!r} (they cover "
                               f"{', '.join(sorted(doc['methods'])) or 'nothing'}); add it with --update")


@dataclass(frozen=True)
class Check:
    label: str
    set: str
    metric: str
    expected: float
    got: float
    tolerance: float

    @property
    def difference(self) -> float:
        return self.got - self.expected

    @property
    def passed(self) -> bool:
        return abs(self.difference) <= self.tolerance


def tolerance_for(doc: dict[str, Any], entry: dict[str, Any], metric: str, spread: float,
                  overrides: dict[str, float]) -> float:
    """Command line, then the entry's `tolerance_pp`, then max(floor, factor * spread) (module docstring)."""
    if metric in overrides or "*" in overrides:
        return overrides.get(metric, overrides.get("*"))
    if metric in entry.get("tolerance_pp", {}):
        return float(entry["tolerance_pp"][metric])
    return max(float(doc["floor_pp"]), float(doc["spread_factor"]) * spread)


def compare(doc: dict[str, Any], records: list[RunRecord], overrides: dict[str, float] | None = None,
            path: Path | None = None) -> list[Check]:
    """One check per (label, set, metric) of `records` against `doc` (see module docstring)."""
    overrides = overrides or {}
    groups = group_by_label(records)
    check_labels(doc, list(groups), path)
    checks = []
    for label, runs in groups.items():
        entry = doc["methods"][label]
        got = [record_values(r) for r in runs]
        for (name, metric), _ in sorted(got[0].items()):
            stats = entry["metrics"].get(name, {}).get(metric)
            if stats is None:
                continue
            seeds = [str(r.seed) for r in runs]
            same = all(s in stats["per_seed"] for s in seeds)
            expected = float(np.mean([stats["per_seed"][s] for s in seeds])) if same else float(stats["mean"])
            value = float(np.mean([g[(name, metric)] for g in got]))
            checks.append(Check(label, name, metric, expected, value,
                                tolerance_for(doc, entry, metric, float(stats["spread"]), overrides)))
    return checks


def table(checks: list[Check]) -> str:
    from tabulate import tabulate

    rows = [(c.label, c.set, c.metric, f"{c.expected:.2f}", f"{c.got:.2f}", f"{c.difference:+.2f}",
             f"{c.tolerance:.2f}", "ok" if c.passed else "FAIL") for c in checks]
    return tabulate(rows, headers=("method", "set", "metric", "expected", "got", "difference", "tolerance",
                                   "verdict"), tablefmt="github", disable_numparse=True)


def provenance_notes(doc: dict[str, Any], records: list[RunRecord]) -> list[str]:
    """Per label, how the records' environment differs from the one the expectations came from."""
    notes = []
    for label, runs in group_by_label(records).items():
        expected = doc["methods"].get(label, {}).get("environments", [])
        for got in environments(runs):
            diffs = differences(expected[0], got) if expected else ["expectations record no environment"]
            if diffs:
                notes.append(f"{label}: {'; '.join(diffs)}")
    return notes


def changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What `--update` changes: added/removed labels and every mean that moved (old -> new, pp)."""
    before = (old or {}).get("methods", {})
    lines = [f"+ {label} (new)" for label in new["methods"] if label not in before]
    for label, entry in new["methods"].items():
        if label not in before:
            continue
        for name, metrics in entry["metrics"].items():
            for metric, stats in metrics.items():
                prior = before[label]["metrics"].get(name, {}).get(metric)
                if prior is None or prior["mean"] != stats["mean"]:
                    was = "new" if prior is None else f"{prior['mean']:.2f}"
                    lines.append(f"~ {label} {name} {metric}: {was} -> {stats['mean']:.2f}")
    return lines


def write_expectations(path: Path, doc: dict[str, Any]) -> None:
    atomic_write_bytes(Path(path), (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
