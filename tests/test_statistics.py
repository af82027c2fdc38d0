"""The paired statistics that decide a ranking: the interval against scipy, the minimal detectable effect against a
simulation of the test it sizes, the bold/tie rule, and the Δ of each label against its spec's baseline."""

import math

import numpy as np
import pytest
from scipy import stats

from harness.data.spec import load_spec
from harness.records.results import RunRecord
from harness.records.statistics import (
    MAX_UNITS,
    baseline_deltas,
    minimal_detectable_effect,
    noncentrality,
    paired,
    rank_column,
    units_needed,
)


@pytest.mark.parametrize("n", [2, 3, 5, 12])
@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_the_interval_is_scipys_paired_t_interval(n, confidence):
    rng = np.random.default_rng(n)
    a, b = rng.normal(90, 2, n), rng.normal(89, 2, n)
    difference = paired(dict(enumerate(a)), dict(enumerate(b)))
    expected = stats.ttest_rel(a, b).confidence_interval(confidence)
    assert difference.interval(confidence) == pytest.approx((expected.low, expected.high), rel=1e-12)
    assert difference.mean == pytest.approx(np.mean(a - b), rel=1e-12)


def test_pairs_are_the_seeds_both_sides_hold():
    difference = paired({0: 91.0, 1: 92.0, 3: 95.0}, {1: 90.0, 2: 80.0, 3: 94.0, 0: 90.5})
    assert difference.units == (0, 1, 3) and list(difference.differences) == [0.5, 2.0, 1.0]
    assert difference.value_mean == pytest.approx(278 / 3) and difference.baseline_mean == pytest.approx(274.5 / 3)
    assert all(math.isnan(x) for x in paired({0: 1.0}, {0: 0.0}).interval())  # one pair: no interval
    assert paired({0: 1.0}, {1: 0.0}).n == 0


@pytest.mark.parametrize("n", [3, 5, 10])
def test_a_shift_of_the_mde_is_detected_with_the_stated_power(n):
    """Simulate the paired t-test at a true mean difference equal to the MDE: it rejects at level 0.05 in 80 % of
    the trials (±1 % at 40,000 trials: 5 binomial standard errors)."""
    std = 2.0
    effect = minimal_detectable_effect(std, n)
    rng = np.random.default_rng(n)
    differences = rng.normal(effect, std, (40_000, n))
    rejected = stats.ttest_1samp(differences, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)
    assert minimal_detectable_effect(std, n, power=0.9) > effect > minimal_detectable_effect(std, n, alpha=0.2)


def test_with_many_seeds_the_mde_is_the_normal_formula():
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert noncentrality(100_000) == pytest.approx(z, rel=1e-4)
    assert minimal_detectable_effect(3.0, 100_000) == pytest.approx(z * 3.0 / math.sqrt(100_000), rel=1e-4)
    assert minimal_detectable_effect(0.0, 5) == 0.0


def test_seeds_needed_are_the_fewest_with_an_mde_within_the_target():
    for std in (0.4, 1.3, 6.3):
        n = units_needed(std, 1.0)
        assert minimal_detectable_effect(std, n) <= 1.0
        assert n == 2 or minimal_detectable_effect(std, n - 1) > 1.0
    assert units_needed(0.0) == 2
    assert units_needed(1e4) is None and minimal_detectable_effect(1e4, MAX_UNITS) > 1.0


def test_bold_rule_best_beyond_its_interval_or_tied():
    clear = {"a": {0: 95.0, 1: 96.0, 2: 95.5}, "b": {0: 90.0, 1: 90.5, 2: 91.0}, "c": {0: 80.0, 1: 81.0, 2: 79.0}}
    ranking = rank_column(clear, higher_is_better=True)
    assert ranking.best == "a" and ranking.clear and ranking.tied == ("a",)
    # b is better on average but not beyond the interval: seed 2 goes the other way
    close = {**clear, "b": {0: 96.0, 1: 97.0, 2: 94.0}}
    ranking = rank_column(close, higher_is_better=True)
    assert ranking.best == "b" and not ranking.clear and ranking.tied == ("b", "a")
    # lower is better (FPR95): the same rule, mirrored
    mirrored = {k: {s: 100 - v for s, v in by.items()} for k, by in clear.items()}
    ranking = rank_column(mirrored, higher_is_better=False)
    assert ranking.best == "a" and ranking.clear
    assert rank_column(mirrored, higher_is_better=True).best == "c"
    # a row sharing one seed with the best cannot be beaten beyond an interval
    ranking = rank_column({**clear, "d": {0: 10.0}}, higher_is_better=True)
    assert ranking.best == "a" and ranking.tied == ("a", "d")
    assert rank_column({}, higher_is_better=True).best is None


def _record(label, kind, seed, glyphs, far):
    metrics = {"glyphs": {"auroc": glyphs}, **{name: {"auroc": far} for name in ("textures", "photos", "faces")}}
    return RunRecord(benchmark="mnist5k", method=label.split("(")[0], label=label, seed=seed, paper="", kind=kind,
                     config={}, classifier_config=None, fpr_positive="id", metrics=metrics,
                     average={"auroc": float(np.mean([m["auroc"] for m in metrics.values()]))}, id_accuracy=None,
                     eval_sizes={}, stage_seconds={}, device="cpu")


def test_each_label_is_compared_with_its_kinds_baseline_on_the_near_ood_auroc_paired_by_seed():
    spec = load_spec("mnist5k")
    rng = np.random.default_rng(0)
    glyphs = {label: rng.uniform(0.6, 0.95, 5) for label in ("energy", "knn", "flow", "flow(variant=mle)")}
    records = [_record(label, "density" if label.startswith("flow") else "post-hoc", seed, glyphs[label][seed],
                       0.99) for label in glyphs for seed in range(5) if (label, seed) != ("knn", 4)]
    records.append(_record("vos", "feature-synthesis", 0, 0.9, 0.99))
    deltas = baseline_deltas(records, spec)
    assert set(deltas) == {"knn", "flow", "vos"}  # a baseline is not compared with itself
    knn = deltas["knn"]
    assert knn.baseline == "energy" and knn.difference.units == (0, 1, 2, 3)  # knn has no seed 4
    assert knn.difference.mean == pytest.approx(100 * np.mean(glyphs["knn"][:4] - glyphs["energy"][:4]))
    assert deltas["flow"].baseline == "flow(variant=mle)"
    assert deltas["flow"].difference.differences == pytest.approx(100 * (glyphs["flow"] - glyphs["flow(variant=mle)"]))
    assert deltas["vos"].difference.n == 1 and math.isnan(deltas["vos"].difference.minimal_detectable_effect())
    without_energy = [r for r in records if r.label != "energy"]
    assert set(baseline_deltas(without_energy, spec)) == {"flow"}


def test_a_benchmark_without_near_ood_sets_is_headlined_by_its_overall_average():
    spec = load_spec("cifar100")  # every set far-OOD
    records = []
    for seed, (energy, knn) in enumerate([(0.80, 0.82), (0.81, 0.84), (0.79, 0.80)]):
        for label, value in (("energy", energy), ("knn", knn)):
            records.append(RunRecord(benchmark="cifar100", method=label, label=label, seed=seed, paper="",
                                     kind="post-hoc", config={}, classifier_config=None, fpr_positive="id",
                                     metrics={"svhn": {"auroc": value - 0.05}, "isun": {"auroc": value + 0.05}},
                                     average={"auroc": value}, id_accuracy=None, eval_sizes={}, stage_seconds={},
                                     device="cpu"))
    assert baseline_deltas(records, spec)["knn"].difference.differences == pytest.approx([2.0, 3.0, 1.0])
