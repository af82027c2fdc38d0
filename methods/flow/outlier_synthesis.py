"""Pixel-space synthetic outliers of the flow paper (Sec. 2.2): CutPaste, CutMix, MixUp, then Gaussian blur.

All transforms are batched tensor operations on float images in [0, 1] shaped (N, C, H, W), driven by an explicit
`torch.Generator` (CPU) so a seed reproduces every draw. `split_for_outliers` draws at load time which samples
become outliers, each independently with probability `outlier_prob` (paper 0.5).

Variants (paper Table 2/3 names): `mle` (no outliers), `gaussian` (blur only), `ccm` (one of CutPaste / CutMix /
MixUp, chosen uniformly per sample), `ccm+gaussian` (that, then blur), `real` (real outliers; not handled here).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Variant = Literal["mle", "gaussian", "ccm", "ccm+gaussian", "real"]
SYNTHETIC_VARIANTS = ("gaussian", "ccm", "ccm+gaussian")
AUGMENTATIONS = ("cutpaste", "cutmix", "mixup")


def _uniform(n: int, gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _beta(n: int, alpha: float, gen: torch.Generator) -> torch.Tensor:
    """Beta(alpha, alpha) via two Gamma draws from the seeded generator (torch's Beta sampler takes no generator)."""
    a = torch._standard_gamma(torch.full((n,), float(alpha)), generator=gen)
    b = torch._standard_gamma(torch.full((n,), float(alpha)), generator=gen)
    return a / (a + b)


def box_masks(height: int, width: int, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor,
              w: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) bool masks of the boxes [top, top+h) x [left, left+w)."""
    ys = torch.arange(height).view(1, height, 1)
    xs = torch.arange(width).view(1, 1, width)
    inside = ((ys >= top.view(-1, 1, 1)) & (ys < (top + h).view(-1, 1, 1))
              & (xs >= left.view(-1, 1, 1)) & (xs < (left + w).view(-1, 1, 1)))
    return inside.unsqueeze(1)


def _partners(n: int, gen: torch.Generator) -> torch.Tensor:
    """A partner index per sample, never itself when n > 1 (a random cyclic shift of a random permutation)."""
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    perm = torch.randperm(n, generator=gen)
    shift = int(torch.randint(1, n, (1,), generator=gen))
    partner = torch.empty(n, dtype=torch.long)
    partner[perm] = perm.roll(shift)
    return partner


def cutpaste(x: torch.Tensor, gen: torch.Generator, area: tuple[float, float] = (0.02, 0.15),
             aspect: tuple[float, float] = (0.3, 3.3)) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste (Li et al., 2021): a random rectangle of each image is pasted at another random place of the same
    image. Area fraction and aspect ratio ranges are CutPaste's defaults. Returns (images, paste masks)."""
    n, _, height, width = x.shape
    frac = _uniform(n, gen, *area)
    ratio = torch.exp(_uniform(n, gen, math.log(aspect[0]), math.log(aspect[1])))
    h = (torch.sqrt(frac * height * width / ratio)).round().clamp(1, height).long()
    w = (torch.sqrt(frac * height * width * ratio)).round().clamp(1, width).long()
    src_top = (torch.rand(n, generator=gen) * (height - h + 1)).floor().long()
    src_left = (torch.rand(n, generator=gen) * (width - w + 1)).floor().long()
    dst_top = (torch.rand(n, generator=gen) * (height - h + 1)).floor().long()
    dst_left = (torch.rand(n, generator=gen) * (width - w + 1)).floor().long()
    mask = box_masks(height, width, dst_top, dst_left, h, w)
    ys = torch.arange(height).view(1, height, 1) + (src_top - dst_top).view(-1, 1, 1)
    xs = torch.arange(width).view(1, 1, width) + (src_left - dst_left).view(-1, 1, 1)
    ys, xs = ys.clamp(0, height - 1), xs.clamp(0, width - 1)
    flat = (ys * width + xs).view(n, 1, -1).expand(-1, x.shape[1], -1).to(x.device)
    moved = x.flatten(2).gather(2, flat).view_as(x)
    return torch.where(mask.to(x.device), moved, x), mask


def cutmix(x: torch.Tensor, gen: torch.Generator, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., 2019): lam ~ Beta(alpha, alpha); a box of area (1 - lam) from a partner image replaces
    the same box of each image. Returns (images, box masks, lam adjusted to the clipped box = 1 - box area)."""
    n, _, height, width = x.shape
    lam = _beta(n, alpha, gen)
    cut = torch.sqrt(1.0 - lam)
    h, w = (cut * height).long(), (cut * width).long()
    cy = (torch.rand(n, generator=gen) * height).floor().long()
    cx = (torch.rand(n, generator=gen) * width).floor().long()
    top, bottom = (cy - h // 2).clamp(0, height), (cy + h // 2).clamp(0, height)
    left, right = (cx - w // 2).clamp(0, width), (cx + w // 2).clamp(0, width)
    mask = box_masks(height, width, top, left, bottom - top, right - left)
    partner = _partners(n, gen).to(x.device)
    mixed = torch.where(mask.to(x.device), x[partner], x)
    lam_adjusted = 1.0 - mask.flatten(1).float().mean(1)
    return mixed, mask, lam_adjusted


def mixup(x: torch.Tensor, gen: torch.Generator, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Zhang et al., 2018): lam ~ Beta(alpha, alpha), x' = lam x + (1 - lam) x_partner. Returns (x', lam)."""
    lam = _beta(len(x), alpha, gen)
    partner = _partners(len(x), gen).to(x.device)
    lam_b = lam.to(x.device, x.dtype).view(-1, 1, 1, 1)
    return lam_b * x + (1 - lam_b) * x[partner], lam


def gaussian_kernel(radius: float) -> torch.Tensor:
    """1-D Gaussian with standard deviation `radius` (PIL's GaussianBlur(radius) convention), support 3 sigma."""
    half = max(1, math.ceil(3 * radius))
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / radius) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Separable Gaussian blur per channel (paper eq. 1) with reflect padding; `radius` is the std in pixels."""
    k = gaussian_kernel(radius).to(x.device, x.dtype)
    c, pad = x.shape[1], len(k) // 2
    y = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@dataclass(frozen=True)
class SynthesisConfig:
    variant: Variant = "ccm+gaussian"
    outlier_prob: float = 0.5
    alpha: float = 1.0
    blur_radius: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.outlier_prob <= 1.0:
            raise ValueError(f"outlier_prob={self.outlier_prob} must lie in [0, 1] (paper: 0.5)")
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha} must be > 0 for Beta(alpha, alpha) (paper: 1.0)")
        if not self.blur_radius > 0:
            raise ValueError(f"blur_radius={self.blur_radius} must be > 0 (paper: 1)")


def synthesize_outliers(x: torch.Tensor, config: SynthesisConfig, gen: torch.Generator) -> torch.Tensor:
    """Turn every image of `x` (float, [0, 1]) into a synthetic outlier of `config.variant`."""
    if config.variant not in SYNTHETIC_VARIANTS:
        raise ValueError(f"variant {config.variant!r} synthesises no outliers")
    out = x
    if config.variant in ("ccm", "ccm+gaussian"):
        choice = torch.randint(0, len(AUGMENTATIONS), (len(x),), generator=gen).to(x.device).view(-1, 1, 1, 1)
        pasted, _ = cutpaste(x, gen)
        mixed_box, _, _ = cutmix(x, gen, config.alpha)
        mixed, _ = mixup(x, gen, config.alpha)
        out = torch.where(choice == 0, pasted, torch.where(choice == 1, mixed_box, mixed))
    if config.variant in ("gaussian", "ccm+gaussian"):
        out = gaussian_blur(out, config.blur_radius)
    return out


def split_for_outliers(x: torch.Tensor, outlier_prob: float, gen: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Load-time draw: each sample independently is marked to become an outlier with probability `outlier_prob`.

    Returns (samples kept in-distribution, samples to turn into outliers)."""
    is_outlier = (torch.rand(len(x), generator=gen) < outlier_prob).to(x.device)
    return x[~is_outlier], x[is_outlier]


# --- complexity (Definition 1) ---------------------------------------------------------------------------------------

def compressor_name() -> str:
    """`jpeg2000` (lossless, as in the paper) if this Pillow build has OpenJPEG, else `png`."""
    from PIL import features

    return "jpeg2000" if features.check("jpg_2000") else "png"


def complexity_bits_per_dim(images: torch.Tensor | np.ndarray, compressor: str | None = None) -> np.ndarray:
    """C(x) = L(x) / d: length in bits of the lossless compression of each uint8 image per pixel-channel value.

    `jpeg2000`: Pillow's lossless (reversible 5/3 wavelet) codestream; `png`: Pillow PNG at compress_level 9."""
    from PIL import Image

    compressor = compressor or compressor_name()
    arr = images.numpy() if torch.is_tensor(images) else np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError("complexity needs uint8 images (N, C, H, W)")
    out = np.empty(len(arr))
    for i, img in enumerate(arr):
        hwc = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        buf = io.BytesIO()
        if compressor == "jpeg2000":
            Image.fromarray(hwc).save(buf, format="JPEG2000", irreversible=False, no_jp2=True)
        elif compressor == "png":
            Image.fromarray(hwc).save(buf, format="PNG", compress_level=9)
        else:
            raise ValueError(f"unknown compressor {compressor!r}; use jpeg2000 or png")
        out[i] = 8.0 * buf.getbuffer().nbytes / img.size
    return out
