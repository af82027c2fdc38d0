"""NCIS diffusion embeddings (Sec. 3.1) with the shipped tiny SD model: batched (`embed_batch`, 8 images per UNet
call, each with its own e) vs the official pattern (`embed_one_at_a_time`: one image per call, its 32 noised copies
in one batch), at equal work: 16 mnist-sized images, 3 Adam steps x 32 timesteps each. CPU (one thread) and, when
CUDA is visible, GPU: fp32 per-image loop vs the batched fp32 and bf16-autocast paths.

Run: PYTHONPATH=$PWD python -m pytest benchmarks/test_embedding_bench.py --benchmark-only
images/s = 16 / mean time (recorded in extra_info); the ratio of the means is the speed-up.
"""

from dataclasses import replace

import pytest
import torch

from harness.diffusion.backend import load_backend
from harness.diffusion.embeddings import EmbeddingConfig, embed_batch, embed_one_at_a_time

IMAGES = 16
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CONFIG = EmbeddingConfig(iterations=3, timesteps_per_image=32, images_per_call=8)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (IMAGES, 1, 28, 28), generator=generator, dtype=torch.uint8)
    return images, torch.arange(IMAGES) % len(NAMES), list(range(IMAGES))


@pytest.fixture(scope="module")
def cpu_backend():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_backend("models/tiny-sd-mnist5k")
    torch.set_num_threads(threads)


def _bench(benchmark, fn, backend, inputs, config, sync=lambda: None):
    def run():
        out = fn(backend, *inputs[:2], NAMES, config, inputs[2])
        sync()
        return out

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(IMAGES / benchmark.stats.stats.mean, 2)
    assert out[0].shape == (IMAGES, backend.token_dim)


def test_cpu_batched_8_images_per_call(benchmark, cpu_backend, inputs):
    _bench(benchmark, embed_batch, cpu_backend, inputs, CONFIG)


def test_cpu_official_one_image_per_call(benchmark, cpu_backend, inputs):
    _bench(benchmark, embed_one_at_a_time, cpu_backend, inputs, CONFIG)


@CUDA
@pytest.mark.parametrize("mode", ["official_fp32", "batched_fp32", "batched_bf16"])
def test_gpu(benchmark, inputs, mode):
    backend = load_backend("models/tiny-sd-mnist5k", "cuda", "float32")
    config = replace(CONFIG, images_per_call=IMAGES, precision="bfloat16" if mode.endswith("bf16") else "float32")
    fn = embed_one_at_a_time if mode.startswith("official") else embed_batch
    _bench(benchmark, fn, backend, inputs, config, sync=torch.cuda.synchronize)
