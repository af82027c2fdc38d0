"""Outlier images synthesised from the benchmark itself, deterministic by the run seed: no outlier dataset needed."""

from __future__ import annotations

from typing import Literal

import torch

from harness.classifier.hooks import hook_seed
from harness.data.sets import AnyImageSet

Synthesis = Literal["pixel-shuffle", "uniform-noise"]


def shuffled_pixels(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image with its pixel positions permuted at random (all channels alike): ID intensities, no ID shapes."""
    n, c, h, w = images.shape
    order = torch.rand(n, h * w, generator=generator).argsort(dim=1)
    flat = images.reshape(n, c, h * w)
    return flat.gather(2, order[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)


def synthesize_outliers(train: AnyImageSet, synthesis: Synthesis, count: int, shape: tuple[int, int, int],
                        seed: int) -> torch.Tensor:
    """`count` uint8 outlier images of `shape` (C, H, W): pixel-shuffled random training images, or uniform noise."""
    generator = torch.Generator().manual_seed(hook_seed(seed, "oe-synthesis"))
    if synthesis == "uniform-noise":
        return torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.uint8)
    picks = torch.randint(0, len(train), (count,), generator=generator)
    return shuffled_pixels(train.gather(picks).cpu(), generator)
