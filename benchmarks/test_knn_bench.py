"""FAISS exact kNN scoring vs scikit-learn brute force: 4,000 x 512 bank, 5,000 queries (the issue's target shape).

Run: python -m pytest benchmarks -q --benchmark-only   (compare the two rows' means for the ratio)
"""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from harness.components.scores import KNNScorer, l2_normalize

K = 50


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4000, 512)).astype(np.float32), rng.normal(size=(5000, 512)).astype(np.float32)


def sklearn_knn_score(bank, queries):
    nn = NearestNeighbors(n_neighbors=K, algorithm="brute").fit(l2_normalize(bank))
    return -nn.kneighbors(l2_normalize(queries))[0][:, -1]


def test_faiss_knn_scoring(benchmark, data):
    bank, queries = data
    scores = benchmark(lambda: KNNScorer(K).fit(bank).score(queries))
    np.testing.assert_allclose(scores, sklearn_knn_score(bank, queries), rtol=1e-3, atol=1e-4)


def test_sklearn_brute_force_knn_scoring(benchmark, data):
    bank, queries = data
    benchmark(sklearn_knn_score, bank, queries)
