"""Regression checks: committed per-benchmark expectations (per-seed metric values, the environment they came from,
and the per-seed drifts observed when the same runs are repeated in other environments, e.g. other torch thread
counts) and the seed-by-seed comparison of new records against them.

All values are in percentage points. Each record is compared with the stored value of the same label, seed, set
and metric (never only with a mean). Its tolerance is, in this order:
1. `--tolerance` on the command line, or the entry's `tolerance_pp`;
2. `same_environment_pp` (0.01) when the record's numerics-relevant environment (torch version, threads, device,
   kernels, CPU (not under a portable kernel mode, `harness.numerics`)/GPU, CUDA/cuDNN, deterministic flags; not the
   commit) is the stored one, or a drift run's or a reproduction's (then the stored value plus its per-seed
   difference is expected): identical code reproduces exactly. A reproduction is the label rerun in another kernel
   environment (`regress --add-reproduction`), held exactly but, unlike a drift, never used to widen a tolerance;
3. otherwise `max(drift_floor_pp, drift_factor * d)`, d the largest |drift| over the seeds and the drift runs of
   that label, set and metric: a tolerance grounded in measured changes of environment;
4. for expectations without a drift run, `max(floor_pp, spread_factor * s)`, s the std over seeds (ddof=1).
In case 3, with n >= 2 seeds compared, one more check per label for each summary metric (average AUROC and FPR95,
ID accuracy) holds the mean over those seeds of the per-seed differences (new minus stored, paired by seed) within
`max(drift_floor_pp, paired_drift_factor * sqrt(m^2 + r^2 / n))`: r the root mean square of the measured drift over
the label's seeds and drift runs, m the largest |mean over the seeds| of one drift run. A change of environment
moves a seed by a systematic part shared by every seed (m bounds it: a second thread count moved flow's average
AUROC the same way on 4 of 5 seeds) and an independent part that averages out over n seeds as the drift runs' did
(r / sqrt n), while a regression shifts every seed. So the drift runs' own values always pass, and no single seed
moving by the largest measured drift can fail it: that moves the mean by max|d| / n <= r sqrt(N) / n, within
2 r / sqrt(n) whenever the N drift values number at most 4 n. Per-set metrics keep the per-seed check only: each
added paired check is one more chance of a false alarm. A check's minimal detectable effect is the smallest shift
of every seed that surely fails it: its tolerance. Drifts and paired means pair values by seed with
`statistics.paired`, as the leaderboard's paired statistics do.

The two factors are calibrated on reruns at thread counts no drift run used (docs/regression.md): drift measured
at two thread counts underestimates the tail of the next environment's (held-out per-seed differences of every
label but the ill-conditioned flow(score=complexity,variant=mle) reached 2.6 times their cell's largest measured
drift at 5 threads and 3.8 at 6; paired means 2.0 times their m and r term), so drift_factor is 4 and
paired_drift_factor 2.5. The paired check carries the sensitivity (every mnist5k label's minimal detectable effect
stays within 5 pp of average AUROC and 1 pp of ID accuracy); the per-seed check catches what moves one seed or one
set far (an inverted set).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import atomic_write_bytes
from harness.errors import HarnessError
from harness.paths import EXPECTATIONS_DIR
from harness.records import statistics
from harness.records.provenance import decisive, differences, portable
from harness.records.results import RunRecord

DEFAULT_FLOOR_PP = 1.0
DEFAULT_SPREAD_FACTOR = 2.0
SAME_ENVIRONMENT_PP = 0.01
DRIFT_FLOOR_PP = 0.5
DRIFT_FACTOR = 4.0
PAIRED_DRIFT_FACTOR = 2.5
METRICS = ("fpr95", "auroc", "accuracy")
AVERAGE, ID = "Average", "ID"
MEASURED_DRIFT = "measured drift"  # the basis of a check whose tolerance comes from the drifts (step 3)
SUMMARY = {(AVERAGE, "auroc"): "average AUROC", (AVERAGE, "fpr95"): "average FPR95", (ID, "accuracy"): "ID accuracy"}


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


def numerics_key(facts: dict[str, Any]) -> str:
    """`decisive(facts)` as a hashable key."""
    return json.dumps(decisive(facts), sort_keys=True)


Values = dict[int, dict[tuple[str, str], float]]  # seed -> (set, metric) -> pp


def stored_values(entry: dict[str, Any]) -> Values:
    """The per-seed values an expectations entry holds."""
    values: Values = defaultdict(dict)
    for name, metrics in entry["metrics"].items():
        for metric, stats in metrics.items():
            for seed, value in stats["per_seed"].items():
                values[int(seed)][(name, metric)] = float(value)
    return dict(values)


def drift_entry(base: Values, drift_runs: list[RunRecord]) -> dict[str, Any]:
    """Per (set, metric, seed): value under the drift environment minus the stored value `base` (pp), paired by
    seed (`statistics.paired`)."""
    moved: Values = {run.seed: record_values(run) for run in drift_runs}
    per_seed: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for name, metric in sorted({key for values in moved.values() for key in values}):
        drift = statistics.paired({seed: v[(name, metric)] for seed, v in moved.items() if (name, metric) in v},
                                  {seed: v[(name, metric)] for seed, v in base.items() if (name, metric) in v})
        if drift.n:
            per_seed[name][metric] = {str(seed): float(d)
                                      for seed, d in zip(drift.units, drift.differences, strict=True)}
    facts = environments(drift_runs)
    count = len({numerics_key(f) for f in facts})
    if count != 1:
        raise HarnessError(f"runs of {drift_runs[0].label} come from {count} environments; give one drift at a time")
    return {"environment": facts[0], "per_seed": dict(per_seed)}


def group_by_environment(records: list[RunRecord]) -> list[list[RunRecord]]:
    """`records` split by numerics-relevant environment, in order of first appearance."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[numerics_key(record.facts)].append(record)
    return list(groups.values())


def drift_entries(runs: list[RunRecord], drift_runs: list[RunRecord]) -> list[dict[str, Any]]:
    """One drift entry per numerics-relevant environment of `drift_runs` (the label's runs repeated elsewhere)."""
    base = {r.seed: record_values(r) for r in runs}
    return [drift_entry(base, group) for group in group_by_environment(drift_runs)]


def expectation_entry(runs: list[RunRecord], tolerance_pp: dict[str, float] | None = None,
                      drift_runs: list[RunRecord] | None = None) -> dict[str, Any]:
    """One method label's expectations from its records (one per seed), with one drift per environment of
    `drift_runs` (the same label and seeds repeated in other environments) when given."""
    per_seed = [record_values(r) for r in runs]
    metrics: dict[str, dict[str, Any]] = defaultdict(dict)
    for key in per_seed[0]:
        values = [v[key] for v in per_seed if key in v]
        metrics[key[0]][key[1]] = {
            "mean": float(np.mean(values)),
            "spread": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "per_seed": {str(r.seed): v[key] for r, v in zip(runs, per_seed, strict=True) if key in v}}
    entry = {"seeds": [r.seed for r in runs], "environments": environments(runs), "tolerance_pp": tolerance_pp or {},
             "metrics": dict(metrics)}
    if drift_runs:
        entry["drifts"] = drift_entries(runs, drift_runs)
    return entry


def add_drift(doc: dict[str, Any], records: list[RunRecord], path: Path | None = None,
              into: str = "drifts") -> list[str]:
    """Store the per-seed differences of `records` (every seed of each label, run in one environment the label's
    expectations do not hold yet) from the stored values as one more measured drift (`into="drifts"`), or as a
    reproduction (`into="reproductions"`: held exactly, never widening a tolerance); returns what was added."""
    added = []
    what = "drift" if into == "drifts" else "reproduction"
    check_labels(doc, list(group_by_label(records)), path)
    for label, runs in group_by_label(records).items():
        entry = doc["methods"][label]
        drift = drift_entry(stored_values(entry), runs)  # seeds the entry lacks add nothing
        if stored_environment(entry, runs[0]) is not None:
            raise HarnessError(f"the expectations of {label} already hold the environment of these records "
                               "(stored, a drift or a reproduction); run them in another one, e.g. another "
                               "--threads or --kernels")
        missing = sorted(set(entry["seeds"]) - {r.seed for r in runs})
        if missing:
            raise HarnessError(f"records of {label} lack seeds {', '.join(map(str, missing))} of its expectations; "
                               f"a {what} needs every stored seed")
        entry.setdefault(into, []).append(drift)
        added.append(f"+ {label}: {what} of "
                     f"{', '.join(differences(entry['environments'][0], drift['environment']))}")
    return added


def build_expectations(benchmark: str, records: list[RunRecord], previous: dict[str, Any] | None = None,
                       drift_records: list[RunRecord] | None = None) -> dict[str, Any]:
    """The expectations document for `records` (and the drift of `drift_records`) merged into `previous`: its other
    labels, tolerance settings and per-entry tolerances are kept; the labels of `records` are replaced."""
    previous = previous or {}
    old = previous.get("methods", {})
    drift = group_by_label(drift_records or [])
    fresh = {label: expectation_entry(runs, old.get(label, {}).get("tolerance_pp"), drift.get(label))
             for label, runs in group_by_label(records).items()}
    return {"benchmark": benchmark,
            "formula": "per seed: --tolerance or the entry's tolerance_pp; else same_environment_pp when the "
                       "numerics-relevant environment is the stored (or a drift run's) one; else max(drift_floor_pp, "
                       "drift_factor * max |drift| over seeds and drift runs), and for n >= 2 such seeds their mean "
                       "paired difference within max(drift_floor_pp, paired_drift_factor * sqrt(m^2 + rms drift^2 / "
                       "n)), m the largest |mean drift| of one drift run; else "
                       "max(floor_pp, spread_factor * std over seeds)",
            "same_environment_pp": previous.get("same_environment_pp", SAME_ENVIRONMENT_PP),
            "drift_floor_pp": previous.get("drift_floor_pp", DRIFT_FLOOR_PP),
            "drift_factor": previous.get("drift_factor", DRIFT_FACTOR),
            "paired_drift_factor": previous.get("paired_drift_factor", PAIRED_DRIFT_FACTOR),
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
    for key, default in (("floor_pp", None), ("spread_factor", None), ("same_environment_pp", SAME_ENVIRONMENT_PP),
                         ("drift_floor_pp", DRIFT_FLOOR_PP), ("drift_factor", DRIFT_FACTOR),
                         ("paired_drift_factor", PAIRED_DRIFT_FACTOR)):
        doc[key] = check_tolerance(doc.get(key, default), f"{path} {key}")
    for label, entry in doc["methods"].items():
        try:
            for metrics in entry["metrics"].values():
                for stats in metrics.values():
                    float(stats["mean"]), float(stats["spread"]), dict(stats["per_seed"])
            for metric, value in entry.get("tolerance_pp", {}).items():
                check_tolerance(value, f"{path} {label} tolerance_pp.{metric}")
            if "drift" in entry:
                raise KeyError("'drift' (one drift run) is now 'drifts', a list of them")
            for drift in entry.get("drifts", []) + entry.get("reproductions", []):
                dict(drift["environment"])
                for metrics in drift["per_seed"].values():
                    for seeds in metrics.values():
                        [float(v) for v in seeds.values()]
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


def recorded_seeds(doc: dict[str, Any], labels: list[str]) -> list[int]:
    """The seeds the expectations hold for every one of `labels` (at least seed 0 when they hold none)."""
    held = [set(doc["methods"].get(label, {}).get("seeds", [])) for label in labels]
    common = set.intersection(*held) if held else set()
    return sorted(common) or [0]


def check_labels(doc: dict[str, Any], labels: list[str], path: Path | None = None) -> None:
    """A one-line error for the first label `doc` has no entry for."""
    for label in labels:
        if label not in doc["methods"]:
            raise HarnessError(f"expectations {path or ''} have no entry for {label!r} (they cover "
                               f"{', '.join(sorted(doc['methods'])) or 'nothing'}); add it with `python -m harness "
                               f"regress --methods ... --expectations {path or 'FILE'} --update` (a plugin keeps its "
                               "own expectations file)")


@dataclass(frozen=True)
class Check:
    """One metric against its stored value: of one seed, or (`seed` None) the mean over `seeds` of the differences
    paired by seed."""
    label: str
    seed: int | None
    set: str
    metric: str
    expected: float
    got: float
    tolerance: float
    basis: str  # where the tolerance comes from (module docstring)
    seeds: tuple[int, ...] = ()

    @property
    def where(self) -> str:
        return f"seed {self.seed}" if self.seed is not None else f"mean of seeds {','.join(map(str, self.seeds))}"

    @property
    def difference(self) -> float:
        return self.got - self.expected

    @property
    def passed(self) -> bool:
        return abs(self.difference) <= self.tolerance + 1e-9


def stored_environment(entry: dict[str, Any], record: RunRecord) -> tuple[str, dict[str, Any] | None] | None:
    """("stored", None), ("drift", that drift) or ("reproduction", that reproduction) when the record's
    numerics-relevant environment is the one the entry's values (or one of its drift runs or reproductions) came
    from; None otherwise."""
    got = decisive(record.facts)
    if any(decisive(env) == got for env in entry.get("environments", [])):
        return "stored", None
    for kind in ("drifts", "reproductions"):
        for drift in entry.get(kind, []):
            if decisive(drift["environment"]) == got:
                return kind.removesuffix("s"), drift
    return None


def _drift_values(entry: dict[str, Any], name: str, metric: str) -> list[float]:
    return [float(v) for drift in entry.get("drifts", [])
            for v in drift["per_seed"].get(name, {}).get(metric, {}).values()]


def max_drift(entry: dict[str, Any], name: str, metric: str) -> float | None:
    values = _drift_values(entry, name, metric)
    return max(abs(v) for v in values) if values else None


def rms_drift(entry: dict[str, Any], name: str, metric: str) -> float | None:
    values = _drift_values(entry, name, metric)
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else None


def systematic_drift(entry: dict[str, Any], name: str, metric: str) -> float:
    """The largest |mean over the seeds| of one drift run's values: how far a change of environment was measured to
    move every seed of the label the same way (0 without drift values)."""
    means = [float(np.mean([float(v) for v in values.values()])) for drift in entry.get("drifts", [])
             if (values := drift["per_seed"].get(name, {}).get(metric))]
    return max((abs(m) for m in means), default=0.0)


def tolerance_for(doc: dict[str, Any], entry: dict[str, Any], name: str, metric: str, environment: str | None,
                  overrides: dict[str, float]) -> tuple[float, str]:
    """(tolerance, basis) for one check (module docstring, steps 1-4)."""
    if metric in overrides or "*" in overrides:
        return overrides.get(metric, overrides.get("*")), "--tolerance"
    if metric in entry.get("tolerance_pp", {}):
        return float(entry["tolerance_pp"][metric]), "entry tolerance_pp"
    if environment is not None:
        return float(doc["same_environment_pp"]), f"{environment} environment"
    drift = max_drift(entry, name, metric)
    if drift is not None:
        return max(float(doc["drift_floor_pp"]), float(doc["drift_factor"]) * drift), MEASURED_DRIFT
    spread = float(entry["metrics"][name][metric]["spread"])
    return max(float(doc["floor_pp"]), float(doc["spread_factor"]) * spread), "seed spread (no drift measured)"


def compare(doc: dict[str, Any], records: list[RunRecord], overrides: dict[str, float] | None = None,
            path: Path | None = None) -> list[Check]:
    """One check per (label, seed, set, metric) of `records` against the stored value of the same seed."""
    overrides = overrides or {}
    groups = group_by_label(records)
    check_labels(doc, list(groups), path)
    checks = []
    for label, runs in groups.items():
        entry = doc["methods"][label]
        for run in runs:
            known = stored_environment(entry, run)
            environment, drift = known if known else (None, None)
            seed = str(run.seed)
            for (name, metric), value in sorted(record_values(run).items()):
                stats = entry["metrics"].get(name, {}).get(metric)
                if stats is None:
                    continue
                if seed not in stats["per_seed"]:
                    raise HarnessError(f"expectations {path or ''} of {label} hold no seed {run.seed} (they hold "
                                       f"{', '.join(sorted(stats['per_seed']))}); compare those seeds or add this "
                                       "one with --update")
                expected = float(stats["per_seed"][seed])
                if drift is not None:
                    expected += float(drift["per_seed"].get(name, {}).get(metric, {}).get(seed, 0.0))
                tolerance, basis = tolerance_for(doc, entry, name, metric, environment, overrides)
                checks.append(Check(label, run.seed, name, metric, expected, value, tolerance, basis))
    return checks + paired_mean_checks(doc, checks)


def paired_mean_checks(doc: dict[str, Any], checks: list[Check]) -> list[Check]:
    """Per label and summary metric with >= 2 seeds checked against the measured drift: the mean over those seeds
    of the paired differences, within max(drift_floor_pp, paired_drift_factor * sqrt(m^2 + rms^2 / n)), m the
    systematic
    drift (module docstring)."""
    groups: dict[tuple[str, str, str], list[Check]] = defaultdict(list)
    for c in checks:
        if c.basis == MEASURED_DRIFT and (c.set, c.metric) in SUMMARY:
            groups[(c.label, c.set, c.metric)].append(c)
    means = []
    for (label, name, metric), group in groups.items():
        rms = rms_drift(doc["methods"][label], name, metric)
        moved = statistics.paired({c.seed: c.got for c in group}, {c.seed: c.expected for c in group})
        if moved.n < 2 or rms is None:
            continue
        shared = systematic_drift(doc["methods"][label], name, metric)
        spread = math.hypot(shared, rms / math.sqrt(moved.n))
        tolerance = max(float(doc["drift_floor_pp"]), float(doc["paired_drift_factor"]) * spread)
        means.append(Check(label, None, name, metric, moved.baseline_mean, moved.value_mean, tolerance,
                           f"{MEASURED_DRIFT} (systematic {shared:.2f}, rms {rms:.2f}), paired mean", moved.units))
    return means


def detectable_effects(checks: list[Check]) -> dict[str, dict[str, float]]:
    """Per label, the minimal detectable effect of the average AUROC and FPR95 and of the ID accuracy: the
    smallest shift of every seed that surely fails, i.e. the paired-mean check's tolerance where there is one, else
    the largest tolerance over the seeds (a shift beyond it fails every seed)."""
    per_seed: dict[str, dict[str, float]] = defaultdict(dict)
    paired: dict[str, dict[str, float]] = defaultdict(dict)
    for c in checks:
        key = SUMMARY.get((c.set, c.metric))
        if key is not None:
            into = per_seed if c.seed is not None else paired
            into[c.label][key] = max(into[c.label].get(key, 0.0), c.tolerance)
    return {label: {key: min(value, paired[label].get(key, value)) for key, value in effects.items()}
            for label, effects in per_seed.items()}


def unmeasured_environment_checks(doc: dict[str, Any]) -> list[Check]:
    """The summary checks the stored values themselves would get from an environment no drift run measured: their
    tolerances (`detectable_effects`) are the minimal detectable effects of a run in a new environment."""
    checks = []
    for label, entry in doc["methods"].items():
        for name, metric in SUMMARY:
            stats = entry["metrics"].get(name, {}).get(metric)
            if stats is None:
                continue
            tolerance, basis = tolerance_for(doc, entry, name, metric, None, {})
            checks += [Check(label, int(seed), name, metric, float(value), float(value), tolerance, basis)
                       for seed, value in stats["per_seed"].items()]
    return checks + paired_mean_checks(doc, checks)


def parse_factor_pairs(text: str) -> list[tuple[float, float]]:
    """`2x2,4x2.5` -> [(drift_factor, paired_drift_factor), ...], every factor a number > 0."""
    pairs = []
    for item in text.split(","):
        try:
            drift, paired = (float(part) for part in item.strip().split("x"))
        except ValueError:
            raise HarnessError(f"--calibrate {text!r}: {item.strip()!r} is not DRIFTxPAIRED; give factor pairs such "
                               "as 2x2,4x2.5") from None
        if not (drift > 0 and paired > 0 and math.isfinite(drift) and math.isfinite(paired)):
            raise HarnessError(f"--calibrate {text!r}: factors must be finite numbers > 0, e.g. 4x2.5")
        pairs.append((drift, paired))
    return pairs


@dataclass(frozen=True)
class FalseAlarms:
    """Checks of unmodified reruns from one environment no expectation measured, under one pair of factors."""
    environment: str  # how it differs from the stored one, e.g. "torch_threads: 1 -> 4"
    failed_per_seed: int
    per_seed: int
    failed_paired: int
    paired: int
    labels: tuple[str, ...]  # the labels with a failed check

    def __str__(self) -> str:
        failing = f" ({', '.join(self.labels)})" if self.labels else ""
        return f"{self.failed_per_seed} of {self.per_seed} / {self.failed_paired} of {self.paired}{failing}"


def with_factors(doc: dict[str, Any], drift_factor: float, paired_drift_factor: float) -> dict[str, Any]:
    """`doc` with its two tolerance factors replaced (the calibration's trial expectations)."""
    return {**doc, "drift_factor": drift_factor, "paired_drift_factor": paired_drift_factor}


def false_alarms(doc: dict[str, Any], records: list[RunRecord]) -> list[FalseAlarms]:
    """Per environment of `records` (reruns of unmodified code under environments that neither the expectations nor
    their drift runs measured, so each failed check is a false alarm), the failed checks under `doc`'s factors."""
    for record in records:
        entry = doc["methods"].get(record.label)
        if entry is not None and stored_environment(entry, record) is not None:
            raise HarnessError(f"{record.label} seed {record.seed} comes from an environment the expectations hold; "
                               "calibrate on reruns under other environments (e.g. regress --threads 4)")
    found = []
    for runs in group_by_environment(records):
        checks = compare(doc, runs)
        stored = doc["methods"][runs[0].label]["environments"][0]
        per_seed = [c for c in checks if c.seed is not None]
        paired = [c for c in checks if c.seed is None]
        found.append(FalseAlarms("; ".join(differences(decisive(stored), decisive(runs[0].facts))),
                                 sum(not c.passed for c in per_seed), len(per_seed),
                                 sum(not c.passed for c in paired), len(paired),
                                 tuple(sorted({c.label for c in checks if not c.passed}))))
    return found


def calibration_table(doc: dict[str, Any], records: list[RunRecord], pairs: list[tuple[float, float]]) -> str:
    """The factors' calibration (docs/regression.md), one row per (drift_factor, paired_drift_factor): the
    `false_alarms` of `records` per environment (failed per-seed checks / failed paired means, and the labels), then
    the largest minimal detectable effect of the average AUROC and the ID accuracy the pair gives a run in a new
    environment."""
    from tabulate import tabulate

    rows, columns = [], []
    for drift, paired in pairs:
        trial = with_factors(doc, drift, paired)
        alarms = false_alarms(trial, records)
        effects = detectable_effects(unmeasured_environment_checks(trial)).values()
        largest = [max(e.get(key, 0.0) for e in effects) for key in ("average AUROC", "ID accuracy")]
        rows.append([f"{drift:g} x {paired:g}", *map(str, alarms), f"{largest[0]:.2f} / {largest[1]:.2f}"])
        columns = [a.environment for a in alarms]  # the same environments for every pair
    return tabulate(rows, headers=["drift x paired factor", *columns, "largest MDE: average AUROC / ID acc."],
                    tablefmt="github", disable_numparse=True)


def table(checks: list[Check]) -> str:
    from tabulate import tabulate

    rows = [(c.label, c.seed if c.seed is not None else "mean " + ",".join(map(str, c.seeds)), c.set, c.metric,
             f"{c.expected:.2f}", f"{c.got:.2f}", f"{c.difference:+.2f}", f"{c.tolerance:.2f}", c.basis,
             "ok" if c.passed else "FAIL") for c in checks]
    return tabulate(rows, headers=("method", "seed", "set", "metric", "expected", "got", "difference", "tolerance",
                                   "basis", "verdict"), tablefmt="github", disable_numparse=True)


def unpinned_labels(records: list[RunRecord]) -> list[str]:
    """The labels with a record computed outside a portable kernel mode (`harness.numerics`)."""
    return sorted({r.label for r in records if not portable(r.facts)})


def provenance_notes(doc: dict[str, Any], records: list[RunRecord]) -> list[str]:
    """Per label, how the records' environment differs from the one the expectations came from (the commit
    included: it is shown, though identical numerics are still expected across commits)."""
    notes = []
    for label, runs in group_by_label(records).items():
        entry = doc["methods"].get(label, {})
        expected = entry.get("environments", [])
        for run in runs:
            known = stored_environment(entry, run)
            if known and known[0] != "stored":
                continue
            diffs = differences(expected[0], run.facts) if expected else ["expectations record no environment"]
            note = f"{label}: {'; '.join(diffs)}"
            if diffs and note not in notes:
                notes.append(note)
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
