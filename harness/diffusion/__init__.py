"""Stable Diffusion backend shared by the pixel-space outlier synthesis methods (Dream-OOD, NCIS).

- `backend`: load a local diffusers SD v1.x directory, class tokens, per-sample token-embedding substitution,
  batched seeded generation, PNG with metadata;
- `stage`: generation as a sharded, resumable cache stage (torchrun ranks, one atomic PNG per image);
- `embeddings`: NCIS diffusion embeddings of training images (the NCIS paper, eq. 1), a sharded, resumable stage;
- `tokenizer`, `tiny`: the tiny SD-architecture model of the embedded benchmark and its training command.
"""

from harness.diffusion.backend import (
                                       ClassToken,
                                       DiffusionBackend,
                                       GenerationConfig,
                                       load_backend,
                                       read_png,
                                       resolve_model_path,
)

__all__ = ["ClassToken", "DiffusionBackend", "GenerationConfig", "load_backend", "read_png", "resolve_model_path"]
