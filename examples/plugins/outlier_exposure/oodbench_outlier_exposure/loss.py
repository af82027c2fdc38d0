"""The Outlier Exposure term as a `TrainingHook`: outlier images join each ID batch (one forward pass) and their
softmax is pulled towards the uniform distribution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from harness.classifier.hooks import StepBatch, TrainingHook
from harness.classifier.models import Classifier


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of softmax(logits) against the uniform distribution: -mean_k log softmax_k, averaged."""
    return -logits.log_softmax(dim=1).mean(dim=1).mean()


class OutlierExposureLoss(TrainingHook):
    """`weight` * CE(softmax(f(outliers)), uniform) added to the ID cross-entropy; `outlier_batch(batch)` gives the
    step's outlier images in [0, 1]. Records the term's mean per epoch (`history`)."""

    def __init__(self, outlier_batch: Callable[[StepBatch], torch.Tensor], weight: float) -> None:
        self.outlier_batch = outlier_batch
        self.weight = weight
        self.history: list[float] = []
        self._term_sum = 0.0
        self._steps = 0

    def extra_images(self, batch: StepBatch) -> torch.Tensor:
        return self.outlier_batch(batch)

    def loss(self, batch: StepBatch, model: Classifier) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        term = uniform_cross_entropy(batch.extra_logits)
        self._term_sum += float(term)
        self._steps += 1
        return self.weight * term, {"oe": term.detach()}

    def on_epoch_end(self, epoch: int) -> None:
        self.history.append(self._term_sum / max(self._steps, 1))
        self._term_sum, self._steps = 0.0, 0

    def training_record(self) -> dict[str, Any]:
        return {"uniform_ce_per_epoch": self.history}

    def load_training_record(self, record: dict[str, Any]) -> None:
        self.history = record["uniform_ce_per_epoch"]
