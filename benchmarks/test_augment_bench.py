"""CIFAR-style augmentation + batching throughput on CPU: the harness's in-memory uint8 path (gather a batch from
one uint8 tensor, batched RandomCrop(32, padding 4) + horizontal flip) vs the usual per-image PIL path
(torchvision RandomCrop + RandomHorizontalFlip + ToTensor per image, then stack), on 2,560 CIFAR-sized images in
batches of 160 (the papers' batch size).

Both paths run on one CPU thread (the PIL path is single-threaded; torch's intra-op threads on tiny batches only add
synchronisation, which collapses when other processes share the cores).

Run: python -m pytest benchmarks/test_augment_bench.py -q --benchmark-only   (images/s in extra_info; compare the
two rows' means for the ratio)
"""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from harness.classifier.augment import augment, to_unit

N, BATCH = 2560, 160


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (N, 3, 32, 32), dtype=np.uint8))


def in_memory_epoch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(order), BATCH):
        batch = to_unit(augment(images[order[start:start + BATCH]], 4, True, generator))
    return batch


def pil_epoch(pil_images: list, transform, generator: torch.Generator) -> torch.Tensor:
    order = torch.randperm(len(pil_images), generator=generator).tolist()
    for start in range(0, len(order), BATCH):
        batch = torch.stack([transform(pil_images[i]) for i in order[start:start + BATCH]])
    return batch


def test_in_memory_uint8_batched_augmentation(benchmark, images):
    generator = torch.Generator().manual_seed(0)
    batch = benchmark(in_memory_epoch, images, generator)
    assert batch.shape == (BATCH, 3, 32, 32) and 0 <= batch.min() and batch.max() <= 1
    benchmark.extra_info["images_per_s"] = round(N / benchmark.stats.stats.mean)


def test_per_image_pil_augmentation(benchmark, images):
    pil_images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    torch.manual_seed(0)
    batch = benchmark(pil_epoch, pil_images, transform, torch.Generator().manual_seed(0))
    assert batch.shape == (BATCH, 3, 32, 32)
    benchmark.extra_info["images_per_s"] = round(N / benchmark.stats.stats.mean)
