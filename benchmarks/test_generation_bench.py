"""Outlier decoding with the shipped tiny SD model on the CPU: 40 images, each with its own substituted embedding,
PNDM 20 steps, guidance 3. Batched per-sample embeddings (harness.diffusion: 40 embeddings in one call) vs the
reference pattern (Dream-OOD/NCIS official scripts: one embedding per call, the table row overwritten, 4 or 8
samples per call; here 4 samples per call, i.e. 4 seeds of the same embedding).

Run: PYTHONPATH=$PWD /work/venv/bin/python -m pytest benchmarks/test_generation_bench.py --benchmark-only
images/s = 40 / mean time (recorded in extra_info); the ratio of the two means is the speed-up.
"""

import pytest
import torch

from harness.diffusion.backend import GenerationConfig, load_backend

IMAGES, PER_CALL, STEPS = 40, 4, 20
TEMPLATE = "A high-quality image of a {}"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    backend = load_backend("models/tiny-sd-mnist5k")
    token = backend.class_token("seven")
    row = backend.token_embedding(token.token_id)
    vectors = row + 0.1 * row.norm() * torch.randn(IMAGES, backend.token_dim) / backend.token_dim ** 0.5
    return backend, token.token_id, vectors


def test_batched_per_sample_embeddings(benchmark, setup):
    backend, token, vectors = setup
    config = GenerationConfig(steps=STEPS, guidance_scale=3.0, batch_size=IMAGES)

    def run():
        return backend.generate([TEMPLATE.format("seven")] * IMAGES, list(range(IMAGES)), config,
                                [token] * IMAGES, vectors)

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = IMAGES / benchmark.stats.stats.mean
    assert out.shape[0] == IMAGES


def test_reference_one_embedding_per_call(benchmark, setup):
    backend, token, vectors = setup
    config = GenerationConfig(steps=STEPS, guidance_scale=3.0, batch_size=PER_CALL)

    def run():
        out = []
        for i in range(0, IMAGES, PER_CALL):  # one embedding per call, PER_CALL seeds of it
            out.append(backend.generate([TEMPLATE.format("seven")] * PER_CALL, list(range(i, i + PER_CALL)), config,
                                        [token] * PER_CALL, vectors[i:i + 1].expand(PER_CALL, -1)))
        return torch.cat(out)

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = IMAGES / benchmark.stats.stats.mean
    assert out.shape[0] == IMAGES
