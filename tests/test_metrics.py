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
