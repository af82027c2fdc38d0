"""Class-conditional FIFO queues of penultimate features, filled during classifier training (VOS, NPOS).

Each class keeps its `size` most recent training features, detached from the graph, in one (C, size, D) tensor on
the training device. As a `TrainingHook`, the queues are filled from every step's ID features; list them before the
hook that samples from them, so a step samples from queues that already contain its own batch (as the official VOS
and NPOS loops do).
"""

from __future__ import annotations

import torch

from harness.classifier.hooks import StepBatch, TrainingHook
from harness.classifier.models import Classifier
from harness.errors import HarnessError


class ClassFeatureQueues(TrainingHook):
    """`size` most recent detached features per class; `full` once every class has `size` of them."""

    def __init__(self, num_classes: int, size: int) -> None:
        if size < 1:
            raise HarnessError(f"feature queue size {size} must be >= 1")
        self.num_classes = num_classes
        self.size = size
        self.data: torch.Tensor | None = None   # (C, size, D), allocated on the first push
        self.counts = torch.zeros(num_classes, dtype=torch.long)

    @property
    def full(self) -> bool:
        return bool((self.counts >= self.size).all())

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append `features` (N, D) to their classes' queues, dropping the oldest entries beyond `size`."""
        features = features.detach()
        if self.data is None:
            self.data = torch.zeros(self.num_classes, self.size, features.shape[1], dtype=features.dtype,
                                    device=features.device)
        for cls in labels.unique().tolist():
            incoming = features[labels == cls][-self.size:]
            n = len(incoming)
            # FIFO: shift the queue left by n and write the newest n at the end (also while filling up: the
            # valid entries are always the last `counts` rows).
            self.data[cls] = torch.cat([self.data[cls, n:], incoming])
            self.counts[cls] = min(self.size, int(self.counts[cls]) + n)

    def loss(self, batch: StepBatch, model: Classifier) -> tuple[None, dict]:
        self.push(batch.features, batch.labels)
        return None, {}
