"""NPOS: non-parametric outlier synthesis (Tao et al., ICLR 2023).

During classifier training, per-class FIFO queues keep the last `queue_size` penultimate features. From epoch
`start_epoch` on, each step synthesises outliers around every class's boundary (components.boundary, batched over
classes): the `boundary_count` queue points with the largest distance to their k-th neighbour (normalised
features), `points_per_class` of them picked at random, `candidates_per_point` Gaussian candidates
x + noise_std * N(0, I) each, and the `kept_per_point` candidates per point with the largest k-NN distance to the
class queue (`selection="paper"`) or the official code's mis-ordered choice (`selection="reference"`, effectively
random candidates; see harness/components/boundary.py). An outlier head Linear(D, 128)-ReLU-Linear(128, 1) is
trained with binary cross-entropy (ID features 1, synthetic outliers 0), weight `head_weight`, through the ID
features into the backbone. Test score: -(distance to the `test_k`-th nearest L2-normalised training feature)
(FAISS, exact).

Representation objective (`objective`): `cider` (paper default, Sec. 4): CIDER's dispersion + compactness losses
on a 128-d projection over two augmented views per image (`methods.npos.cider`), `fc` trained as a linear probe on
detached features for the reported ID accuracy; `ce`: plain cross-entropy of the classifier (one view).

Departures from the official code (deeplearning-wisc/npos, training_from_scratch/train_CIFAR100.py + losses.py,
script train_npos_cifar100.sh): the run's classifier recipe (e.g. CIFAR-100: 100 epochs, lr 0.1, batch 160)
replaces the official 500 epochs, lr 0.5, batch 256, wd 1e-4 (set them with --set classifier.*); the head shares
the classifier's learning rate (official: 0.1x); the official `fc` is in no loss (its ID accuracy is meaningless),
here it is a probe; prototypes start at zero, not from a pass over the test loader; the queue is not reset to
zeros at every epoch (an official oddity that feeds zero rows to the normaliser); boundary points are picked with
the run's seeded generator. `protocol=reference` sets the official candidate selection and the official
compactness scale temperature / base_temperature = 0.1 / 0.07.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.classifier.hooks import StepBatch, TrainingHook
from harness.classifier.models import Classifier
from harness.components.boundary import BoundarySampling, Selection
from harness.components.feature_queues import ClassFeatureQueues
from harness.components.regularizers import DelayedRegulariserMethod, check_start_settings
from harness.components.scores import KNNScorer
from harness.config import Protocol
from harness.contract import MethodInfo, Outliers
from harness.data.sets import ImageSet
from harness.errors import HarnessError
from methods.npos.cider import CIDERLoss


@dataclass(frozen=True)
class NPOSConfig:
    """Paper defaults for CIFAR-100 (methods.md: queues of 1,000, k 300, 200 boundary points, 2 picked, 600
    candidates per point, 200 kept, noise 0.1, outlier weight 0.1, from epoch 200 of 500; CIDER losses with
    weights 0.5 / 1.0, temperature 0.1, prototype momentum 0.5, 128-d projection)."""

    queue_size: int = 1000
    k: int = 300
    boundary_count: int = 200
    points_per_class: int = 2
    candidates_per_point: int = 600
    kept_per_point: int = 200
    noise_std: float = 0.1
    selection: Selection = "paper"
    start_epoch: int | None = None  # explicit first epoch; None = start_fraction of the classifier's epochs
    start_fraction: float = 0.4     # start_epoch_KNN 200 of 500 epochs
    head_weight: float = 0.1
    head_hidden: int = 128
    test_k: int = 300
    objective: Literal["cider", "ce"] = "cider"
    projection_dim: int = 128
    cider_temperature: float = 0.1
    prototype_momentum: float = 0.5
    dispersion_weight: float = 0.5
    compactness_weight: float = 1.0
    protocol: Protocol = "paper"

    def __post_init__(self) -> None:
        self.sampling.check("queue_size")
        if min(self.head_hidden, self.test_k) < 1:
            raise ValueError("head_hidden and test_k must be >= 1")
        if self.noise_std <= 0:
            raise ValueError(f"noise_std={self.noise_std} must be > 0")
        if self.head_weight < 0:
            raise ValueError(f"head_weight={self.head_weight} is negative; use >= 0")
        check_start_settings(self.start_epoch, self.start_fraction)
        if self.projection_dim < 1 or self.cider_temperature <= 0 or not 0.0 <= self.prototype_momentum < 1.0:
            raise ValueError("projection_dim must be >= 1, cider_temperature > 0, prototype_momentum in [0, 1)")

    @property
    def sampling(self) -> BoundarySampling:
        """One training step's synthesis: one round on the full class queues."""
        return BoundarySampling(features_per_class=self.queue_size, k=self.k, boundary_count=self.boundary_count,
                                candidates_per_point=self.candidates_per_point, kept_per_point=self.kept_per_point,
                                rounds=1, noise_std=self.noise_std, selection=self.selection,
                                points_per_class=self.points_per_class)


class OutlierHeadLoss(TrainingHook):
    """weight * BCE(head(features), b): ID features b = 1, boundary outliers synthesised from the queues b = 0."""

    def __init__(self, queues: ClassFeatureQueues, feature_dim: int, config: NPOSConfig, start_epoch: int,
                 seed: int) -> None:
        self.queues = queues
        self.config = config
        self.start_epoch = start_epoch
        self.head = nn.Sequential(nn.Linear(feature_dim, config.head_hidden), nn.ReLU(),
                                  nn.Linear(config.head_hidden, 1))
        self.generator = torch.Generator().manual_seed(seed)

    def modules(self) -> list[nn.Module]:
        return [self.head]

    def synthesize(self) -> torch.Tensor:
        outliers = self.config.sampling.sample(self.queues.data, self.generator)
        return outliers.reshape(-1, outliers.shape[2])

    def loss(self, batch: StepBatch, model: Classifier) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        if batch.epoch < self.start_epoch or not self.queues.full:
            return None, {}
        outliers = self.synthesize()
        logits = self.head(torch.cat([batch.features, outliers])).squeeze(1)
        targets = torch.cat([torch.ones(len(batch.features)), torch.zeros(len(outliers))]).to(logits.device)
        term = F.binary_cross_entropy_with_logits(logits, targets)
        return self.config.head_weight * term, {"outlier_bce": term.detach()}


class NPOS(DelayedRegulariserMethod[NPOSConfig]):
    info = MethodInfo("npos", "Tao et al., ICLR 2023", "feature-synthesis",
                      "k-NN boundary outliers in penultimate space + outlier head; kNN test score")
    Config = NPOSConfig
    benchmark_defaults = {
        # embedded scale: ~400 training images per class, 12 epochs, 128-d features
        "mnist5k": {"queue_size": 200, "k": 50, "boundary_count": 40, "candidates_per_point": 200,
                    "kept_per_point": 20, "test_k": 50},
    }
    # official: KNN_dis_search_distance's mis-ordered reshape; CompLoss(temperature=0.1, base_temperature=0.07)
    smoke_settings = {"*": {"test_k": 5}}
    reference_settings = {"*": {"selection": "reference", "compactness_weight": 0.1 / 0.07}}

    def train(self, outliers: Outliers | None) -> None:
        spec, train_set = self.context.benchmark.spec, self.context.benchmark.train
        if self.config.test_k > len(train_set):
            raise HarnessError(f"npos.test_k={self.config.test_k} exceeds the {len(train_set)} training images; "
                               "lower npos.test_k")
        queues = ClassFeatureQueues(spec.num_classes, self.config.queue_size)
        feature_dim = self.context.new_classifier().feature_dim
        c = self.config
        head = OutlierHeadLoss(queues, feature_dim, c, self.start_epoch(), self.context.seed)
        hooks: list[TrainingHook] = [queues, head]
        if c.objective == "cider":
            hooks.append(CIDERLoss(spec.num_classes, feature_dim, c.projection_dim, c.cider_temperature,
                                   c.prototype_momentum, c.dispersion_weight, c.compactness_weight))
        self.classifier = self.context.train_classifier("npos", hooks=hooks, key_parts=[c])
        self.scorer = KNNScorer(self.config.test_k).fit(self.context.outputs(self.classifier, train_set).features)

    def score(self, images: ImageSet) -> np.ndarray:
        return self.scorer.score(self.context.outputs(self.classifier, images).features)

    def predict(self, images: ImageSet) -> np.ndarray:
        return self.context.outputs(self.classifier, images).logits.argmax(1)

    def details(self) -> dict[str, Any]:
        c = self.config
        accuracy = ("fc as a linear probe on detached penultimate features, trained with the CIDER losses"
                    if c.objective == "cider" else "fc trained end to end with cross-entropy")
        return {"selection": c.selection, "objective": c.objective, "start_epoch": self.start_epoch(),
                "id_accuracy_protocol": accuracy}
