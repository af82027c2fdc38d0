"""ViM: virtual-logit matching (Wang et al., CVPR 2022) on the baseline classifier."""

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.components.scores import ViMScorer
from harness.context import ClassifierOutputs
from harness.contract import BaselineClassifierMethod, MethodInfo


@dataclass(frozen=True)
class ViMConfig:
    dim: int | None = None  # principal-subspace size; None = official rule (1000 / 512 / half the feature dim)


class ViM(BaselineClassifierMethod[ViMConfig]):
    info = MethodInfo("vim", "Wang et al., CVPR 2022", "post-hoc",
                      "energy minus the scaled feature residual outside the principal subspace")
    Config = ViMConfig

    def fit(self, train_outputs: ClassifierOutputs) -> None:
        fc = self.classifier.model.fc
        self.scorer = ViMScorer(self.config.dim).fit(
            train_outputs.features, train_outputs.logits, fc.weight.detach().cpu().numpy(),
            fc.bias.detach().cpu().numpy())

    def score_outputs(self, outputs: ClassifierOutputs) -> np.ndarray:
        return self.scorer.score(outputs.features, outputs.logits)

    def details(self) -> dict[str, Any]:
        return {"dim": self.scorer.fitted_dim, "alpha": self.scorer.alpha}
