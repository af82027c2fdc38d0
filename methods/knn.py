"""Deep nearest neighbours (Sun et al., ICML 2022): -(k-th neighbour distance) among normalised ID features."""

from dataclasses import dataclass

import numpy as np

from harness.components.scores import KNNScorer
from harness.context import ClassifierOutputs
from harness.contract import BaselineClassifierMethod, MethodInfo


@dataclass(frozen=True)
class KNNConfig:
    k: int = 50  # paper: 50 for CIFAR-10, 200 for CIFAR-100, 1000 for ImageNet


class KNN(BaselineClassifierMethod[KNNConfig]):
    info = MethodInfo("knn", "Sun et al., ICML 2022", "post-hoc",
                      "FAISS exact k-th-neighbour distance on L2-normalised penultimate features")
    Config = KNNConfig
    benchmark_defaults = {"cifar100": {"k": 200}, "imagenet100": {"k": 1000}}
    smoke_settings = {"*": {"k": 5}}

    def fit(self, train_outputs: ClassifierOutputs) -> None:
        self.scorer = KNNScorer(self.config.k).fit(train_outputs.features)

    def score_outputs(self, outputs: ClassifierOutputs) -> np.ndarray:
        return self.scorer.score(outputs.features)
