"""Dream-OOD's text-conditioned latent space (the Dream-OOD paper, Sec. 3.1-3.2), usable by any method.

1. Anchors: the (frozen) token embeddings T(y_c) of the class names in the SD text encoder (`class_anchors`).
2. Latent training (eq. 2): the benchmark's backbone h + Linear to the token dimension, z = h(x) / ||h(x)||, trained
   with cross-entropy over the similarities s(z, T(y_c)) / t. `similarity="dot"` is the paper's raw dot product
   T(y)^T z; `similarity="cosine"` normalises the anchors too (the official code). `text_latent_embeddings` returns
   the normalised z of the ID training images, with the latent model cached under its content hash.
3. Boundary sampling per class (Sec. 3.2, `harness.components.boundary`): `class_boundary_embeddings` draws outlier
   embeddings around the low-density ID embeddings and rescales them to the class token's norm (footnote 2).

Typical use (a method plugin):

    tokens, anchors = class_anchors(backend, spec.prompt_names)
    latent = text_latent_embeddings(context, backend, anchors, TextLatentConfig(epochs=200, batch_size=256))
    sampling = BoundarySampling(features_per_class=500, k=300, boundary_count=50, candidates_per_point=1500,
                                kept_per_point=2, rounds=100, noise_std=0.03 ** 0.5)
    outliers = class_boundary_embeddings(latent.embeddings, labels, C, sampling, anchors.norm(dim=1), seed)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from harness.classifier.augment import to_unit
from harness.classifier.models import Classifier
from harness.classifier.training import train_classifier
from harness.components.boundary import BoundarySampling
from harness.config import content_hash
from harness.context import RunContext
from harness.diffusion.backend import ClassToken, DiffusionBackend
from harness.errors import HarnessError

LATENT_VERSION = 1  # the eq. 2 latent encoder's training (cache stage `dream-ood-latent`)

Similarity = Literal["dot", "cosine"]


def class_anchors(backend: DiffusionBackend, names: Sequence[str]) -> tuple[list[ClassToken], torch.Tensor]:
    """Each name's tokens and the (C, D) token embeddings of their first BPE token (the substituted one)."""
    tokens = [backend.class_token(name) for name in names]
    return tokens, torch.stack([backend.token_embedding(t.token_id) for t in tokens])


class TokenAnchorHead(nn.Module):
    """Linear map to the token-embedding space, normalised, then similarity to fixed class anchors over a
    temperature (eq. 2): raw dot product with T(y_c) (`dot`) or cosine (`cosine`, anchors normalised)."""

    def __init__(self, feature_dim: int, anchors: torch.Tensor, temperature: float,
                 similarity: Similarity = "dot") -> None:
        super().__init__()
        if similarity not in ("dot", "cosine"):
            raise HarnessError(f"unknown latent similarity {similarity!r}; choose dot or cosine")
        self.project = nn.Linear(feature_dim, anchors.shape[1])
        anchors = anchors.float()
        self.register_buffer("anchors", F.normalize(anchors, dim=1) if similarity == "cosine" else anchors)
        self.temperature = temperature

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(features), dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.embed(features) @ self.anchors.T / self.temperature


@dataclass(frozen=True)
class TextLatentConfig:
    """Training of the latent encoder (eq. 2): the run's classifier recipe with these epochs and batch size."""

    epochs: int
    batch_size: int
    temperature: float = 0.1
    similarity: Similarity = "dot"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.temperature <= 0:
            raise ValueError("latent epochs and batch size must be >= 1 and temperature > 0")


@dataclass
class LatentEmbeddings:
    embeddings: torch.Tensor  # (N, D) L2-normalised z of the ID training images, in training-set order
    train_accuracy: float     # argmax over the eq. 2 logits vs the labels, on the training set


def text_latent_embeddings(context: RunContext, backend: DiffusionBackend, anchors: torch.Tensor,
                           config: TextLatentConfig) -> LatentEmbeddings:
    """Train (or load from the cache) the eq. 2 latent encoder and embed the ID training images."""
    ctx = context
    recipe = replace(ctx.classifier_config, epochs=config.epochs, batch_size=config.batch_size)
    key = content_hash("dream-ood-latent", ctx.benchmark.train.fingerprint, recipe, config.temperature,
                       config.similarity, hashlib.sha256(anchors.numpy().tobytes()).hexdigest(), ctx.seed,
                       backend.fingerprint, LATENT_VERSION)

    def build() -> Classifier:
        model = ctx.new_classifier(recipe)
        model.fc = TokenAnchorHead(model.feature_dim, anchors, config.temperature, config.similarity)
        return model

    def compute() -> dict[str, Any]:
        model = train_classifier(build(), ctx.benchmark.train, recipe, ctx.device, ctx.seed,
                                 desc=f"text latent (seed {ctx.seed})")
        return {k: v.cpu() for k, v in model.state_dict().items()}

    model = build()
    model.load_state_dict(ctx.cache.get_or_compute("dream-ood-latent", key, compute))
    model.to(ctx.device).eval()
    out = []
    with torch.no_grad():
        for images in ctx.benchmark.train.batches(ctx.classifier_config.eval_batch_size):
            out.append(model.fc.embed(model.features(to_unit(images.to(ctx.device)))).cpu())
    embeddings = torch.cat(out)
    accuracy = float(((embeddings @ model.fc.anchors.cpu().T).argmax(1) == ctx.benchmark.train.labels).float().mean())
    return LatentEmbeddings(embeddings, accuracy)


def class_boundary_embeddings(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                              sampling: BoundarySampling, token_norms: torch.Tensor, seed: int) -> torch.Tensor:
    """(C, rounds * points * kept_per_point, D) outlier embeddings: boundary sampling (Sec. 3.2) on the first
    `features_per_class` normalised features of each class, normalised, times the class token norm (footnote 2).
    `noise_std` multiplies N(0, I): the square root of the paper's variance sigma^2."""
    s = sampling
    generator = torch.Generator().manual_seed(seed)
    out = []
    for c in range(num_classes):
        bank = F.normalize(features[labels == c][:s.features_per_class], dim=1)
        if len(bank) < max(s.k, s.boundary_count):
            raise HarnessError(f"class {c} has {len(bank)} training embeddings, fewer than k={s.k} or "
                               f"boundary_count={s.boundary_count}; lower the sampling k")
        rounds = [s.sample(bank[None], generator)[0] for _ in range(s.rounds)]
        out.append(F.normalize(torch.cat(rounds), dim=1) * token_norms[c])
    return torch.stack(out)
