"""Image sets, image-folder loading, and the registry of data sources used by benchmark specs.

Every image set the harness evaluates has one interface: `name`, `labels` (N,) or None, `len()`, a content
`fingerprint` for the cache, `batches(batch_size)` and `gather(indices)` yielding uint8 (N, C, H, W) tensors at the
benchmark's resolution, and `subset(indices)`. `ImageSet` holds its pixels in memory (CIFAR-scale data: kept on
the device as uint8 during training); `FileImageSet` decodes image files on demand (ImageNet-scale data, which does
not fit in memory at 224 px).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.cache import storable
from harness.errors import HarnessError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@storable
@dataclass(frozen=True, eq=False)
class ImageSet:
    """A named set of uint8 images (N, C, H, W) with optional labels (N,) and a content fingerprint."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be a uint8 tensor (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the pixels and labels (not the name), computed once."""
        digest = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        if self.labels is not None:
            digest.update(self.labels.numpy().astype(np.int64).tobytes())
        return digest.hexdigest()[:16]

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.images[start:start + batch_size]

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images at `indices` (a CPU or device index tensor for the in-memory set)."""
        return self.images[indices.to(self.images.device)]

    def subset(self, indices: np.ndarray | torch.Tensor, name: str | None = None) -> ImageSet:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        labels = None if self.labels is None else self.labels[idx]
        return ImageSet(name or self.name, self.images[idx].contiguous(), labels)


@storable
@dataclass(frozen=True, eq=False)
class FileImageSet:
    """Image files decoded on demand to uint8 (C, size, size) with `preprocess` (see `decode_image`).

    Same interface as `ImageSet`; the fingerprint covers each file's path, size and modification time and the
    preprocessing, so an edited or replaced file changes the cache keys that depend on the set.
    """

    name: str
    files: tuple[str, ...]
    size: int
    channels: int
    preprocess: str = "resize_center_crop"
    resize: int | None = None
    labels: torch.Tensor | None = None
    workers: int = min(8, os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.files):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.files)} files")

    def __len__(self) -> int:
        return len(self.files)

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the preprocessing and each file's path, size and modification time, computed once."""
        digest = hashlib.sha256(f"{self.size} {self.channels} {self.preprocess} {self.resize}".encode())
        for file in self.files:
            stat = os.stat(file)
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        if self.labels is not None:
            digest.update(self.labels.numpy().astype(np.int64).tobytes())
        return digest.hexdigest()[:16]

    def gather(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Decode the files at `indices` (threads: PIL releases the GIL while decoding) into a uint8 batch."""
        chosen = [self.files[int(i)] for i in indices]
        decode = lambda file: decode_image(file, self.size, self.channels, self.preprocess, self.resize)  # noqa: E731
        if len(chosen) > 1 and self.workers > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                arrays = list(pool.map(decode, chosen))
        else:
            arrays = [decode(file) for file in chosen]
        return torch.from_numpy(to_channels(np.stack(arrays), self.channels))

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.gather(range(start, min(start + batch_size, len(self))))

    def subset(self, indices: np.ndarray | torch.Tensor, name: str | None = None) -> FileImageSet:
        idx = [int(i) for i in np.asarray(indices)]
        labels = None if self.labels is None else self.labels[torch.as_tensor(idx, dtype=torch.long)]
        return FileImageSet(name or self.name, tuple(self.files[i] for i in idx), self.size, self.channels,
                            self.preprocess, self.resize, labels, self.workers)

    def renamed(self, name: str) -> FileImageSet:
        return self.subset(np.arange(len(self)), name)


AnyImageSet = ImageSet | FileImageSet


def to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 -> (N, channels, H, W): grey replicated to RGB, RGB to luma (ITU-R 601)."""
    if array.ndim == 3:
        array = array[..., None]
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.shape[-1] == channels:
        out = array
    elif channels == 1:
        luma = array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        out = np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
    elif array.shape[-1] == 1:
        out = np.repeat(array, channels, axis=-1)
    else:
        raise ValueError(f"cannot convert {array.shape[-1]} channels to {channels}")
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def resize_center_crop(image: Any, size: int, resize: int | None = None) -> Any:
    """torchvision's Resize(resize or size) + CenterCrop(size) on a PIL image: the shorter side is resized (bilinear,
    antialiased; the longer side truncated as torchvision does), then the centre size x size is cropped."""
    from PIL import Image

    short = resize or size
    w, h = image.size
    if min(w, h) != short:
        if w <= h:
            new_w, new_h = short, int(short * h / w)
        else:
            new_w, new_h = int(short * w / h), short
        image = image.resize((new_w, new_h), Image.BILINEAR)
    return center_crop(image, size)


def center_crop(image: Any, size: int) -> Any:
    """torchvision's CenterCrop(size) on a PIL image at least size x size."""
    w, h = image.size
    if (w, h) == (size, size):
        return image
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


PREPROCESSING = ("resize_center_crop", "none")


def decode_image(file: str | Path, size: int, channels: int, preprocess: str = "resize_center_crop",
                 resize: int | None = None) -> np.ndarray:
    """Read one image file as uint8 (size, size[, 3]).

    Any PIL mode (grey, palette, RGBA, CMYK, 16-bit) is converted to RGB (or L for 1 channel). `preprocess`:
    `resize_center_crop` = Resize(resize or size) + CenterCrop(size); `none` = no resampling: images of exactly
    size x size are kept, larger ones are centre-cropped to size, smaller ones are an error naming the file.
    Unreadable or truncated files raise HarnessError naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(file) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                img = img.point(lambda v: v * (1 / 256)).convert("L")
            img = img.convert(mode)
            if preprocess == "none":
                if min(img.size) < size:
                    raise HarnessError(f"image {file} is {img.size[0]}x{img.size[1]}, smaller than {size}x{size}, and "
                                       "this set is used unresized; replace the file or use resize_center_crop")
                img = center_crop(img, size)
            else:
                img = resize_center_crop(img, size, resize)
            return np.asarray(img)
    except Image.DecompressionBombError:
        raise HarnessError(f"image {file} has more pixels than PIL decodes safely ({Image.MAX_IMAGE_PIXELS:,}); "
                           "remove it or replace it with a downscaled copy") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise HarnessError(f"cannot read image {file} ({type(err).__name__}: {str(err).splitlines()[0][:80]}); "
                           "remove or replace that file") from None


def list_images(root: Path) -> list[Path]:
    """Every image file under `root` (recursively, following symlinks, each folder and each file once however
    many links lead to it, so a link loop ends), sorted by path."""
    found, seen_dirs, seen_files = [], set(), set()
    for directory, subdirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen_dirs:
            subdirs[:] = []
            continue
        seen_dirs.add(real)
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and os.path.realpath(path) not in seen_files:
                seen_files.add(os.path.realpath(path))
                found.append(path)
    return sorted(found)


def load_image_files(files: Sequence[Path | str], name: str, size: int, channels: int,
                     preprocess: str = "resize_center_crop", resize: int | None = None,
                     labels: torch.Tensor | None = None) -> ImageSet:
    """Decode `files` into an in-memory ImageSet (with a progress bar for large sets)."""
    from tqdm.auto import tqdm

    lazy = FileImageSet(name, tuple(str(f) for f in files), size, channels, preprocess, resize, labels)
    chunks = [lazy.gather(range(s, min(s + 512, len(lazy)))) for s in
              tqdm(range(0, len(lazy), 512), desc=f"decode {name}", leave=False, disable=len(lazy) <= 2048)]
    return ImageSet(name, torch.cat(chunks), labels)


def folder_images(path: str | Path, what: str) -> list[Path]:
    """The image files under `path` (recursively, sorted); a one-line HarnessError naming `what` (e.g. "OOD
    folder", "ncis.outliers_dir") when the folder is missing or holds none."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise HarnessError(f"{what} {root} does not exist; pass an existing directory of images")
    files = list_images(root)
    if not files:
        raise HarnessError(f"{what} {root} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                           "point it at a directory that contains image files")
    return files


def load_image_folder(path: str | Path, name: str, size: int, channels: int, limit: int | None = None,
                      seed: int = 0) -> ImageSet:
    """Load every image under `path` (recursively) as `size` x `size` with `channels` channels.

    With `limit`, a seeded random subset of that many files is loaded. Raises HarnessError for a missing folder,
    a folder without images, or an unreadable file (named).
    """
    files = folder_images(path, "OOD folder")
    if limit is not None and len(files) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(files), size=limit, replace=False))
        files = [files[i] for i in keep]
    return load_image_files(files, name, size, channels)
