"""A tiny random Stable-Diffusion-layout pipeline for tests (built, saved with save_pipeline, loaded by path)."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.diffusion.tiny import TinySDConfig, build_components, save_pipeline

TEST_ARCH = TinySDConfig(image_size=16, vae_channels=(8, 8), text_width=32, text_layers=1, text_heads=2,
                         unet_channels=(16, 32), norm_groups=8)
TEST_WORDS = ["cat", "dog", "seven", "bird"]


def write_tiny_random_pipeline(directory: Path) -> Path:
    torch.manual_seed(0)
    components = build_components(TEST_WORDS, directory, TEST_ARCH)
    save_pipeline(components, directory)
    return directory
