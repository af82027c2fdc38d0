"""VOS: virtual outlier synthesis (Du et al., ICLR 2022), the classification variant of the official code.

During classifier training, per-class FIFO queues keep the last `queue_size` penultimate features. From epoch
`start_epoch` on (default: `start_fraction` 0.4 of the classifier's epochs, the official 40 of 100), each step fits
class-conditional Gaussians with the class means and ONE shared covariance Sigma = X^T X / |X| + eps I (X: every
queue centred on its class mean; paper eq. 1-2), draws `samples_per_class` samples per class and keeps the
`kept_per_class` with the lowest likelihood (eq. 3; "outside the epsilon-likelihood boundary").
The virtual outliers' logits fc(v) and the ID logits enter the energy regulariser with VOS's learnable weighted
logsumexp and phi (a nonlinear MLP in the paper, `mlp3`; official Linear(1, 2)), weight `beta` (the
official `loss_weight`, eq. 5). Test score: the plain energy logsumexp of the logits (official test script;
`test_score=phi` uses phi(E) instead).

Sampling detail: with a shared covariance, x = mu_c + L z (Sigma = L L^T) has log-likelihood
const - ||z||^2 / 2 under its class Gaussian, so the lowest-likelihood samples are the draws with the largest
||z||; only the kept draws are transformed. This is exact and avoids evaluating 10,000 x C densities per step.

Departures from the official code: queues are FIFO from the first step (the official code fills each class's
queue once, then shifts all of them); the classifier is the benchmark's (CIFAR-100: ResNet-34), not WRN-40-2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from harness.classifier.hooks import StepBatch, hook_seed
from harness.classifier.models import Classifier
from harness.components.feature_queues import ClassFeatureQueues
from harness.components.regularizers import (
    REGULARIZER_VERSION,
    DelayedRegulariserMethod,
    EnergyRegularizedMethod,
    EnergyRegularizer,
    PhiKind,
    check_start_settings,
)
from harness.config import Protocol
from harness.contract import MethodInfo, Outliers


@dataclass(frozen=True)
class VOSConfig:
    """Paper defaults (CIFAR: official train_virtual.py values where the paper gives none)."""

    queue_size: int = 1000          # --sample_number
    samples_per_class: int = 10000  # --sample_from
    kept_per_class: int = 1         # --select
    covariance_eps: float = 1e-4
    start_epoch: int | None = None  # explicit first epoch; None = start_fraction of the classifier's epochs
    start_fraction: float = 0.4     # --start_epoch 40 of 100 epochs
    beta: float = 0.1               # --loss_weight
    phi: PhiKind = "mlp3"           # paper: a nonlinear MLP (Dream-OOD eq. 7: "same architecture as VOS")
    weighted_energy: bool = True    # learnable weighted logsumexp (official `weight_energy`)
    test_score: Literal["energy", "phi"] = "energy"
    protocol: Protocol = "paper"

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} is negative; use beta >= 0")
        if min(self.queue_size, self.samples_per_class, self.kept_per_class) < 1:
            raise ValueError("queue_size, samples_per_class and kept_per_class must be >= 1")
        if self.queue_size < 2:
            raise ValueError(f"queue_size={self.queue_size} cannot estimate a covariance; use at least 2")
        if self.kept_per_class > self.samples_per_class:
            raise ValueError(f"kept_per_class={self.kept_per_class} exceeds samples_per_class="
                             f"{self.samples_per_class}")
        if self.covariance_eps <= 0:
            raise ValueError(f"covariance_eps={self.covariance_eps} must be > 0")
        check_start_settings(self.start_epoch, self.start_fraction)


def shared_gaussian(queues: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (C, D) and the shared covariance of the class-centred queues (C, N, D) plus eps I."""
    queues = queues.double()
    means = queues.mean(dim=1)
    centred = (queues - means[:, None]).reshape(-1, queues.shape[2])
    covariance = centred.T @ centred / len(centred)
    covariance += eps * torch.eye(queues.shape[2], dtype=covariance.dtype, device=covariance.device)
    return means, covariance


def virtual_outliers(queues: torch.Tensor, samples_per_class: int, kept_per_class: int, eps: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The `kept_per_class` lowest-likelihood of `samples_per_class` Gaussian draws per class: (C, kept, D).

    A draw is x = mu_c + L z with z ~ N(0, I) and Sigma = L L^T, and its log-likelihood is const - ||z||^2 / 2, so
    the kept draws are those with the largest ||z||. Since ||z||^2 ~ chi^2(D) independently of the direction
    z / ||z|| (uniform on the sphere), the squared norms of all draws are sampled directly and a direction is drawn
    only for the kept ones: the same distribution as drawing every sample in full, at O(samples) instead of
    O(samples x D) cost.
    """
    means, covariance = shared_gaussian(queues, eps)
    chol = torch.linalg.cholesky(covariance)
    classes, _, dim = queues.shape
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    squared_norms = torch.from_numpy(rng.chisquare(dim, size=(classes, samples_per_class)))
    largest = squared_norms.topk(kept_per_class, dim=1).values
    directions = torch.randn(classes, kept_per_class, dim, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=2, keepdim=True)
    kept = (largest.sqrt()[..., None] * directions).to(chol.device)
    return (means[:, None] + kept @ chol.T).to(queues.dtype)


class VOSSampler:
    """Feature-outlier source for `EnergyRegularizer`: virtual outliers from full class queues, else None."""

    def __init__(self, queues: ClassFeatureQueues, config: VOSConfig, seed: int) -> None:
        self.queues = queues
        self.config = config
        # a stream of its own: not torch's global one (the classifier's), nor the trainer's data-order generator
        self.generator = torch.Generator().manual_seed(hook_seed(seed, "vos-virtual-outliers"))

    def state_dict(self) -> dict[str, Any]:
        """Its sampling generator's state, for the regulariser's epoch checkpoints (`Stateful`; the queues are a
        hook of their own)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, batch: StepBatch, model: Classifier) -> torch.Tensor | None:
        if not self.queues.full:
            return None
        c = self.config
        outliers = virtual_outliers(self.queues.data, c.samples_per_class, c.kept_per_class, c.covariance_eps,
                                    self.generator)
        return outliers.reshape(-1, outliers.shape[2])


class VOS(DelayedRegulariserMethod[VOSConfig], EnergyRegularizedMethod[VOSConfig]):
    info = MethodInfo("vos", "Du et al., ICLR 2022", "feature-synthesis",
                      "Gaussian virtual outliers in penultimate space + energy regulariser")
    Config = VOSConfig
    benchmark_defaults = {
        # embedded scale: ~400 training images per class, 12 epochs, 128-d features
        "mnist5k": {"queue_size": 200},
    }
    reference_settings = {"*": {"phi": "linear"}}  # official train_virtual.py: logistic_regression = Linear(1, 2)

    def train(self, outliers: Outliers | None) -> None:
        num_classes = self.context.benchmark.spec.num_classes
        self.queues = ClassFeatureQueues(num_classes, self.config.queue_size)
        self.regularizer = EnergyRegularizer(
            num_classes, self.config.beta, self.config.phi, self.config.weighted_energy, self.start_epoch(),
            self.config.test_score, outlier_features=VOSSampler(self.queues, self.config, self.context.seed),
            seed=self.context.seed)
        self.classifier = self.context.train_classifier("vos", hooks=[self.queues, self.regularizer],
                                                        key_parts=[self.config, REGULARIZER_VERSION])

    def details(self) -> dict[str, Any]:
        return {"test_score": self.config.test_score, "phi": self.config.phi, "start_epoch": self.start_epoch(),
                **self.regulariser_details()}

    def figures(self, directory: Path, stem: str) -> list[Path]:
        return self.regulariser_figure(directory, stem)

