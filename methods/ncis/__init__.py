"""NCIS, "Non-Linear Outlier Synthesis for Out-of-Distribution Detection" (anonymous, under review): outliers
decoded by Stable Diffusion from low-likelihood points of class-conditional manifolds in SD's own conditioning space.

1. Diffusion embeddings (Sec. 3.1, eq. 1, Alg. 1; `harness.diffusion.embeddings`): per ID training image, the class
   word's token embedding e is optimised on the noise-prediction loss of that image (3 Adam steps, lr 1e-2, 32
   noised copies on the 50-step DDIM grid), many images per UNet call; `max_per_class` embeds a fraction (Fig. 5d).
2. Invariant map (Sec. 3.2, eq. 4-7; `methods.ncis.cvpn`): a conditional volume-preserving network f(e, y) whose K
   invariant outputs are driven to 0 (K from per-class PCA with `invariant_variance_percent`, the paper's p),
   cached under a content hash of its inputs; or linear invariants (per-class PCA rotation, Table 3), or no map at
   all (`sampling=npos`: NPOS-style boundary sampling of the normalised embeddings, rescaled to the class's mean
   norm, `harness.components.text_latent`).
3. Sampling (Sec. 3.3-3.4, eq. 8-11; `methods.ncis.invariant_sampling`): v = f(e, y), per class
   N(mu, Sigma + lambda I) with lambda = `covariance_ridge`; rejection sampling from the class's low-likelihood
   region (Sec. 3.4), the region being below the `keep_below_id_percentile`-th percentile of the class's ID
   embeddings' log-likelihood: `rounds` x `candidates_per_round` draws (more rounds as needed), keeping the
   `kept_per_round` least likely accepted draws of each round (the official code keeps the least likely of each
   round with no bound, `protocol=reference`); e' = f^-1(v', y).
4. Decoding (`harness.diffusion.stage`): "A high-quality image of a <e'>", DDIM 50 steps, guidance 7.5, 512 -> 256,
   `images_per_embedding` seeds per e'.
5. Training (Sec. 3.5, eq. 12-13; `harness.components.regularizers`): the classifier on ID + outliers in one
   forward pass, beta 1.0, phi an MLP, test score phi(E(f(x))); outliers resized per sample by nearest or
   bilinear (`random`, the paper's "Both", Table 3).

`protocol=reference` switches every documented departure of the official code at once (`reference_settings`;
docs/ncis.md has the table); `outliers_dir` trains on a folder of pre-generated outliers instead of synthesising.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from harness.components.boundary import BoundarySampling
from harness.components.outlier_images import to_channels_tensor
from harness.components.pixel_synthesis import PixelSynthesisConfig, PixelSynthesisMethod
from harness.components.regularizers import PhiKind, PhiOrientation, TestScore
from harness.components.text_latent import (
    TextLatentConfig,
    class_anchors,
    class_boundary_embeddings,
    text_latent_embeddings,
)
from harness.config import Protocol, content_hash
from harness.contract import MethodInfo, Outliers
from harness.data.sets import ImageSet
from harness.diffusion.embeddings import EmbeddingConfig, check_vae_encoder, diffusion_embeddings, select_images
from harness.diffusion.stage import check_template, generate_images, load_images
from harness.errors import HarnessError
from methods.ncis.cvpn import (
    CVPN,
    CVPN_VERSION,
    CVPNConfig,
    LinearInvariants,
    check_reconstruction,
    invariant_count,
    train_cvpn,
)
from methods.ncis.invariant_sampling import (
    Covariance,
    class_log_likelihoods,
    low_likelihood_samples,
    map_back,
)

Sampling = Literal["cvpn", "linear", "npos"]


@dataclass(frozen=True)
class NCISConfig(PixelSynthesisConfig):
    """Paper defaults (the NCIS paper, Sec. 3-4); `protocol=reference` applies the official code's values. Model,
    decoding (DDIM 50 steps, guidance 7.5, 512 -> 256), outlier folder and gallery fields: `PixelSynthesisConfig`.
    `renamed` keeps the paper-symbol spellings `--set ncis.p=...` / `ncis.lam=...` working."""

    renamed: ClassVar[dict[str, str]] = {"p": "invariant_variance_percent", "lam": "covariance_ridge"}

    protocol: Protocol = "paper"
    class_names: Literal["natural", "official"] = "natural"  # spec.prompt_names, or spec.official_prompt_names
    # 1. diffusion embeddings (Sec. 3.1, Alg. 1), or Dream-OOD's text-conditioned latent space (Table 3)
    embedding: Literal["diffusion", "dream_ood"] = "diffusion"
    embedding_prompt: str = "A high-quality image of a {}"
    embedding_iterations: int = 3
    embedding_lr: float = 1e-2
    timesteps_per_image: int = 32
    timestep_grid: int = 50
    images_per_call: int = 8
    max_per_class: int | None = None      # embed at most this many training images per class (Fig. 5d)
    # the embedding stage's seed (timesteps, noise, max_per_class subset): fixed, so every run seed shares one set of
    # embeddings, computed once per training set like the paper's (13 h on 8 A100) and its split; None = run seed
    embedding_seed: int | None = 0
    embedding_precision: Literal["float32", "bfloat16"] = "float32"
    latent_epochs: int = 200              # embedding=dream_ood: its latent encoder's recipe (Dream-OOD defaults)
    latent_batch_size: int = 256
    # 2. invariant map (Sec. 3.2)
    sampling: Sampling = "cvpn"
    invariant_variance_percent: float = 2.0  # the paper's p: % of per-class variance left to the K invariants
    invariant_rule: Literal["paper", "reference"] = "paper"
    invariants: Literal["first", "last"] = "first"
    cvpn_blocks: int = 4
    cvpn_epochs: int = 200
    cvpn_batch_size: int = 64
    cvpn_lr: float = 1e-4
    reconstruction_step: bool = False     # official: a second step per batch on the reconstruction error
    best_checkpoint: bool = False         # official: keep the epoch with the lowest invariant MSE
    reconstruction_tolerance: float = 1e-4  # max |f^-1(f(e)) - e| accepted before sampling
    # 3. low-likelihood sampling (Sec. 3.3-3.4, eq. 8-11)
    covariance_ridge: float = 1e-5        # eq. 8's lambda: the class Gaussian's covariance is Sigma + lambda I
    covariance: Covariance = "sample"     # eq. 8's Sigma; "shrinkage": Ledoit-Wolf (allows N_c <= D)
    gaussian_dims: Literal["all", "invariants"] = "all"
    rounds: int = 10
    candidates_per_round: int = 3330
    kept_per_round: int = 10
    # Sec. 3.4's rejection sampling: only draws below the class's ID q-th log-likelihood percentile are kept;
    # None = the official code's rule (the least likely of each round, whatever their likelihood)
    keep_below_id_percentile: float | None = 1.0
    npos_k: int = 300                     # sampling=npos: k-NN boundary sampling in embedding space
    npos_boundary_count: int = 50
    npos_sigma: float = 0.07
    # 4. decoding
    outliers_per_class: int = 64          # Table 3: 6,400 outliers for CIFAR-100
    images_per_embedding: int = 1
    # 5. training with outliers (Sec. 3.5)
    beta: float = 1.0
    phi: PhiKind = "mlp"
    # Sec. 3 (opening) and 3.5: the regulariser gives ID samples the higher energy score, which is then the OOD
    # score: a phi monotone in the logsumexp (MonotonePhi) holds that orientation; "free" (the official code's
    # unconstrained phi) can learn the inverted one (docs/ncis.md)
    phi_orientation: PhiOrientation = "anchored"
    test_score: TestScore = "phi"
    baseline_msp: bool = True             # record the shared baseline classifier's MSP on the decoded outliers
    epochs: int | None = None             # None = the benchmark recipe's; else scaled like it (preset, --set)
    batch_size: int | None = None         # ID images per step (as many outliers); None = the recipe's

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.covariance_ridge > 0:
            raise ValueError(f"covariance_ridge={self.covariance_ridge} must be > 0 (the ridge lambda of eq. 8)")
        if not 0 < self.invariant_variance_percent < 100:
            raise ValueError(f"invariant_variance_percent={self.invariant_variance_percent} must be a percentage in "
                             "(0, 100)")
        if self.keep_below_id_percentile is not None and not 0 < self.keep_below_id_percentile < 100:
            raise ValueError(f"keep_below_id_percentile={self.keep_below_id_percentile} must be a percentage in "
                             "(0, 100), or none for the official code's rule (the least likely of each round)")
        if self.beta < 0 or self.npos_sigma < 0 or self.embedding_lr <= 0 or self.cvpn_lr <= 0:
            raise ValueError("beta and npos_sigma must be >= 0, embedding_lr and cvpn_lr > 0")
        for name in ("embedding_iterations", "timesteps_per_image", "timestep_grid", "images_per_call", "cvpn_blocks",
                     "cvpn_epochs", "cvpn_batch_size", "latent_epochs", "latent_batch_size", "rounds",
                     "candidates_per_round", "kept_per_round", "npos_k", "npos_boundary_count",
                     "outliers_per_class", "images_per_embedding", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.embedding_seed is not None and self.embedding_seed < 0:
            raise ValueError(f"embedding_seed={self.embedding_seed} must be >= 0, or none for the run seed")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or none (got {getattr(self, name)})")
        need = max(self.npos_k, self.npos_boundary_count) if self.sampling == "npos" else 2
        if self.max_per_class is not None and self.max_per_class < need:
            raise ValueError(f"max_per_class={self.max_per_class} embeds fewer images per class than the {need} the "
                             f"{self.sampling} sampler needs; raise max_per_class")
        if self.sampling == "npos" and self.embeddings_per_class > self.rounds * self.npos_boundary_count:
            raise ValueError(f"sampling=npos draws rounds x npos_boundary_count = "
                             f"{self.rounds * self.npos_boundary_count} embeddings per class, fewer than the "
                             f"{self.embeddings_per_class} needed")
        if self.kept_per_round > self.candidates_per_round:
            raise ValueError(f"kept_per_round={self.kept_per_round} exceeds candidates_per_round="
                             f"{self.candidates_per_round}")
        if self.embeddings_per_class > self.rounds * self.kept_per_round:
            raise ValueError(f"outliers_per_class={self.outliers_per_class} / images_per_embedding="
                             f"{self.images_per_embedding} needs {self.embeddings_per_class} sampled embeddings per "
                             f"class but rounds x kept_per_round gives {self.rounds * self.kept_per_round}")
        if self.embedding_prompt.count("{}") != 1:
            raise ValueError(f"embedding_prompt {self.embedding_prompt!r} needs exactly one {{}} for the class name")

    @property
    def embeddings_per_class(self) -> int:
        return -(-self.outliers_per_class // self.images_per_embedding)

    @property
    def embedding_config(self) -> EmbeddingConfig:
        return EmbeddingConfig(prompt_template=self.embedding_prompt, iterations=self.embedding_iterations,
                               lr=self.embedding_lr, timesteps_per_image=self.timesteps_per_image,
                               timestep_grid=self.timestep_grid, images_per_call=self.images_per_call,
                               max_per_class=self.max_per_class, precision=self.embedding_precision)

    @property
    def cvpn(self) -> CVPNConfig:
        return CVPNConfig(blocks=self.cvpn_blocks, epochs=self.cvpn_epochs, batch_size=self.cvpn_batch_size,
                          lr=self.cvpn_lr, invariants=self.invariants, reconstruction_step=self.reconstruction_step,
                          keep_best=self.best_checkpoint)


def log_likelihood_facts(id_log_lik: torch.Tensor, id_labels: torch.Tensor, kept_log_lik: torch.Tensor,
                         kept_labels: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Per class: percentiles 1, 5, 50 of the ID embeddings' log-likelihood under their class Gaussian (v space),
    max / median / min of the kept samples', and the fraction of kept samples below the ID 1st percentile; overall:
    that fraction over every kept sample (Sec. 3.3: the kept samples should lie in the class's low-likelihood
    tail)."""
    per_class, below = {}, 0
    for c, name in enumerate(class_names):
        ids = id_log_lik[id_labels == c].numpy()
        kept = kept_log_lik[kept_labels == c].numpy()
        if len(ids) == 0 or len(kept) == 0:
            continue
        p1, p5, p50 = (float(np.percentile(ids, q)) for q in (1, 5, 50))
        n_below = int((kept < p1).sum())
        below += n_below
        per_class[name] = {"id_p1": round(p1, 3), "id_p5": round(p5, 3), "id_p50": round(p50, 3),
                           "kept_max": round(float(kept.max()), 3), "kept_p50": round(float(np.median(kept)), 3),
                           "kept_min": round(float(kept.min()), 3),
                           "kept_below_id_p1": round(n_below / len(kept), 4)}
    fraction = below / max(1, len(kept_log_lik))
    return {"per_class": per_class, "kept_below_id_p1": round(fraction, 4), "all_kept_below_id_p1": fraction == 1.0}


@dataclass(frozen=True)
class Embedded:
    """Stage 1's result: (N, D) ID embeddings, their labels, and the stage's facts for the record."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    facts: dict[str, float]


@dataclass(frozen=True)
class InvariantMap:
    """Stage 2's result: the fitted map f (cVPN or linear invariants) and its facts (K, fit, reconstruction)."""

    model: CVPN | LinearInvariants
    facts: dict[str, Any]


@dataclass(frozen=True)
class Sampled:
    """Stage 3's result: (C, embeddings_per_class, D) outlier embeddings e' and the sampler's facts."""

    embeddings: torch.Tensor
    facts: dict[str, Any]


class NCIS(PixelSynthesisMethod[NCISConfig]):
    info = MethodInfo("ncis", "Non-Linear Outlier Synthesis for Out-of-Distribution Detection (NCIS; anonymous, "
                      "under review)", "pixel-synthesis",
                      "SD-decoded outliers from low-likelihood samples of cVPN class manifolds in SD's "
                      "conditioning space + energy reg.")
    Config = NCISConfig
    gallery_title = "NCIS outliers"
    benchmark_defaults = {
        # embedded scale: the shipped tiny SD model (32x32 digits), every training image embedded (~400 per class,
        # well above the D = 64 token dims, so each class covariance of eq. 8 has full rank), 40 outliers per class
        # (as dream_ood's mnist5k default), a short cVPN fit
        "mnist5k": {"model": "models/tiny-sd-mnist5k", "images_per_call": 20,
                    "cvpn_epochs": 40, "cvpn_batch_size": 32, "cvpn_lr": 1e-3, "rounds": 4,
                    "npos_k": 10, "npos_boundary_count": 10,
                    "outliers_per_class": 40, "steps": 20, "guidance_scale": 3.0, "generation_size": None,
                    "output_size": None, "generation_batch_size": 50},
        # Sec. 4: ResNet-34, 250 epochs on CIFAR-100 (the spec's shared recipe has 100)
        "cifar100": {"epochs": 250},
        # Sec. 4: 20 epochs of fine-tuning at lr 1e-3 (the spec's recipe), phi 512 wide
        "imagenet100": {},
    }
    smoke_settings = {
        "*": {"model": "models/tiny-sd-mnist5k", "max_per_class": 2, "timesteps_per_image": 2,
              "embedding_iterations": 1, "cvpn_epochs": 1, "rounds": 1, "candidates_per_round": 8, "kept_per_round": 1,
              "outliers_per_class": 1, "steps": 2, "generation_size": None, "output_size": None,
              "generation_batch_size": 100, "epochs": None, "covariance": "shrinkage"},
        "mnist5k": {"candidates_per_round": 500},
    }
    reference_settings = {
        # LarsDoorenbos/NCIS at 42fb174 (methods.md "NCIS official code")
        "*": {"invariant_variance_percent": 5.0, "invariant_rule": "reference", "invariants": "last",
              "reconstruction_step": True, "best_checkpoint": True, "embedding_prompt": "An image of a {}",
              "prompt_template": "A high-quality image of the {}", "scheduler": "pndm", "images_per_embedding": 8,
              "test_score": "energy", "class_names": "official", "phi_orientation": "free",
              "keep_below_id_percentile": None},
        "cifar100": {"phi": "linear", "batch_size": 256},
        "imagenet100": {"batch_size": 80},
    }

    @classmethod
    def check_synthesis(cls, config: NCISConfig, model_directory: Path) -> None:
        check_template(config.embedding_prompt)
        if config.embedding == "diffusion":
            check_vae_encoder(model_directory)

    # --- names and tokens -----------------------------------------------------------------------------------------

    def prompt_names(self, use: str) -> list[str]:
        """Class words for `use` ("ncis_embedding" / "ncis_generation"): the spec's official list when
        `class_names=official` and the spec has one, else its natural prompt names."""
        spec = self.context.benchmark.spec
        if self.config.class_names == "official" and use in spec.official_prompt_names:
            return list(spec.official_prompt_names[use])
        return list(spec.prompt_names)

    # --- stages 1-3: embeddings, invariant map, sampling ----------------------------------------------------------
    def embed(self) -> Embedded:
        """(N, D) ID embeddings and labels: Sec. 3.1 diffusion embeddings, or (`embedding=dream_ood`, Table 3)
        Dream-OOD's normalised latent z times the class token's norm (its footnote 2), so both sources live at the
        token-embedding scale; `max_per_class` selects the same images for either, by `embedding_seed`."""
        ctx, c = self.context, self.config
        backend = self.diffusion_backend()
        names = self.prompt_names("ncis_embedding")
        seed = ctx.seed if c.embedding_seed is None else c.embedding_seed
        if c.embedding == "diffusion":
            embedded = diffusion_embeddings(backend, ctx.cache, ctx.benchmark.train, names, c.embedding_config,
                                            seed, desc="ncis embeddings")
            lowered = (embedded.final_loss < embedded.initial_loss).float().mean()
            return Embedded(embedded.embeddings.float(), embedded.labels.long(), {
                "embedding_loss_initial_mean": round(float(embedded.initial_loss.mean()), 6),
                "embedding_loss_final_mean": round(float(embedded.final_loss.mean()), 6),
                "embedding_loss_lowered_fraction": round(float(lowered), 4)})
        _, anchors = class_anchors(backend, names)
        latent = text_latent_embeddings(ctx, backend, anchors,
                                        TextLatentConfig(c.latent_epochs, c.latent_batch_size, similarity="cosine"))
        labels = torch.as_tensor(ctx.benchmark.train.labels, dtype=torch.long)
        chosen = select_images(labels, c.max_per_class, seed)
        return Embedded(latent.embeddings[chosen] * anchors.norm(dim=1)[labels[chosen], None], labels[chosen],
                        {"latent_train_accuracy": round(latent.train_accuracy, 4)})

    def invariant_map(self, embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> InvariantMap:
        """The fitted map f: linear invariants, or the cVPN cached under a hash of its inputs and config; its
        inverse must reconstruct the embeddings to `reconstruction_tolerance`."""
        c, ctx = self.config, self.context
        # K outside [1, D-1] is refused
        k = invariant_count(embeddings, labels, c.invariant_variance_percent, rule=c.invariant_rule)
        facts: dict[str, Any] = {"invariant_k": k}
        if c.sampling == "linear":
            model: CVPN | LinearInvariants = LinearInvariants.fit(embeddings, labels, num_classes, k, c.invariants)
        else:
            key = content_hash("ncis-cvpn", hashlib.sha256(embeddings.numpy().tobytes()).hexdigest(),
                               hashlib.sha256(labels.numpy().tobytes()).hexdigest(), num_classes, k, c.cvpn, ctx.seed,
                               CVPN_VERSION)

            def compute() -> dict[str, Any]:
                trained, history = train_cvpn(embeddings, labels, num_classes, k, c.cvpn, ctx.seed, ctx.device)
                return {"state_dict": {n: v.cpu() for n, v in trained.state_dict().items()}, "history": history}

            stored = ctx.cache.get_or_compute("ncis-cvpn", key, compute)
            model = CVPN(embeddings.shape[1], num_classes, k, c.cvpn)
            model.load_state_dict(stored["state_dict"])
            history = stored["history"]
            facts.update({"cvpn_invariant_mse": float(history["subset_invariant_mse"][history["best_epoch"]]),
                          "cvpn_best_epoch": int(history["best_epoch"]), "cvpn_final_loss": float(history["loss"][-1])})
        model.eval()
        facts["reconstruction_error"] = check_reconstruction(model, embeddings, labels, c.reconstruction_tolerance)
        return InvariantMap(model, facts)

    def sample_embeddings(self, embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Sampled:
        """(C, embeddings_per_class, D) outlier embeddings e' by the configured sampler, with its facts."""
        c, ctx = self.config, self.context
        generator = torch.Generator().manual_seed(ctx.seed)
        per_class = c.embeddings_per_class
        if c.sampling == "npos":  # Table 3 "NPOS": Dream-OOD's boundary sampling on the normalised embeddings
            counts = torch.bincount(labels, minlength=num_classes)
            norms = torch.stack([embeddings[labels == y].norm(dim=1).mean() for y in range(num_classes)])
            sampling = BoundarySampling(features_per_class=int(counts.min()), k=c.npos_k,
                                        boundary_count=c.npos_boundary_count,
                                        candidates_per_point=max(1, c.candidates_per_round // c.npos_boundary_count),
                                        kept_per_point=1, rounds=c.rounds, noise_std=c.npos_sigma)
            sampled = class_boundary_embeddings(embeddings, labels, num_classes, sampling, norms, ctx.seed)
            pick = torch.randperm(sampled.shape[1], generator=generator)[:per_class]
            return Sampled(sampled[:, pick], {})
        self.check_class_counts(labels, num_classes, embeddings.shape[1])
        fitted = self.invariant_map(embeddings, labels, num_classes)
        with torch.no_grad():
            v = fitted.model(embeddings, labels)
        dims = None if c.gaussian_dims == "all" else fitted.model.invariant_dims
        id_log_lik = class_log_likelihoods(v, labels, num_classes, c.covariance_ridge, dims, c.covariance)
        thresholds = None if c.keep_below_id_percentile is None else torch.stack(
            [torch.quantile(id_log_lik[labels == y], c.keep_below_id_percentile / 100) for y in range(num_classes)])
        samples, sample_labels, log_probs = low_likelihood_samples(
            v, labels, num_classes, c.covariance_ridge, c.rounds, c.candidates_per_round, c.kept_per_round, generator,
            dims=dims, covariance=c.covariance, thresholds=thresholds)
        used = torch.cat([torch.nonzero(sample_labels == y).flatten()[:per_class] for y in range(num_classes)])
        back = map_back(fitted.model, samples, sample_labels)
        return Sampled(torch.stack([back[sample_labels == y][:per_class] for y in range(num_classes)]), {
            **fitted.facts, "invariants": c.invariants, "invariant_rule": c.invariant_rule,
            "invariant_variance_percent": c.invariant_variance_percent, "covariance_ridge": c.covariance_ridge,
            "gaussian_dims": c.gaussian_dims, "covariance": c.covariance,
            "keep_below_id_percentile": c.keep_below_id_percentile,
            "kept_log_prob_mean": round(float(log_probs.mean()), 4),
            "log_likelihood": log_likelihood_facts(id_log_lik, labels, log_probs[used], sample_labels[used],
                                                   ctx.benchmark.spec.class_names)})

    def check_class_counts(self, labels: torch.Tensor, num_classes: int, dim: int) -> None:
        """Refuse, right after embedding and before the invariant map, a class with N_c <= D embeddings under the
        sample covariance: its covariance has rank <= N_c - 1 < D, so eq. 8's Gaussian is lambda I in the missing
        directions and "low likelihood" means "off the class's affine span", not the tail of the class."""
        if self.config.covariance != "sample":
            return
        counts = torch.bincount(labels, minlength=num_classes)
        c = int(counts.argmin())
        if int(counts[c]) <= dim:
            name = self.context.benchmark.spec.class_names[c]
            short = int((counts <= dim).sum())
            raise HarnessError(
                f"ncis: class {c} ({name}) has {int(counts[c])} embeddings, not more than the D={dim} embedding "
                f"dimensions ({short} of {num_classes} classes have N_c <= D), so its sample covariance (eq. 8) is "
                f"singular; embed more images per class (raise ncis.max_per_class, now {self.config.max_per_class}; "
                "none = all) or set ncis.covariance=shrinkage (Ledoit-Wolf)")

    def synthesize_outliers(self) -> Outliers:
        ctx, c = self.context, self.config
        spec = ctx.benchmark.spec
        backend = self.diffusion_backend()
        generation_names = self.prompt_names("ncis_generation")
        embedding_names = self.prompt_names("ncis_embedding")
        generation_tokens = [backend.class_token(name) for name in generation_names]  # a name without token fails
        embedding_tokens = [backend.class_token(name) for name in embedding_names]
        # e' replaces the token it was optimised as (the embedding name's first token, as the official code does)
        # where the generation prompt contains it; else the generation name's first token (official: no
        # substitution at all, so that class's "outliers" are plain ID images, e.g. CIFAR 'chimp' / 'chimpanzee')
        present = [e.token_id in g.token_ids for g, e in zip(generation_tokens, embedding_tokens, strict=True)]
        tokens = [e if ok else g for g, e, ok in zip(generation_tokens, embedding_tokens, present, strict=True)]
        embedded = self.embed()
        sampled = self.sample_embeddings(embedded.embeddings, embedded.labels, spec.num_classes)
        per_class = sampled.embeddings.shape[1]
        chosen = sampled.embeddings.reshape(-1, sampled.embeddings.shape[2])
        chosen = chosen.repeat_interleave(c.images_per_embedding, dim=0)
        keep = torch.arange(per_class * c.images_per_embedding) < c.outliers_per_class
        chosen = chosen[keep.repeat(spec.num_classes)]
        labels = torch.arange(spec.num_classes).repeat_interleave(c.outliers_per_class)
        seeds = ctx.seed * 10_000_000 + torch.arange(len(labels))
        paths = generate_images(backend, ctx.cache, generation_names, labels, seeds, c.generation,
                                c.prompt_template, chosen, desc="ncis outliers",
                                token_names=[t.name for t in tokens])
        images = to_channels_tensor(load_images(paths), spec.channels)
        facts = {"embedding": c.embedding, "sampling": c.sampling, "embedded_images": len(embedded.labels),
                 "embedded_per_class_min": int(torch.bincount(embedded.labels).min()), **embedded.facts,
                 "substituted_tokens": {name: t.token for name, t in zip(generation_names, tokens, strict=True)},
                 "multi_token_classes": sorted(t.name for t in generation_tokens if len(t.token_ids) > 1),
                 "missing_token_classes": sorted(g.name for g, ok in zip(generation_tokens, present, strict=True)
                                                 if not ok),
                 "outlier_embedding_norm_mean": round(float(chosen.norm(dim=1).mean()), 5), **sampled.facts}
        return Outliers("images", images, labels, directory=str(paths[0].parent), facts=facts)

    # --- stage 5: training with the energy regulariser ------------------------------------------------------------
    def train(self, outliers: Outliers | None) -> None:
        fingerprint = None if outliers is None else (
            outliers.fingerprint or ImageSet("outliers", outliers.data, outliers.labels).fingerprint)
        self.train_with_outlier_images("ncis", outliers, self.context.recipe(self.config.epochs,
                                                                             self.config.batch_size),
                                       key_parts=[self.config, fingerprint])

    # --- record ---------------------------------------------------------------------------------------------------
    def details(self) -> dict[str, Any]:
        """The training's facts (the synthesis' are the outliers' `facts`) and, with `baseline_msp`, the shared
        baseline classifier's confidence on the outliers."""
        c = self.config
        recipe = self.context.recipe(c.epochs, c.batch_size)
        out: dict[str, Any] = {"protocol": c.protocol, "outliers": len(self.outliers),
                               "outlier_resize": c.outlier_resize, "test_score": c.test_score, "phi": c.phi,
                               "classifier_epochs": recipe.epochs, "classifier_batch_size": recipe.batch_size,
                               **self.regulariser_details()}
        if c.baseline_msp:
            out["baseline_msp"] = self.baseline_msp_facts(self.outliers)
        return out

    def gallery_row_names(self, classes: list[int]) -> list[str]:
        return [self.prompt_names("ncis_generation")[k] for k in classes]
