import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.covariance import EmpiricalCovariance
from sklearn.neighbors import NearestNeighbors

from harness.components.scores import KNNScorer, ReActScorer, ViMScorer, energy_score, kth_neighbor_distance, msp_score
from harness.errors import HarnessError
from harness.metrics import auroc


@pytest.fixture(scope="module")
def synthetic():
    """Three tight ID clusters in 16-d (non-negative like post-ReLU features), a linear head that separates them,
    and OOD points far from every cluster."""
    rng = np.random.default_rng(0)
    centres = np.abs(rng.normal(0, 3, (3, 16)))
    labels = rng.integers(0, 3, 600)
    train = np.abs(centres[labels] + rng.normal(0, 0.3, (600, 16)))
    test_labels = rng.integers(0, 3, 200)
    test = np.abs(centres[test_labels] + rng.normal(0, 0.3, (200, 16)))
    ood = np.abs(rng.normal(0, 3, (200, 16)))
    weight = centres / np.linalg.norm(centres, axis=1, keepdims=True) * 2
    bias = rng.normal(0, 0.1, 3)
    return dict(train=train, test=test, ood=ood, weight=weight, bias=bias, logits=lambda f: f @ weight.T + bias)


def test_msp_and_energy_match_their_formulas():
    logits = np.random.default_rng(1).normal(0, 3, (50, 7))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(msp_score(logits)), probs.max(1))
    np.testing.assert_allclose(energy_score(logits, 2.0), 2.0 * np.log(np.exp(logits / 2.0).sum(1)))


def test_msp_keeps_the_order_of_saturated_probabilities():
    # margins 40..49: softmax's max is exactly 1.0 in float64 for all of them, so the probability ties them all;
    # the log form keeps their order (larger margin = more confident)
    logits = np.stack([np.r_[40.0 + i, 0.0, 0.0] for i in range(10)])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    assert np.unique(probs.max(1) / probs.sum(1)).size == 1
    assert np.unique(msp_score(logits)).size == 10
    assert (np.diff(msp_score(logits)) > 0).all()


def test_confident_logits_score_higher_for_msp_and_energy():
    confident = np.array([[10.0, 0.0, 0.0]] * 5)
    flat = np.zeros((5, 3))
    assert (msp_score(confident) > msp_score(flat)).all()
    assert (energy_score(confident) > energy_score(flat)).all()


def test_knn_matches_sklearn_brute_force_and_ranks_ood_lower(synthetic):
    scorer = KNNScorer(k=10).fit(synthetic["train"])
    norm = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-10)  # noqa: E731
    nn = NearestNeighbors(n_neighbors=10, algorithm="brute").fit(norm(synthetic["train"]))
    expected = -nn.kneighbors(norm(synthetic["test"]))[0][:, -1]
    np.testing.assert_allclose(scorer.score(synthetic["test"]), expected, rtol=1e-4, atol=1e-5)
    assert auroc(scorer.score(synthetic["test"]), scorer.score(synthetic["ood"])) > 0.99


def test_kth_neighbor_distance_can_exclude_the_query_itself():
    bank = np.array([[0.0], [1.0], [3.0]], dtype=np.float32)
    np.testing.assert_allclose(kth_neighbor_distance(bank, bank, 1, exclude_self=True), [1.0, 1.0, 2.0])
    with pytest.raises(HarnessError, match="lower k"):
        kth_neighbor_distance(bank, bank, 3, exclude_self=True)


def test_vim_matches_direct_numpy_computation(synthetic):
    s = synthetic
    train_logits = s["logits"](s["train"])
    scorer = ViMScorer(dim=8).fit(s["train"], train_logits, s["weight"], s["bias"])
    # Direct computation of the formula, as in the ViM paper and official code.
    u = -np.linalg.pinv(s["weight"]) @ s["bias"]
    cov = EmpiricalCovariance(assume_centered=True).fit(s["train"] - u).covariance_
    eig_vals, eig_vecs = np.linalg.eig(cov)
    ns = np.ascontiguousarray(eig_vecs.T[np.argsort(eig_vals * -1)[8:]].T)
    alpha = train_logits.max(axis=1).mean() / np.linalg.norm((s["train"] - u) @ ns, axis=-1).mean()
    test_logits = s["logits"](s["test"])
    expected = logsumexp(test_logits, axis=-1) - alpha * np.linalg.norm((s["test"] - u) @ ns, axis=-1)
    np.testing.assert_allclose(scorer.score(s["test"], test_logits), expected, rtol=1e-6)
    assert scorer.alpha == pytest.approx(alpha)
    assert auroc(scorer.score(s["test"], test_logits), scorer.score(s["ood"], s["logits"](s["ood"]))) > 0.95


def test_vim_default_dim_follows_the_official_rule():
    assert [ViMScorer.default_dim(d) for d in (2048, 768, 512, 128)] == [1000, 512, 256, 64]


def test_react_matches_direct_numpy_computation_and_clips(synthetic):
    s = synthetic
    scorer = ReActScorer(percentile=90).fit(s["train"], s["weight"], s["bias"])
    threshold = np.percentile(s["train"].flatten(), 90)
    expected = logsumexp(np.clip(s["test"], None, threshold) @ s["weight"].T + s["bias"], axis=1)
    np.testing.assert_allclose(scorer.score(s["test"]), expected)
    huge = s["test"] * 100  # clipping caps the energy of extreme activations
    assert scorer.score(huge).max() <= energy_score(np.full((1, 16), threshold) @ s["weight"].T + s["bias"])[0] + 1e-9


@pytest.mark.parametrize("make", [lambda: KNNScorer(0), lambda: ReActScorer(0), lambda: ReActScorer(101)])
def test_scorers_reject_invalid_hyperparameters(make):
    with pytest.raises(HarnessError):
        make()
