"""Post-hoc OOD scores on precomputed penultimate features and logits (numpy in, numpy out; higher = more ID).

Usable without the rest of the harness:

    from harness.components.scores import msp_score, energy_score, KNNScorer, ViMScorer, ReActScorer
    knn = KNNScorer(k=200).fit(train_features)
    scores = knn.score(test_features)
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from harness.errors import HarnessError


def msp_score(logits: np.ndarray) -> np.ndarray:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017) as its logarithm,
    log MSP = -log(1 + sum_{j != max} exp(z_j - z_max)) = -softplus(logsumexp_{j != max}(z_j - z_max)).

    The log is rank-equivalent to the probability, so every rank metric is MSP's, but it does not saturate: in
    float64 the probability (and the naive z_max - logsumexp(z)) is exactly 1.0 (0.0) once the logit margin exceeds
    about 37, and a confident classifier then ranks its most confident inputs by ties (docs/benchmarks.md counts
    them). This form keeps their order up to margins of about 700."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.argmax(axis=1)
    shifted = logits - logits[np.arange(len(logits)), top][:, None]
    shifted[np.arange(len(logits)), top] = -np.inf
    return -np.logaddexp(0.0, logsumexp(shifted, axis=1))


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy T * logsumexp(logits / T) (Liu et al., 2020, eq. 1 negated)."""
    return temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def l2_normalize(features: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """x / (||x|| + eps), as in the kNN paper's code."""
    features = np.asarray(features, dtype=np.float32)
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + eps)


def kth_neighbor_distance(bank: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance from each query to its k-th nearest row of `bank` (FAISS exact L2 search).

    With `exclude_self`, queries are rows of the bank and their own zero-distance match is skipped.
    """
    import faiss

    bank = np.ascontiguousarray(bank, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    depth = k + int(exclude_self)
    if depth > len(bank):
        raise HarnessError(f"k={k} needs at least {depth} reference points but only {len(bank)} are available; "
                           "lower k")
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    squared, _ = index.search(queries, depth)
    return np.sqrt(np.maximum(squared[:, -1], 0.0))


class KNNScorer:
    """Deep nearest neighbours (Sun et al., 2022): -(distance to the k-th nearest normalised training feature)."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise HarnessError(f"knn.k must be >= 1 (got {k})")
        self.k = k

    def fit(self, train_features: np.ndarray) -> KNNScorer:
        self.bank = l2_normalize(train_features)
        if self.k > len(self.bank):
            raise HarnessError(f"knn.k={self.k} exceeds the {len(self.bank)} training features; lower knn.k")
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        return -kth_neighbor_distance(self.bank, l2_normalize(features), self.k).astype(np.float64)


class ViMScorer:
    """Virtual-logit matching (Wang et al., 2022): energy - alpha * ||(f - u) P_NS||.

    u = -pinv(W) b is the origin of the feature space in which logits are W f + b; P_NS projects onto the
    eigenvectors of the (uncentred) covariance of f - u beyond the top `dim`; alpha = mean max-logit / mean residual
    norm over the training features.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    @staticmethod
    def default_dim(feature_dim: int) -> int:
        """The official rule: 1000 for 2048-d features, 512 for >= 768-d, else half the dimension."""
        if feature_dim >= 2048:
            return 1000
        if feature_dim >= 768:
            return 512
        return feature_dim // 2

    def fit(self, train_features: np.ndarray, train_logits: np.ndarray, weight: np.ndarray,
            bias: np.ndarray) -> ViMScorer:
        features = np.asarray(train_features, dtype=np.float64)
        dim = self.default_dim(features.shape[1]) if self.dim is None else self.dim
        if not 0 < dim < features.shape[1]:
            raise HarnessError(f"vim.dim={dim} must be between 1 and {features.shape[1] - 1} "
                               f"(the feature dimension minus one)")
        self.fitted_dim = dim
        self.origin = -np.linalg.pinv(np.asarray(weight, dtype=np.float64)) @ np.asarray(bias, dtype=np.float64)
        centred = features - self.origin
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(centred))
        order = np.argsort(eigenvalues)[::-1]
        self.null_space = np.ascontiguousarray(eigenvectors[:, order[dim:]])
        residual = np.linalg.norm(centred @ self.null_space, axis=1)
        self.alpha = float(np.asarray(train_logits).max(axis=1).mean() / residual.mean())
        return self

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        residual = np.linalg.norm((np.asarray(features, dtype=np.float64) - self.origin) @ self.null_space, axis=1)
        return energy_score(logits) - self.alpha * residual


class ReActScorer:
    """ReAct (Sun et al., 2021): clip features at the p-th percentile of ID activations, then energy of W f + b."""

    def __init__(self, percentile: float = 90.0) -> None:
        if not 0 < percentile <= 100:
            raise HarnessError(f"react.percentile must be in (0, 100] (got {percentile})")
        self.percentile = percentile

    def fit(self, train_features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> ReActScorer:
        self.threshold = float(np.percentile(np.asarray(train_features).ravel(), self.percentile))
        self.weight = np.asarray(weight, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float64)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        clipped = np.minimum(np.asarray(features, dtype=np.float64), self.threshold)
        return energy_score(clipped @ self.weight.T + self.bias)
