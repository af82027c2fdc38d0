"""Max logit (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022): the
largest logit of the shared baseline classifier; higher = more in-distribution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.context import ClassifierOutputs
from harness.contract import BaselineClassifierMethod, MethodInfo


@dataclass(frozen=True)
class MaxLogitConfig:
    top_k: int = 1  # score = mean of the k largest logits; 1 is the paper's max logit

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be >= 1")


class MaxLogit(BaselineClassifierMethod[MaxLogitConfig]):
    info = MethodInfo("maxlogit", "Hendrycks et al., ICML 2022", "post-hoc", "largest logit of the baseline classifier")
    Config = MaxLogitConfig

    def fit(self, train_outputs: ClassifierOutputs) -> None:
        self.train_mean_score = float(self.score_outputs(train_outputs).mean())

    def score_outputs(self, outputs: ClassifierOutputs) -> np.ndarray:
        return np.sort(outputs.logits, axis=1)[:, -self.config.top_k:].mean(axis=1)

    def details(self) -> dict[str, Any]:
        return {"train_mean_score": self.train_mean_score}
