"""CIDER's hyperspherical losses (Ming et al., ICLR 2023), the representation objective NPOS trains with.

Penultimate features go through a projection head to `dim` (128) and are L2-normalised: z. Every class has a
prototype mu_c on the unit sphere, moved by each sample of the class in batch order as
mu_c <- normalize(m mu_c + (1 - m) z) (m = 0.5). Then

    L_dis  = (1/C) sum_i log( (1/(C-1)) sum_{j != i} exp(mu_i^T mu_j / t) )      (dispersion: prototypes apart)
    L_comp = -(1/N) sum_n log( exp(z_n^T mu_{y_n} / t) / sum_j exp(z_n^T mu_j / t) )  (compactness: z to its class)

with t = 0.1. As in the official NPOS/CIDER code, L_dis differentiates through the prototype updates of the
current batch and L_comp uses the updated prototypes detached. The hook asks the trainer for two augmented views
of every ID image (`views = 2`) and for the cross-entropy to train `fc` alone, as a linear probe on detached
features (`detach_classifier`): the encoder learns only from these losses (and the other hooks'), and the probe
gives the ID accuracy the records report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from harness.classifier.hooks import StepBatch, TrainingHook
from harness.classifier.models import Classifier


def update_prototypes(prototypes: torch.Tensor, z: torch.Tensor, labels: torch.Tensor,
                      momentum: float) -> torch.Tensor:
    """Sequential per-sample updates mu_y <- normalize(m mu_y + (1 - m) z) in batch order, differentiable in z.

    Updates of different classes commute, so the r-th sample of every class is applied in one vectorised round
    (as many rounds as the largest class count in the batch)."""
    classes = prototypes.shape[0]
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    counts = torch.bincount(labels, minlength=classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(labels), device=labels.device) - starts[sorted_labels]
    for r in range(int(counts.max()) if len(labels) else 0):
        pick = order[rank == r]
        rows = labels[pick]
        moved = F.normalize(momentum * prototypes[rows] + (1 - momentum) * z[pick], dim=1)
        prototypes = prototypes.index_put((rows,), moved)
    return prototypes


def dispersion_loss(prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over classes of the log mean exp(mu_i^T mu_j / t) over the other classes j != i."""
    classes = prototypes.shape[0]
    logits = prototypes @ prototypes.T / temperature
    others = ~torch.eye(classes, dtype=torch.bool, device=prototypes.device)
    return (torch.logsumexp(logits.masked_fill(~others, float("-inf")), dim=1) - math.log(classes - 1)).mean()


def compactness_loss(z: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Cross-entropy of z^T normalize(mu)^T / t against the labels."""
    return F.cross_entropy(z @ F.normalize(prototypes, dim=1).T / temperature, labels)


class CIDERLoss(TrainingHook):
    """dispersion_weight * L_dis + compactness_weight * L_comp on a projection head (module docstring)."""

    views = 2
    detach_classifier = True

    def __init__(self, num_classes: int, feature_dim: int, dim: int = 128, temperature: float = 0.1,
                 momentum: float = 0.5, dispersion_weight: float = 0.5, compactness_weight: float = 1.0) -> None:
        self.head = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, dim))
        self.state = _Prototypes(num_classes, dim)
        self.temperature = temperature
        self.momentum = momentum
        self.weights = (dispersion_weight, compactness_weight)

    def modules(self) -> Sequence[nn.Module]:
        return [self.head, self.state]

    def loss(self, batch: StepBatch, model: Classifier) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        z = F.normalize(self.head(batch.features), dim=1)
        prototypes = update_prototypes(self.state.prototypes.to(z.device), z, batch.labels, self.momentum)
        self.state.prototypes = prototypes.detach()
        dis = dispersion_loss(prototypes, self.temperature)
        comp = compactness_loss(z, prototypes.detach(), batch.labels, self.temperature)
        terms = {"dispersion": dis.detach(), "compactness": comp.detach()}
        return self.weights[0] * dis + self.weights[1] * comp, terms


class _Prototypes(nn.Module):
    """The class prototypes as a buffer, so they are cached with the trained model. They start at zero: a class's
    first sample sets its prototype (the official code initialises them from a pass over the test loader)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
