"""The flow paper's outlier synthesis (Sec. 2.2): determinism, CutMix/MixUp consistency, blur lowers complexity."""

from __future__ import annotations

import pytest
import torch

from methods.flow.outlier_synthesis import (
    SynthesisConfig,
    complexity_bits_per_dim,
    compressor_name,
    cutmix,
    cutpaste,
    gaussian_blur,
    mixup,
    split_for_outliers,
    synthesize_outliers,
)


def _images(n=16, c=1, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("transform", [
    lambda x, g: cutpaste(x, g)[0],
    lambda x, g: cutmix(x, g, 1.0)[0],
    lambda x, g: mixup(x, g, 1.0)[0],
    lambda x, g: synthesize_outliers(x, SynthesisConfig("ccm+gaussian"), g),
])
def test_each_transform_is_deterministic_under_a_seed(transform):
    x = _images(c=3)
    assert torch.equal(transform(x, _gen(5)), transform(x, _gen(5)))
    assert not torch.equal(transform(x, _gen(5)), transform(x, _gen(6)))


def test_cutmix_mask_matches_pixels_and_lambda():
    x = _images(n=64)
    mixed, mask, lam = cutmix(x, _gen(1), alpha=1.0)
    changed = (mixed != x)
    assert not (changed & ~mask).any()  # only pixels inside the box may change
    assert torch.allclose(lam, 1 - mask.flatten(1).float().mean(1))
    assert (lam < 1).any() and ((lam >= 0) & (lam <= 1)).all()
    # inside the box every pixel comes from one single partner image
    for i in range(len(x)):
        if mask[i].any():
            box = mixed[i][mask[i]]
            assert any(torch.equal(box, x[j][mask[i]]) for j in range(len(x)) if j != i)


def test_mixup_is_the_convex_combination_with_a_partner():
    x = _images(n=32)
    mixed, lam = mixup(x, _gen(2), alpha=1.0)
    for i in range(len(x)):
        rest = (mixed[i] - lam[i] * x[i]) / (1 - lam[i])
        assert min((rest - x[j]).abs().max() for j in range(len(x)) if j != i) < 1e-4


def test_cutpaste_copies_a_patch_of_the_same_image():
    x = _images(n=8)
    pasted, mask = cutpaste(x, _gen(3))
    assert mask.flatten(1).any(1).all()
    assert not ((pasted != x) & ~mask).any()
    for i in range(len(x)):  # pasted values all occur in the original image
        assert torch.isin(pasted[i][mask[i]], x[i]).all()


def test_blur_preserves_constant_images_and_mean():
    x = torch.full((2, 3, 16, 16), 0.4)
    assert torch.allclose(gaussian_blur(x, 1.0), x, atol=1e-6)


def test_blurred_outliers_have_lower_complexity_than_sources():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 32, 32, generator=g)  # high-complexity sources
    to_u8 = lambda t: (t * 255).round().clamp(0, 255).to(torch.uint8)  # noqa: E731
    for variant in ("gaussian", "ccm+gaussian"):
        out = synthesize_outliers(x, SynthesisConfig(variant, blur_radius=1.0), _gen(1))
        before, after = complexity_bits_per_dim(to_u8(x)), complexity_bits_per_dim(to_u8(out))
        assert (after < before).all(), variant
    assert compressor_name() in ("jpeg2000", "png")


def test_split_respects_outlier_probability():
    x = torch.arange(10_000).float()
    keep, turn = split_for_outliers(x, 0.5, _gen(0))
    assert len(keep) + len(turn) == len(x) and abs(len(turn) - 5000) < 200
    assert len(split_for_outliers(x, 0.0, _gen(0))[1]) == 0 and len(split_for_outliers(x, 1.0, _gen(0))[0]) == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 0.0}, "alpha"), ({"alpha": -1.0}, "alpha"), ({"outlier_prob": -0.1}, "outlier_prob"),
    ({"outlier_prob": 1.01}, "outlier_prob"), ({"blur_radius": 0.0}, "blur_radius"),
])
def test_invalid_synthesis_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthesisConfig(**kwargs)
