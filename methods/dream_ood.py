"""Dream-OOD (Du et al., NeurIPS 2023): outliers imagined by Stable Diffusion from low-likelihood text embeddings.

1. Text-conditioned latent space (Sec. 3.1, eq. 2; `harness.components.text_latent`): an image encoder h (the
   benchmark's backbone) + Linear to the token-embedding dimension, z = h(x) / ||h(x)||, trained with cross-entropy over
   T(y_c)^T z / t, t = 0.1 (`latent_similarity=dot`; the official code uses the cosine), where T(y_c) is the frozen
   token embedding of class c's word in SD's text encoder (first BPE token, recorded with the token report).
2. Boundary sampling per class (Sec. 3.2): L2-normalised embeddings of the ID training images; the `boundary_count`
   with the largest k-NN distance are boundary points; each gets `candidates_per_point` candidates
   v ~ N(z, sigma^2 I) (`sigma` a variance by default, as in the paper; the official code multiplies N(0, I) by
   0.07, a std: `sigma_meaning=std`), normalised; per point the `kept_per_point` with the largest k-NN distance
   are kept (`selection=paper`), or the official code's mis-ordered reshape (`selection=reference`); `rounds`
   repetitions; the kept embeddings are rescaled to the class token's norm (footnote 2).
3. Decoding (eq. 6, `harness.diffusion`): prompt template with the class word (`class_words`: the spec's natural
   prompt names, or the official script's list), the class token's embedding replaced by each sampled vector,
   PLMS 50 steps, guidance 7.5, 512x512, bilinear resize to 256.
4. Training (Sec. 3.3, eq. 7): the classifier from scratch on ID + outliers, one forward pass per step (as many
   outliers as ID images), L_CE + beta * L_ood with phi a three-layer MLP (`mlp3`), beta 2.5 (CIFAR) / 1.0
   (ImageNet-100). Test score phi(E(f(x))) ("the output of the binary logistic classifier"); the official test
   script uses the plain energy and a Linear(1, 2) phi on CIFAR. Outliers reach the ID resolution by
   `outlier_resize`; the official CIFAR script crops 32x32 patches of the 256x256 images (`none-random-crop`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from harness.components.boundary import BoundarySampling, Selection
from harness.components.outlier_images import (
    ResizePolicy,
    to_channels_tensor,
)
from harness.components.pixel_synthesis import PixelSynthesisConfig, PixelSynthesisMethod
from harness.components.regularizers import PhiKind
from harness.components.text_latent import (
    Similarity,
    TextLatentConfig,
    class_anchors,
    class_boundary_embeddings,
    text_latent_embeddings,
)
from harness.config import Protocol
from harness.contract import MethodInfo, Outliers
from harness.data.sets import ImageSet
from harness.diffusion.prompts import token_report
from harness.diffusion.stage import generate_images, load_images
from harness.errors import HarnessError


@dataclass(frozen=True)
class DreamOODConfig(PixelSynthesisConfig):
    """Paper defaults (official CIFAR-100 values where the paper gives none); `reference_settings` has the
    official code's departures. Model, decoding, outlier folder and gallery fields: `PixelSynthesisConfig`."""

    prompt_template: str = "A high-quality image of the {}"
    # text-conditioned latent space (eq. 2)
    temperature: float = 0.1
    latent_similarity: Similarity = "dot"   # eq. 2: T(y)^T z / t
    latent_epochs: int = 200
    latent_batch_size: int = 256
    features_per_class: int = 500
    # boundary sampling (Sec. 3.2)
    k: int = 300
    boundary_count: int = 50
    sigma: float = 0.03                     # the paper's sigma^2 = 0.03 (Sec. 4.2, Appendix C)
    sigma_meaning: Literal["variance", "std"] = "variance"
    candidates_per_point: int = 1500
    kept_per_point: int = 2
    rounds: int = 100
    selection: Selection = "paper"
    # decoding: PLMS 50 steps, guidance 7.5, 512x512 resized to 256
    outliers_per_class: int = 1000
    scheduler: Literal["pndm", "ddim"] = "pndm"
    # training with outliers (eq. 7)
    beta: float = 2.5
    phi: PhiKind = "mlp3"                   # below eq. 7: a three-layer nonlinear MLP
    outlier_resize: ResizePolicy = "none-random-crop"
    test_score: Literal["energy", "phi"] = "phi"
    class_words: Literal["natural", "official"] = "natural"  # spec.prompt_names or official_prompt_names["dream_ood"]
    protocol: Protocol = "paper"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0 or self.sigma < 0 or self.beta < 0:
            raise ValueError("temperature must be > 0, sigma and beta >= 0")
        for name in ("latent_epochs", "latent_batch_size", "outliers_per_class", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        self.sampling.check("features_per_class")
        if self.outliers_per_class > self.boundary_count * self.kept_per_point * self.rounds:
            raise ValueError(f"outliers_per_class={self.outliers_per_class} exceeds the sampled embeddings per class "
                             "(boundary_count x kept_per_point x rounds)")

    @property
    def latent(self) -> TextLatentConfig:
        return TextLatentConfig(self.latent_epochs, self.latent_batch_size, self.temperature, self.latent_similarity)

    @property
    def sampling(self) -> BoundarySampling:
        """Sec. 3.2 per class: every boundary point in every round; noise std sqrt(sigma^2) for the paper's
        variance."""
        noise_std = self.sigma ** 0.5 if self.sigma_meaning == "variance" else self.sigma
        return BoundarySampling(self.features_per_class, self.k, self.boundary_count, self.candidates_per_point,
                                self.kept_per_point, self.rounds, noise_std, self.selection)


class DreamOOD(PixelSynthesisMethod[DreamOODConfig]):
    info = MethodInfo("dream_ood", "Du et al., NeurIPS 2023", "pixel-synthesis",
                      "SD-decoded outliers from boundary samples in a text-conditioned latent space + energy reg.")
    Config = DreamOODConfig
    gallery_title = "Dream-OOD outliers"
    benchmark_defaults = {
        # embedded scale: the shipped tiny SD model (32x32 digits), 400 training images per class
        "mnist5k": {"model": "models/tiny-sd-mnist5k", "prompt_template": "A high-quality image of a {}",
                    "latent_epochs": 8, "latent_batch_size": 128, "features_per_class": 400, "k": 50,
                    "boundary_count": 20, "candidates_per_point": 200, "rounds": 5, "outliers_per_class": 40,
                    "steps": 20, "guidance_scale": 3.0, "generation_size": None, "output_size": None,
                    "generation_batch_size": 50, "outlier_resize": "bilinear",
                    # a linear phi: the paper's three-layer phi collapses to a constant at this scale under the
                    # shared SGD recipe (docs/dream_ood.md, "mnist5k keeps phi=linear")
                    "phi": "linear"},
        # paper Sec. 4: beta 1.0 for ImageNet-100; official ImageNet-100 script: 200 boundary points; the 256x256
        # outliers are resized to the 224 ID resolution (then the ID augmentation) rather than cropped
        "imagenet100": {"beta": 1.0, "boundary_count": 200, "outlier_resize": "bilinear"},
    }
    smoke_settings = {
        "*": {"model": "models/tiny-sd-mnist5k", "latent_epochs": 1, "features_per_class": 2, "k": 2,
              "boundary_count": 2, "candidates_per_point": 4, "kept_per_point": 1, "rounds": 1, "outliers_per_class": 1,
              "steps": 2, "generation_size": None, "output_size": None, "generation_batch_size": 100},
        "mnist5k": {"outliers_per_class": 2},
    }
    reference_settings = {
        # official scripts: cosine latent (resnet_anchor.py), N(0, I) * 0.07, KNN_dis_search_distance's reshape,
        # Linear(1, 2) phi and the plain energy at test time (train/test_ood_*_cifar100.py)
        "*": {"latent_similarity": "cosine", "sigma": 0.07, "sigma_meaning": "std", "selection": "reference",
              "phi": "linear", "test_score": "energy"},
        "cifar100": {"class_words": "official"},
        "imagenet100": {"sigma": 0.03, "phi": "mlp", "class_words": "official"},
    }

    # --- stage 1: text-conditioned latent space -------------------------------------------------------------------
    def class_words(self) -> tuple[str, ...]:
        """The words put in every prompt and whose first token is substituted (paper: natural names)."""
        spec = self.context.benchmark.spec
        if self.config.class_words == "natural":
            return spec.prompt_names
        if "dream_ood" not in spec.official_prompt_names:
            raise HarnessError(f"benchmark {spec.name} has no official Dream-OOD class-word list; use "
                               "dream_ood.class_words=natural")
        return spec.official_prompt_names["dream_ood"]

    # --- stages 2-3: boundary sampling and decoding ----------------------------------------------------------------
    def synthesize_outliers(self) -> Outliers:
        ctx, c = self.context, self.config
        spec = ctx.benchmark.spec
        backend = self.diffusion_backend()
        words = self.class_words()
        tokens = token_report(backend, words, c.prompt_template)
        tokens.require_present("choose other dream_ood.class_words or fix the spec's prompt_names")
        _, anchors = class_anchors(backend, words)
        latent = text_latent_embeddings(ctx, backend, anchors, c.latent)
        embeddings = class_boundary_embeddings(latent.embeddings, ctx.benchmark.train.labels, spec.num_classes,
                                               c.sampling, anchors.norm(dim=1), ctx.seed)
        pick = torch.randperm(embeddings.shape[1], generator=torch.Generator().manual_seed(ctx.seed))
        chosen = embeddings[:, pick[:c.outliers_per_class]].reshape(-1, embeddings.shape[2])
        labels = torch.arange(spec.num_classes).repeat_interleave(c.outliers_per_class)
        seeds = ctx.seed * 10_000_000 + torch.arange(len(labels))
        paths = generate_images(backend, ctx.cache, list(words), labels, seeds, c.generation,
                                c.prompt_template, chosen, desc="dream-ood outliers")
        images = to_channels_tensor(load_images(paths), spec.channels)
        facts = {"selection": c.selection, "class_words": c.class_words, **tokens.as_record(),
                 "latent_train_accuracy": round(latent.train_accuracy, 4),
                 "outlier_embedding_norm_mean": round(float(chosen.norm(dim=1).mean()), 5)}
        return Outliers("images", images, labels, directory=str(paths[0].parent), facts=facts)

    # --- stage 4: training with the energy regulariser -------------------------------------------------------------
    def train(self, outliers: Outliers | None) -> None:
        fingerprint = None if outliers is None else ImageSet("outliers", outliers.data, outliers.labels).fingerprint
        self.train_with_outlier_images("dream-ood", outliers, self.context.classifier_config,
                                       key_parts=[self.config, fingerprint])

    def details(self) -> dict[str, Any]:
        """The training's facts (the synthesis' are the outliers' `facts`)."""
        return {"outliers": len(self.outliers), "outlier_resize": self.config.outlier_resize,
                "test_score": self.config.test_score, **self.regulariser_details()}

    def gallery_row_names(self, classes: list[int]) -> list[str]:
        return [self.context.benchmark.spec.class_names[k] for k in classes]
