"""The paired-mean check of `regress` in an environment no drift run measured: its tolerance covers the systematic
part of a measured drift (every seed moved the same way) plus the independent part averaged over the seeds, so the
drift runs' own values pass, while a shift of every seed just beyond it fails."""

import math

import pytest

from harness.records.regression import PAIRED_DRIFT_FACTOR, build_expectations, compare, detectable_effects
from harness.records.results import RunRecord

SEEDS = [0, 1, 2, 3, 4]
STORED = [90.0, 91.0, 89.0, 92.0, 90.5]          # average AUROC per seed, pp
SYSTEMATIC = [1.2, 0.9, 1.4, -0.3, 1.1]          # a drift run that moved 4 of 5 seeds up
RANDOM = [0.4, -0.5, 0.2, -0.1, 0.3]            # a drift run whose moves average out


def record(seed, auroc, threads):
    return RunRecord(benchmark="b", method="m", label="m", seed=seed, paper="", kind="post-hoc", config={},
                     classifier_config=None, fpr_positive="id", metrics={"far": {"fpr95": 0.1, "auroc": auroc / 100}},
                     average={"fpr95": 0.1, "auroc": auroc / 100}, id_accuracy=None, eval_sizes={}, stage_seconds={},
                     device="cpu", code_version="abc", libraries={"torch": "2"},
                     environment={"torch_threads": threads, "device": "cpu", "cpu": "x"})


def runs(values, threads):
    return [record(s, v, threads) for s, v in zip(SEEDS, values, strict=True)]


DOC = build_expectations("b", runs(STORED, 1), drift_records=[
    *runs([v + d for v, d in zip(STORED, SYSTEMATIC, strict=True)], 2),
    *runs([v + d for v, d in zip(STORED, RANDOM, strict=True)], 3)])
ALL = SYSTEMATIC + RANDOM
RMS = math.sqrt(sum(d * d for d in ALL) / len(ALL))
SHARED = abs(sum(SYSTEMATIC) / 5)


def paired(checks):
    [check] = [c for c in checks if c.seed is None and c.set == "Average" and c.metric == "auroc"]
    return check


def test_the_paired_tolerance_adds_the_largest_systematic_drift_to_the_averaged_rest():
    check = paired(compare(DOC, runs(STORED, 7)))
    assert DOC["paired_drift_factor"] == PAIRED_DRIFT_FACTOR == 2.5
    assert check.tolerance == pytest.approx(2.5 * math.hypot(SHARED, RMS / math.sqrt(5)))
    assert check.tolerance > 2.5 * RMS / math.sqrt(5) + 1.0     # the averaged part alone would be far tighter
    assert "systematic 0.86" in check.basis
    assert detectable_effects(compare(DOC, runs(STORED, 7)))["m"]["average AUROC"] == pytest.approx(check.tolerance)


@pytest.mark.parametrize("drift", [SYSTEMATIC, RANDOM])
def test_a_drift_runs_own_values_pass_in_an_unmeasured_environment(drift):
    moved = [v + d for v, d in zip(STORED, drift, strict=True)]
    assert all(c.passed for c in compare(DOC, runs(moved, 7)))


def test_every_seed_shifted_just_beyond_the_tolerance_fails_and_just_within_passes():
    tolerance = paired(compare(DOC, runs(STORED, 7))).tolerance
    assert not paired(compare(DOC, runs([v - tolerance - 0.01 for v in STORED], 7))).passed
    assert paired(compare(DOC, runs([v - tolerance + 0.01 for v in STORED], 7))).passed


def test_a_measured_environment_is_held_exactly_and_gets_no_paired_check():
    checks = compare(DOC, runs([v + d for v, d in zip(STORED, SYSTEMATIC, strict=True)], 2))
    assert all(c.seed is not None and c.tolerance == 0.01 and c.passed for c in checks)
