"""Generated outlier images fed to classifier training (Dream-OOD, NCIS): per step a random batch, brought to the ID
resolution by an explicit policy, augmented like the ID batch.

Resize policies (`outlier_resize`):
- `bilinear` / `nearest`: resize every outlier to the ID size with that interpolation (bilinear antialiased,
  like PIL's Resize used by NCIS; nearest samples pixel centres, torch's 'nearest-exact', equal to PIL's NEAREST,
  not torch's top-left 'nearest'), then the ID augmentation (random crop with padding, flip);
- `random`: per image a random choice of the two (NCIS's "Both", its best setting in Table 3);
- `none-random-crop`: no resize; a random ID-size window of the padded outlier (the official Dream-OOD CIFAR script
  applies RandomCrop(32, padding=4) to 256x256 generated images, so each outlier is a small patch of the image).

`load_outlier_folder` reads pre-generated outliers from disk ("bring your own outliers").
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F

from harness.classifier.augment import augment, to_unit
from harness.classifier.hooks import StepBatch
from harness.data.sets import folder_images, to_channels
from harness.errors import HarnessError

ResizePolicy = Literal["none-random-crop", "bilinear", "nearest", "random"]


def to_channels_tensor(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> `channels` channels: RGB to luma (ITU-R 601, rounded) or grey replicated."""
    if images.shape[1] == channels:
        return images
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images[:, :3].float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, channels, -1, -1).contiguous()


def random_windows(images: torch.Tensor, size: int, padding: int, generator: torch.Generator) -> torch.Tensor:
    """A random size x size window of each zero-padded image (torchvision RandomCrop(size, padding) per image)."""
    padded = F.pad(images, (padding,) * 4)
    n, _, h, w = padded.shape
    top = torch.randint(0, h - size + 1, (n,), generator=generator).to(images.device)
    left = torch.randint(0, w - size + 1, (n,), generator=generator).to(images.device)
    rows = (top[:, None] + torch.arange(size, device=images.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(size, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def resize_outliers(images: torch.Tensor, size: int, policy: ResizePolicy, generator: torch.Generator) -> torch.Tensor:
    """[0, 1] images (N, C, H, W) to size x size by `policy` (not `none-random-crop`, which crops instead)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    bilinear = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False) \
        if policy in ("bilinear", "random") else None
    nearest = F.interpolate(images, size=(size, size), mode="nearest-exact") if policy in ("nearest", "random") \
        else None
    if policy == "bilinear":
        return bilinear
    if policy == "nearest":
        return nearest
    pick = (torch.rand(len(images), generator=generator) < 0.5).to(images.device)[:, None, None, None]
    return torch.where(pick, nearest, bilinear)


class OutlierImageSource:
    """`EnergyRegularizer(outlier_images=...)` source: `count` random outliers per step, at the ID resolution."""

    def __init__(self, images: torch.Tensor, count: int, size: int, policy: ResizePolicy, padding: int,
                 hflip: bool, seed: int) -> None:
        if policy == "none-random-crop" and min(images.shape[-2:]) + 2 * padding < size:
            raise HarnessError(f"outlier images of {tuple(images.shape[-2:])} pixels are smaller than the ID size "
                               f"{size} (padding {padding}), so outlier_resize=none-random-crop has no window to "
                               "crop; use outlier_resize=bilinear, nearest or random")
        self.images = images
        self.count = count
        self.size = size
        self.policy = policy
        self.padding = padding
        self.hflip = hflip
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        """Its draw generator's state, for the regulariser's epoch checkpoints (`Stateful`)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        device = batch.images.device
        idx = torch.randint(0, len(self.images), (self.count,), generator=self.generator)
        x = to_unit(self.images[idx].to(device))
        if self.policy == "none-random-crop":
            x = random_windows(x, self.size, self.padding, self.generator)
            return augment(x, 0, self.hflip, self.generator)
        return augment(resize_outliers(x, self.size, self.policy, self.generator), self.padding, self.hflip,
                       self.generator)


def check_outlier_folder(path: str, option: str) -> None:
    """Fail before any work when the setting `option` (e.g. `ncis.outliers_dir`) names no folder of images."""
    folder_images(path, option)


def load_outlier_folder(path: str | Path, channels: int) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Pre-generated outlier images from a folder (e.g. the images an official repository released), for methods
    that train on outliers without synthesising them: uint8 (N, channels, H, W) at their stored size (all images
    must share it; training resizes them by the method's `outlier_resize`), labels when every image sits in a class
    subfolder (index of the subfolder in sorted order, else None), and a fingerprint of the files' names and bytes.
    An empty folder, an unreadable image or a size mismatch raises a HarnessError naming the file."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path).expanduser()
    files = folder_images(root, "outliers folder")
    digest, arrays = hashlib.sha256(), []
    for file in files:
        raw = file.read_bytes()
        digest.update(str(file.relative_to(root)).encode() + b"\0" + raw)
        try:
            with Image.open(io.BytesIO(raw)) as img:
                array = np.asarray(img.convert("L" if channels == 1 else "RGB"))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise HarnessError(f"cannot read outlier image {file}; remove or replace that file") from None
        if arrays and array.shape != arrays[0].shape:
            raise HarnessError(f"outlier image {file} is {array.shape[1]}x{array.shape[0]} but {files[0]} is "
                               f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; give the folder images of one size")
        arrays.append(array)
    images = torch.from_numpy(np.ascontiguousarray(to_channels(np.stack(arrays), channels)))
    parents = [file.parent for file in files]
    labels = None
    if all(parent.parent == root for parent in parents):
        classes = sorted({parent.name for parent in parents})
        labels = torch.tensor([classes.index(parent.name) for parent in parents])
    return images, labels, digest.hexdigest()[:16]
