"""Near/far OOD group averages and the paired statistics that decide a ranking (docs/statistics.md).

Group averages: each OOD set of a spec is near- or far-OOD (`group`, OpenOOD v1.5's split); a record's group average
is the mean of each metric over the sets of that group. A set without a group (an `--ood` set given without one)
counts only in the overall average.

Paired differences: two labels (or a new run and its stored values, for `regress`) are compared on the units both
have, the seeds: the difference per seed, its mean, and the paired t-interval of that mean (the t-test on the
per-seed differences, as `scipy.stats.ttest_rel`). The headline metric is the near-OOD average AUROC (pp); a
benchmark without near-OOD sets (cifar100, imagenet100: all the papers' sets are far-OOD) is headlined by the
average AUROC over all its sets. Each label is compared with its spec's baseline for the label's method kind
(`BenchmarkSpec.baselines`).

Minimal detectable effect (MDE): the true mean difference a two-sided paired t-test at level alpha detects with
probability `power`, given the observed std s of the per-seed differences and n seeds: s * lambda / sqrt(n), lambda
the noncentrality at which the noncentral t distribution with n - 1 degrees of freedom exceeds the test's critical
value |t| > t_{1 - alpha/2, n-1} with probability `power`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from harness.data.spec import OOD_GROUPS, BenchmarkSpec
from harness.metrics import average_metrics
from harness.records.results import RunRecord

HEADLINE_GROUP, HEADLINE_METRIC = "near", "auroc"
CONFIDENCE = 0.95
ALPHA, POWER = 0.05, 0.8
TARGET_MDE_PP = 1.0
MAX_UNITS = 100_000  # the most seeds `units_needed` considers


def group_averages(per_set: Mapping[str, Mapping[str, float]],
                   groups: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Per OOD group with at least one set in `per_set`, each metric's mean over that group's sets; `groups` maps a
    set name to "near" or "far", and a set it does not name is in no group."""
    members = {group: [name for name in per_set if groups.get(name) == group] for group in OOD_GROUPS}
    return {group: average_metrics({name: per_set[name] for name in names}) for group, names in members.items()
            if names}


def set_groups(record: RunRecord, spec: BenchmarkSpec | None) -> dict[str, str]:
    """Each OOD set's group for `record`: the one its data provenance recorded (`data.sets[NAME].group`), else the
    spec's (records made before sets carried their group)."""
    recorded = {name: facts["group"] for name, facts in record.data.get("sets", {}).items()
                if isinstance(facts, dict) and "group" in facts}
    return {**(spec.ood_groups if spec else {}), **recorded}


def record_group_averages(record: RunRecord, spec: BenchmarkSpec | None) -> dict[str, dict[str, float]]:
    """The record's `group_average`, or for a record without one the same averages computed from its per-set metrics
    and the groups of `set_groups`."""
    return record.group_average or group_averages(record.metrics, set_groups(record, spec))


def headline(record: RunRecord, spec: BenchmarkSpec | None) -> float:
    """The record's headline metric in pp: the near-OOD average AUROC, or the average AUROC over all its sets when
    it has no near-OOD set."""
    near = record_group_averages(record, spec).get(HEADLINE_GROUP)
    return 100 * (near[HEADLINE_METRIC] if near else record.average[HEADLINE_METRIC])


def headline_values(records: list[RunRecord], spec: BenchmarkSpec | None) -> dict[str, dict[int, float]]:
    """Label -> seed -> headline metric (pp)."""
    values: dict[str, dict[int, float]] = defaultdict(dict)
    for record in records:
        values[record.label][record.seed] = headline(record, spec)
    return dict(values)


def _check_levels(alpha: float, power: float) -> None:
    if not (0 < alpha < 1 and alpha < power < 1):
        raise ValueError(f"alpha {alpha} and power {power} must satisfy 0 < alpha < power < 1")


def noncentrality(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The noncentrality lambda at which a two-sided t-test on n paired differences (n - 1 degrees of freedom) at
    level `alpha` rejects with probability `power`: P(|T| > t_{1-alpha/2}) = power for T ~ nct(n - 1, lambda)."""
    _check_levels(alpha, power)
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 units, got {n}")
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(shift: float) -> float:
        # P(T > c) + P(T < -c), the lower tail as P(T' > c) for T' ~ nct(df, -shift): scipy's nct.cdf returns nan
        # far in its lower tail (df 1, shift 20)
        return stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift) - power

    upper = 2 * critical + 2
    while shortfall(upper) < 0:
        upper *= 2
    return float(optimize.brentq(shortfall, 0.0, upper, xtol=1e-10))


def minimal_detectable_effect(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference a paired t-test on n units with difference std `std` detects with
    probability `power` at two-sided level `alpha`: std * lambda / sqrt(n) (module docstring)."""
    return 0.0 if std == 0 else std * noncentrality(n, alpha, power) / math.sqrt(n)


def units_needed(std: float, target: float = TARGET_MDE_PP, alpha: float = ALPHA,
                 power: float = POWER) -> int | None:
    """The fewest units (seeds) whose minimal detectable effect at difference std `std` is at most `target`; None
    beyond `MAX_UNITS`. The effect falls as n grows, so this is a bisection."""
    if minimal_detectable_effect(std, 2, alpha, power) <= target:
        return 2
    if minimal_detectable_effect(std, MAX_UNITS, alpha, power) > target:
        return None
    low, high = 2, MAX_UNITS  # effect(low) > target >= effect(high)
    while high - low > 1:
        middle = (low + high) // 2
        if minimal_detectable_effect(std, middle, alpha, power) <= target:
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class PairedDifference:
    """`values` minus `baseline` on the units (seeds) both hold, in the order of `units`."""

    units: tuple[Hashable, ...]
    values: tuple[float, ...]
    baseline: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.units)

    @property
    def differences(self) -> np.ndarray:
        return np.asarray(self.values, dtype=float) - np.asarray(self.baseline, dtype=float)

    @property
    def value_mean(self) -> float:
        return float(np.mean(self.values)) if self.n else math.nan

    @property
    def baseline_mean(self) -> float:
        return float(np.mean(self.baseline)) if self.n else math.nan

    @property
    def mean(self) -> float:
        """The mean paired difference."""
        return float(np.mean(self.differences)) if self.n else math.nan

    @property
    def std(self) -> float:
        """The sample std (ddof=1) of the paired differences; nan below 2 units."""
        return float(np.std(self.differences, ddof=1)) if self.n > 1 else math.nan

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """The paired t-interval of the mean difference, mean ± t_{(1+confidence)/2, n-1} * std / sqrt(n); (nan,
        nan) below 2 units."""
        if self.n < 2:
            return math.nan, math.nan
        half = stats.t.ppf((1 + confidence) / 2, self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def favours(self, higher_is_better: bool, confidence: float = CONFIDENCE) -> bool:
        """Whether `values` beat `baseline` beyond the interval: it lies wholly on the better side of 0."""
        low, high = self.interval(confidence)
        return bool(low > 0) if higher_is_better else bool(high < 0)

    def minimal_detectable_effect(self, alpha: float = ALPHA, power: float = POWER) -> float:
        """The minimal detectable effect of this comparison (nan below 2 units)."""
        return minimal_detectable_effect(self.std, self.n, alpha, power) if self.n > 1 else math.nan

    def units_needed(self, target: float = TARGET_MDE_PP, alpha: float = ALPHA,
                     power: float = POWER) -> int | None:
        """The seeds this comparison needs for a minimal detectable effect of at most `target`, at its observed
        std (None below 2 units or beyond `MAX_UNITS`)."""
        return units_needed(self.std, target, alpha, power) if self.n > 1 else None


def paired(values: Mapping[Hashable, float], baseline: Mapping[Hashable, float]) -> PairedDifference:
    """`values` against `baseline`, paired on the keys (seeds) both hold; units in sorted order."""
    units = tuple(sorted(set(values) & set(baseline)))
    return PairedDifference(units, tuple(float(values[u]) for u in units), tuple(float(baseline[u]) for u in units))


@dataclass(frozen=True)
class BaselineDelta:
    """A label's headline metric against its baseline label's, paired by seed (pp)."""

    label: str
    baseline: str
    difference: PairedDifference


def baseline_deltas(records: list[RunRecord], spec: BenchmarkSpec | None) -> dict[str, BaselineDelta]:
    """Per label with a baseline (`spec.baseline(kind)`, other than itself) that has records of seeds in common
    with it: the paired difference of the headline metric, label minus baseline."""
    if spec is None:
        return {}
    values = headline_values(records, spec)
    kinds = {record.label: record.kind for record in records}
    deltas = {}
    for label, by_seed in sorted(values.items()):
        baseline = spec.baseline(kinds[label])
        if baseline is None or baseline == label or baseline not in values:
            continue
        difference = paired(by_seed, values[baseline])
        if difference.n:
            deltas[label] = BaselineDelta(label, baseline, difference)
    return deltas


@dataclass(frozen=True)
class ColumnRanking:
    """The rows of one column ranked by the bold rule: `best` has the best mean; it is `clear` when it beats every
    other row beyond the paired interval; `tied` are the rows it does not beat so (best first, then by mean)."""

    best: str | None
    clear: bool
    tied: tuple[str, ...]


def rank_column(rows: Mapping[str, Mapping[Hashable, float]], higher_is_better: bool,
                confidence: float = CONFIDENCE) -> ColumnRanking:
    """The bold rule for one column of per-seed values (row -> seed -> value): the row with the best mean is best
    beyond its interval when, against every other row, the paired difference's interval excludes 0 on its side;
    a row it does not beat so (interval containing 0, or fewer than 2 seeds in common) is tied with it."""
    means = {row: float(np.mean(list(by_unit.values()))) for row, by_unit in rows.items() if by_unit}
    if not means:
        return ColumnRanking(None, False, ())
    order = sorted(means, key=lambda row: (-means[row] if higher_is_better else means[row], row))
    best = order[0]
    tied = [row for row in order[1:] if not paired(rows[best], rows[row]).favours(higher_is_better, confidence)]
    return ColumnRanking(best, not tied, (best, *tied))
