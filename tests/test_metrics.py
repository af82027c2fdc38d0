import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from harness.metrics import aupr_in, aupr_out, auroc, fpr_at_95_tpr, ood_metrics

# Integer-valued scores produce many ties; floats produce none.
scores = st.one_of(
    st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=60),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=60),
)


def labelled(id_scores, ood_scores):
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    return y, np.r_[id_scores, ood_scores]


@settings(max_examples=300, deadline=None)
@given(scores, scores)
def test_auroc_and_aupr_equal_sklearn(id_scores, ood_scores):
    y, s = labelled(id_scores, ood_scores)
    assert auroc(id_scores, ood_scores) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert aupr_in(id_scores, ood_scores) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert aupr_out(id_scores, ood_scores) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)


def brute_force_fpr(positives, negatives, tpr=0.95):
    """Try every threshold; keep the highest whose TPR (fraction of positives >= t) reaches `tpr`."""
    best = None
    for t in np.unique(np.r_[positives, negatives]):
        if np.mean(np.asarray(positives) >= t) >= tpr and (best is None or t > best):
            best = t
    return float(np.mean(np.asarray(negatives) >= best))


@settings(max_examples=300, deadline=None)
@given(scores, scores)
def test_fpr95_equals_brute_force_count_for_both_conventions(id_scores, ood_scores):
    id_scores, ood_scores = np.array(id_scores), np.array(ood_scores)
    assert fpr_at_95_tpr(id_scores, ood_scores, "id") == brute_force_fpr(id_scores, ood_scores)
    assert fpr_at_95_tpr(id_scores, ood_scores, "ood") == brute_force_fpr(-ood_scores, -id_scores)


def brute_force_hendrycks(positives, negatives, level=0.95):
    """fpr_and_fdr_at_recall written out with loops: walk the distinct thresholds from the highest, stop at the first
    with full recall, read them back from there (highest recall first), append (recall 1, fp 0), take the first
    point whose recall is nearest `level`."""
    points = []
    for t in sorted(set(positives) | set(negatives), reverse=True):
        tp = sum(p >= t for p in positives)
        points.append((tp / len(positives), sum(n >= t for n in negatives)))
        if tp == len(positives):
            break
    points = points[::-1] + [(1.0, 0)]
    best = 0
    for i, (recall, _) in enumerate(points):
        if abs(recall - level) < abs(points[best][0] - level):
            best = i
    return points[best][1] / len(negatives)


@settings(max_examples=300, deadline=None)
@given(scores, scores)
def test_hendrycks_rule_equals_its_brute_force_replica_for_both_conventions(id_scores, ood_scores):
    id_scores, ood_scores = np.array(id_scores), np.array(ood_scores)
    assert fpr_at_95_tpr(id_scores, ood_scores, "id", "hendrycks") == pytest.approx(
        brute_force_hendrycks(list(id_scores), list(ood_scores)), abs=1e-12)
    assert fpr_at_95_tpr(id_scores, ood_scores, "ood", "hendrycks") == pytest.approx(
        brute_force_hendrycks(list(-ood_scores), list(-id_scores)), abs=1e-12)


def test_the_two_fpr_rules_differ_on_a_small_set():
    id_scores = np.arange(17, dtype=float)          # recall 16/17 = 0.941 at t = 1, 1.0 at t = 0
    ood_scores = np.array([0.0, 10.0])              # one OOD score tied with the lowest ID score
    assert fpr_at_95_tpr(id_scores, ood_scores) == 1.0                     # t = 0: the first recall >= 0.95
    assert fpr_at_95_tpr(id_scores, ood_scores, rule="hendrycks") == 0.5   # t = 1: recall 0.941 is nearest
    assert ood_metrics(id_scores, ood_scores, rule="hendrycks")["fpr95"] == 0.5
    with pytest.raises(ValueError, match="rule"):
        fpr_at_95_tpr(id_scores, ood_scores, rule="nearest")


@settings(max_examples=200, deadline=None)
@given(scores, scores)
def test_ood_positive_fpr95_matches_openood_formula(id_scores, ood_scores):
    # OpenOOD (after 873e8c2): roc_curve(ood_indicator, -conf); fpr[argmax(tpr >= 0.95)]
    y, s = labelled(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    assert fpr_at_95_tpr(id_scores, ood_scores, "ood") == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_conventions_differ_on_asymmetric_scores():
    rng = np.random.default_rng(0)
    id_scores, ood_scores = rng.normal(2, 1, 2000), rng.normal(0, 3, 2000)
    paper, openood = fpr_at_95_tpr(id_scores, ood_scores, "id"), fpr_at_95_tpr(id_scores, ood_scores, "ood")
    assert abs(paper - openood) > 0.1


def test_perfect_and_inverted_separation():
    m = ood_metrics(np.arange(10, 20), np.arange(0, 10))
    assert m == {"fpr95": 0.0, "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}
    assert fpr_at_95_tpr(np.arange(0, 10), np.arange(10, 20)) == 1.0


def test_rejects_nan_scores_and_bad_convention():
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, np.nan], [0.2])
    with pytest.raises(ValueError, match="positive"):
        fpr_at_95_tpr([1.0], [0.0], "both")
