"""Batched training augmentations on (N, C, H, W) tensors, on their device: RandomCrop with zero padding, horizontal
flip, RandomResizedCrop."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def augment(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched RandomCrop(size, padding) + optional horizontal flip on a (N, C, H, W) tensor (any dtype; uint8 is
    cheapest), on its device: each image picks one of the (2p+1)^2 windows of its zero-padded copy."""
    n, _, h, w = images.shape
    if padding > 0:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 2p+1, 2p+1, H, W), a view
        images = windows[torch.arange(n, device=images.device), :, dy, dx]
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


def random_resized_crop(images: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Batched RandomResizedCrop to the input size: per image a box of area fraction U(scale) and log-uniform aspect
    ratio (clamped to the image), resampled bilinearly with `roi_align` (adaptive sampling: one bilinear sample per
    output pixel when enlarging, an average of ceil(box/size)^2 samples when shrinking, which stands in for PIL's
    antialiasing). Unlike torchvision there is no 10-try rejection loop; oversize boxes are clamped instead."""
    from torchvision.ops import roi_align

    n, _, h, w = images.shape
    area = torch.empty(n).uniform_(*scale, generator=generator) * h * w
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    bw = torch.sqrt(area * torch.exp(log_r)).clamp(1, w)
    bh = torch.sqrt(area / torch.exp(log_r)).clamp(1, h)
    x0 = torch.rand(n, generator=generator) * (w - bw)
    y0 = torch.rand(n, generator=generator) * (h - bh)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + bw, y0 + bh], 1)
    return roi_align(images, boxes.to(images.device, images.dtype), (h, w), spatial_scale=1.0, sampling_ratio=0,
                     aligned=True)
