"""ReAct: rectified activations (Sun et al., NeurIPS 2021), then the energy score."""

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.components.scores import ReActScorer
from harness.context import ClassifierOutputs
from harness.contract import BaselineClassifierMethod, MethodInfo


@dataclass(frozen=True)
class ReActConfig:
    percentile: float = 90.0  # clip threshold: this percentile of ID training activations


class ReAct(BaselineClassifierMethod[ReActConfig]):
    info = MethodInfo("react", "Sun et al., NeurIPS 2021", "post-hoc",
                      "energy after clipping penultimate activations at an ID percentile")
    Config = ReActConfig

    def fit(self, train_outputs: ClassifierOutputs) -> None:
        fc = self.classifier.model.fc
        self.scorer = ReActScorer(self.config.percentile).fit(
            train_outputs.features, fc.weight.detach().cpu().numpy(), fc.bias.detach().cpu().numpy())

    def score_outputs(self, outputs: ClassifierOutputs) -> np.ndarray:
        return self.scorer.score(outputs.features)

    def details(self) -> dict[str, Any]:
        return {"threshold": self.scorer.threshold, "threshold_source": "ID training features"}
