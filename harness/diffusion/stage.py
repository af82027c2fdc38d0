"""Image generation as a sharded, resumable cache stage: one PNG per requested image (class, embedding id, seed).

The stage key covers the model (content fingerprint), dtype, sampling config, prompt template, class names and the
requested labels/seeds/embeddings. Work is cut into fixed batches that `torchrun` ranks take round-robin; each PNG
is written atomically with its metadata, and a rerun (after a crash, kill -9 or a full disk) computes only the
batches with missing images, so an interrupted run ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.cache import Cache, atomic_write_bytes
from harness.config import content_hash
from harness.diffusion.backend import DiffusionBackend, GenerationConfig, png_bytes, read_png
from harness.distributed import ShardedStage
from harness.errors import HarnessError

GENERATION_VERSION = 1  # the decoding of images (cache stage `generation`)


@dataclass(frozen=True)
class GenerationItem:
    """One image to generate: request position (= embedding id), class and seed."""

    index: int
    class_index: int
    class_name: str
    seed: int

    @property
    def item_id(self) -> str:
        return f"{self.index:06d}-{self.class_name.replace(' ', '_')}-s{self.seed}"


def check_template(template: str) -> None:
    if template.count("{}") != 1:
        raise HarnessError(f"prompt template {template!r} must contain exactly one {{}} where the class name goes, "
                           "e.g. 'A high-quality image of the {}'")


def _digest(*arrays: torch.Tensor | None) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(b"none" if array is None else np.ascontiguousarray(array.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()[:16]


def generate_images(backend: DiffusionBackend, cache: Cache, class_names: list[str], labels: torch.Tensor,
                    seeds: torch.Tensor, config: GenerationConfig, template: str,
                    embeddings: torch.Tensor | None = None, desc: str = "generate",
                    token_names: list[str] | None = None) -> list[Path]:
    """PNG paths of images i = 0..N-1: prompt `template` with class_names[labels[i]], the first token of
    token_names[labels[i]] (default: the class name itself) embedded as embeddings[i] (or the stock embedding when
    None), initial noise from seeds[i]. A token that does not occur in its prompt is a HarnessError."""
    check_template(template)
    token_names = list(class_names) if token_names is None else list(token_names)
    if len(token_names) != len(class_names):
        raise HarnessError(f"{len(token_names)} token names for {len(class_names)} classes; give one per class")
    tokens = [backend.class_token(name) for name in token_names]
    labels = torch.as_tensor(labels, dtype=torch.long)
    seeds = torch.as_tensor(seeds, dtype=torch.long)
    if len(seeds) != len(labels) or (embeddings is not None and len(embeddings) != len(labels)):
        raise HarnessError(f"{len(labels)} labels, {len(seeds)} seeds and "
                           f"{'no' if embeddings is None else len(embeddings)} embeddings; give one of each per image")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise HarnessError(f"labels must be class indices in [0, {len(class_names)})")
    if embeddings is not None:
        embeddings = embeddings.detach().float().cpu()
        backend.check_embeddings(embeddings)
    key = content_hash("generation", backend.fingerprint, str(backend.dtype), config, template, class_names,
                       *([] if token_names == list(class_names) else [token_names]),
                       _digest(labels, seeds, embeddings), GENERATION_VERSION)
    stage = ShardedStage(cache, "generation", key, suffix=".png", tally="images_generated")
    items = [GenerationItem(i, int(c), class_names[int(c)], int(s))
             for i, (c, s) in enumerate(zip(labels, seeds, strict=True))]

    def compute(batch: list[GenerationItem]) -> list[tuple[torch.Tensor, dict]]:
        prompts = [template.format(item.class_name) for item in batch]
        token_ids = [tokens[item.class_index].token_id for item in batch]
        vectors = None if embeddings is None else embeddings[[item.index for item in batch]]
        images = backend.generate(prompts, [item.seed for item in batch], replace(config, batch_size=len(batch)),
                                  token_ids, vectors)
        return [(image, {"class": item.class_name, "class_index": item.class_index, "embedding_id": item.index,
                         "seed": item.seed, "prompt": prompts[j],
                         "substituted_token": "none" if vectors is None else tokens[item.class_index].token,
                         "model": backend.fingerprint})
                for j, (item, image) in enumerate(zip(batch, images, strict=True))]

    def write(output: tuple[torch.Tensor, dict], path: Path) -> None:
        atomic_write_bytes(path, png_bytes(*output))

    paths = stage.run_batches({item.item_id: item for item in items}, compute, config.batch_size, write=write,
                              progress=lambda todo: tqdm(todo, desc=desc, unit="batch", leave=False))
    return [paths[item.item_id] for item in items]


def load_images(paths: list[Path]) -> torch.Tensor:
    """uint8 (N, C, H, W) from generated PNGs."""
    return torch.stack([read_png(path)[0] for path in paths])
