"""MSP: maximum softmax probability of the baseline classifier (Hendrycks & Gimpel, ICLR 2017)."""

from dataclasses import dataclass

import numpy as np

from harness.components.scores import msp_score
from harness.context import ClassifierOutputs
from harness.contract import BaselineClassifierMethod, MethodInfo


@dataclass(frozen=True)
class MSPConfig:
    """MSP has no hyperparameters."""


class MSP(BaselineClassifierMethod[MSPConfig]):
    info = MethodInfo("msp", "Hendrycks & Gimpel, ICLR 2017", "post-hoc", "maximum softmax probability")
    Config = MSPConfig

    def score_outputs(self, outputs: ClassifierOutputs) -> np.ndarray:
        return msp_score(outputs.logits)
