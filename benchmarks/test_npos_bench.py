"""NPOS synthesis at paper scale (100 classes x 1,000-deep queues x 512-d, k 300, 200 boundary points, 2 picked,
600 candidates, 200 kept): the batched harness.components.boundary implementation vs the official-style per-class loop
(one FAISS IndexFlatL2 per class, as in npos/CIFAR/KNN.py generate_outliers).

Run: PYTHONPATH=$PWD /work/venv/bin/python -m pytest benchmarks/test_npos_bench.py --benchmark-only
and compare the two means (the ratio is the speed-up of the batched search).
"""

import faiss
import numpy as np
import pytest
import torch

from harness.components.boundary import sample_boundary_outliers

CLASSES, DEPTH, DIM = 100, 1000, 512
SETTINGS = {"k": 300, "boundary_count": 200, "points_per_class": 2, "candidates_per_point": 600,
            "kept_per_point": 200, "noise_std": 0.1}


@pytest.fixture(scope="module")
def queues():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(CLASSES, 1, DIM, generator=gen)
    return torch.relu(centres + 0.5 * torch.randn(CLASSES, DEPTH, DIM, generator=gen))


def per_class_loop(queues: torch.Tensor, rng: np.random.Generator, k: int, boundary_count: int,
                   points_per_class: int, candidates_per_point: int, kept_per_point: int,
                   noise_std: float) -> np.ndarray:
    """One FAISS index per class, searched twice (boundary, then candidates), paper selection."""
    out = []
    for bank in queues.numpy():
        normed = bank / np.linalg.norm(bank, axis=1, keepdims=True)
        index = faiss.IndexFlatL2(DIM)
        index.add(normed)
        kth = index.search(normed, k)[0][:, -1]
        boundary = np.argsort(-kth)[:boundary_count]
        picked = boundary[rng.choice(boundary_count, points_per_class, replace=False)]
        noise = rng.standard_normal((points_per_class, candidates_per_point, DIM)).astype(np.float32)
        candidates = (bank[picked][:, None, :] + noise_std * noise).reshape(-1, DIM)
        normed_candidates = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
        distances = index.search(normed_candidates, k)[0][:, -1].reshape(points_per_class, candidates_per_point)
        chosen = np.argsort(-distances, axis=1)[:, :kept_per_point]
        out.append(candidates.reshape(points_per_class, candidates_per_point, DIM)[
            np.arange(points_per_class)[:, None], chosen].reshape(-1, DIM))
    return np.stack(out)


def test_batched_boundary_synthesis(benchmark, queues):
    gen = torch.Generator().manual_seed(1)
    out = benchmark.pedantic(lambda: sample_boundary_outliers(queues, generator=gen, **SETTINGS), rounds=2,
                             warmup_rounds=0)
    assert out.shape == (CLASSES, 400, DIM)


def test_per_class_faiss_loop(benchmark, queues):
    rng = np.random.default_rng(1)
    out = benchmark.pedantic(lambda: per_class_loop(queues, rng, **SETTINGS), rounds=2, warmup_rounds=0)
    assert out.shape == (CLASSES, 400, DIM)
