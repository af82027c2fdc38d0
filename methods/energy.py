"""Energy score of the baseline classifier (Liu et al., NeurIPS 2020): T * logsumexp(logits / T)."""

from dataclasses import dataclass

import numpy as np

from harness.components.scores import energy_score
from harness.context import ClassifierOutputs
from harness.contract import BaselineClassifierMethod, MethodInfo


@dataclass(frozen=True)
class EnergyConfig:
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {self.temperature})")


class Energy(BaselineClassifierMethod[EnergyConfig]):
    info = MethodInfo("energy", "Liu et al., NeurIPS 2020", "post-hoc", "negative free energy of the logits")
    Config = EnergyConfig

    def score_outputs(self, outputs: ClassifierOutputs) -> np.ndarray:
        return energy_score(outputs.logits, self.config.temperature)
