"""NPOS: non-parametric outlier synthesis (Tao et al., ICLR 2023).

During classifier training, per-class FIFO queues keep the last `queue_size` penultimate features. From epoch
`start_epoch` on, each step synthesises outliers around every class's boundary (harness.boundary, batched over
classes): the `boundary_count` queue points with the largest distance to their k-th neighbour (normalised
features), `points_per_class` of them picked at random, `candidates_per_point` Gaussian candidates
x + noise_std * N(0, I) each, and the `kept_per_point` candidates per point with the largest k-NN distance to the
class queue (`selection="paper"`) or the official code's mis-ordered choice (`selection="reference"`, effectively
random candidates; see harness/boundary.py). An outlier head Linear(D, 128)-ReLU-Linear(128, 1) is trained with
binary cross-entropy (ID features 1, synthetic outliers 0), weight `head_weight`, through the ID features into the
backbone. Test score: -(distance to the `test_k`-th nearest L2-normalised training feature) (FAISS, exact).

Departures from the official code (deeplearning-wisc/npos, CIFAR/train_KNN.py): the harness trainer's
cross-entropy replaces the CIDER dispersion/compactness losses on a 128-d projection; the head shares the
classifier's learning rate (official: 0.1x); the queue is not reset to zeros at every epoch (an official oddity
that feeds zero rows to the normaliser); boundary points are picked with the run's seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.boundary import Selection, sample_boundary_outliers
from harness.contract import Method, MethodInfo, Outliers
from harness.data import ImageSet
from harness.errors import HarnessError
from harness.feature_queues import ClassFeatureQueues
from harness.models import Classifier
from harness.scores import KNNScorer
from harness.training import ClassifierConfig, StepBatch, TrainingHook


@dataclass(frozen=True)
class NPOSConfig:
    """Paper defaults for CIFAR-100 (methods.md: queues of 1,000, k 300, 200 boundary points, 2 picked, 600
    candidates per point, 200 kept, noise 0.1, outlier weight 0.1, from epoch 200 of 500)."""

    queue_size: int = 1000
    k: int = 300
    boundary_count: int = 200
    points_per_class: int = 2
    candidates_per_point: int = 600
    kept_per_point: int = 200
    noise_std: float = 0.1
    selection: Selection = "paper"
    start_epoch: int = 200
    head_weight: float = 0.1
    head_hidden: int = 128
    test_k: int = 300

    def __post_init__(self) -> None:
        if min(self.queue_size, self.k, self.boundary_count, self.points_per_class, self.candidates_per_point,
               self.kept_per_point, self.head_hidden, self.test_k) < 1:
            raise ValueError("queue_size, k, counts, head_hidden and test_k must be >= 1")
        if self.k > self.queue_size:
            raise ValueError(f"k={self.k} neighbours need queues of at least {self.k} features but queue_size="
                             f"{self.queue_size}; raise npos.queue_size or lower npos.k")
        if self.boundary_count > self.queue_size:
            raise ValueError(f"boundary_count={self.boundary_count} exceeds queue_size={self.queue_size}")
        if self.points_per_class > self.boundary_count:
            raise ValueError(f"points_per_class={self.points_per_class} exceeds boundary_count="
                             f"{self.boundary_count}")
        if self.kept_per_point > self.candidates_per_point:
            raise ValueError(f"kept_per_point={self.kept_per_point} exceeds candidates_per_point="
                             f"{self.candidates_per_point}")
        if self.noise_std <= 0:
            raise ValueError(f"noise_std={self.noise_std} must be > 0")
        if self.head_weight < 0:
            raise ValueError(f"head_weight={self.head_weight} is negative; use >= 0")
        if self.start_epoch < 0:
            raise ValueError(f"start_epoch={self.start_epoch} must be >= 0")


class OutlierHeadLoss(TrainingHook):
    """weight * BCE(head(features), b): ID features b = 1, boundary outliers synthesised from the queues b = 0."""

    def __init__(self, queues: ClassFeatureQueues, feature_dim: int, config: NPOSConfig, seed: int) -> None:
        self.queues = queues
        self.config = config
        self.head = nn.Sequential(nn.Linear(feature_dim, config.head_hidden), nn.ReLU(),
                                  nn.Linear(config.head_hidden, 1))
        self.generator = torch.Generator().manual_seed(seed)

    def modules(self) -> list[nn.Module]:
        return [self.head]

    def synthesize(self) -> torch.Tensor:
        c = self.config
        outliers = sample_boundary_outliers(self.queues.data, c.k, c.boundary_count, c.points_per_class,
                                            c.candidates_per_point, c.kept_per_point, c.noise_std, c.selection,
                                            self.generator)
        return outliers.reshape(-1, outliers.shape[2])

    def loss(self, batch: StepBatch, model: Classifier) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        if batch.epoch < self.config.start_epoch or not self.queues.full:
            return None, {}
        outliers = self.synthesize()
        logits = self.head(torch.cat([batch.features, outliers])).squeeze(1)
        targets = torch.cat([torch.ones(len(batch.features)), torch.zeros(len(outliers))]).to(logits.device)
        term = F.binary_cross_entropy_with_logits(logits, targets)
        return self.config.head_weight * term, {"outlier_bce": term.detach()}


class NPOS(Method[NPOSConfig]):
    info = MethodInfo("npos", "Tao et al., ICLR 2023", "feature-synthesis",
                      "k-NN boundary outliers in penultimate space + outlier head; kNN test score")
    Config = NPOSConfig
    benchmark_defaults = {
        # embedded scale: ~400 training images per class, 12 epochs, 128-d features
        "mnist5k": {"queue_size": 200, "k": 50, "boundary_count": 40, "candidates_per_point": 200,
                    "kept_per_point": 20, "start_epoch": 4, "test_k": 50},
    }

    @classmethod
    def check_config(cls, config: NPOSConfig, classifier: ClassifierConfig) -> None:
        if config.start_epoch >= classifier.epochs:
            raise HarnessError(f"npos.start_epoch={config.start_epoch} is not before the classifier's "
                               f"{classifier.epochs} epochs, so no outlier would ever be used; lower npos.start_epoch")

    def train(self, outliers: Outliers | None) -> None:
        spec, train_set = self.context.benchmark.spec, self.context.benchmark.train
        if self.config.test_k > len(train_set):
            raise HarnessError(f"npos.test_k={self.config.test_k} exceeds the {len(train_set)} training images; "
                               "lower npos.test_k")
        queues = ClassFeatureQueues(spec.num_classes, self.config.queue_size)
        feature_dim = self.context.new_classifier().feature_dim
        head = OutlierHeadLoss(queues, feature_dim, self.config, self.context.seed)
        self.classifier = self.context.train_classifier("npos", hooks=[queues, head], key_parts=[self.config])
        self.scorer = KNNScorer(self.config.test_k).fit(self.context.outputs(self.classifier, train_set)["features"])

    def score(self, images: ImageSet) -> np.ndarray:
        return self.scorer.score(self.context.outputs(self.classifier, images)["features"])

    def predict(self, images: ImageSet) -> np.ndarray:
        return self.context.outputs(self.classifier, images)["logits"].argmax(1)

    def details(self) -> dict[str, Any]:
        return {"selection": self.config.selection}
