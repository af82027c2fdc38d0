"""The method contract: `synthesize -> train -> score`, and method metadata.

A method is a subclass of `Method` with class attributes (`info`, `Config`, optionally `benchmark_defaults`,
`reference_settings`, `smoke_settings`, `modalities`) and three stages:

- `synthesize()` returns outliers (`Outliers` of pixel images or feature vectors) or None for post-hoc methods;
- `train(outliers)` produces the detector: a regularised classifier, or fitted statistics on the shared baseline
  classifier, or a density model;
- `score(images)` returns one finite float per item, **higher = more in-distribution**.

Everything a method needs from the harness comes through `self.context` (`harness.context.RunContext`): the
benchmark's data, the device, the seed, the cache, and the shared baseline classifier with its cached outputs.
This module imports no harness service.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from harness.classifier.training import ClassifierConfig
    from harness.context import ClassifierOutputs, RunContext, TrainedClassifier
    from harness.data.sets import AnyImageSet

MethodKind = Literal["post-hoc", "feature-synthesis", "pixel-synthesis", "density"]
ConfigT = TypeVar("ConfigT")


@dataclass(frozen=True)
class MethodInfo:
    """One-line metadata shown by `harness list` and stored in every record."""

    name: str
    paper: str
    kind: MethodKind
    summary: str = ""


@dataclass
class Outliers:
    """Synthesised outliers: `images` (N, C, H, W) in [0, 1] or uint8, or `features` (N, D); `labels` are the ID
    class each outlier was synthesised from, when there is one. `fingerprint` is a content hash of the outliers
    (what a classifier trained on them is keyed by), `directory` where they were read from or written to, and
    `facts` what the synthesis stage reports: the runner writes them into the record's `details`."""

    kind: Literal["images", "features"]
    data: torch.Tensor
    labels: torch.Tensor | None = None
    fingerprint: str | None = None
    directory: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.data)


class Method(ABC, Generic[ConfigT]):
    """Base class of every OOD detection method (see module docstring)."""

    info: ClassVar[MethodInfo]
    Config: type[ConfigT]  # the dataclass of the method's settings; `self.config` is one
    # The benchmark modalities (`BenchmarkSpec.modality`) the method works on; `plan` refuses any other in one line.
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    benchmark_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # The official code's values of the fields where it departs from the paper, applied together by
    # `protocol=reference` (a config field of type `harness.config.Protocol`): key "*" for every benchmark, a
    # benchmark name for that benchmark only (applied after "*").
    reference_settings: ClassVar[dict[str, dict[str, Any]]] = {}
    # Settings that shrink a run to seconds on a few images per class, for smoke tests (whether a run completes,
    # never its numbers): key "*" for every benchmark, a benchmark name for that benchmark only (applied after "*").
    smoke_settings: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: ConfigT, context: RunContext) -> None:
        self.config = config
        self.context = context

    @classmethod
    def check_config(cls, config: ConfigT, classifier: ClassifierConfig) -> None:
        """Validate the method config against the run's classifier recipe before any work (raise HarnessError),
        e.g. a regulariser start epoch beyond the classifier's epochs. Nothing to check by default."""

    def synthesize(self) -> Outliers | None:
        """Produce outliers; post-hoc methods produce none."""
        return None

    @abstractmethod
    def train(self, outliers: Outliers | None) -> None:
        """Fit the detector (classifier, statistics or density model)."""

    @abstractmethod
    def score(self, images: AnyImageSet) -> np.ndarray:
        """One float per image; higher means more in-distribution."""

    def predict(self, images: AnyImageSet) -> np.ndarray | None:
        """Predicted ID class per image, for ID accuracy; None for detectors without a classifier."""
        return None

    def details(self) -> dict[str, Any]:
        """Extra facts to store in the record (e.g. which reference-code options ran, thresholds fitted)."""
        return {}

    def figures(self, directory: Path, stem: str) -> list[Path]:
        """Write the method's own PNG figures (e.g. a gallery of its outliers) into `directory`, file names
        starting with `stem`; the runner lists them in the record and the leaderboard links them. None by default."""
        return []


class BaselineClassifierMethod(Method[ConfigT]):
    """A post-hoc method on the shared baseline classifier: `train` fits statistics on its training outputs,
    `score_outputs` maps cached features/logits to scores."""

    classifier: TrainedClassifier

    def train(self, outliers: Outliers | None) -> None:
        self.classifier = self.context.baseline_classifier()
        self.fit(self.context.outputs(self.classifier, self.context.benchmark.train))

    def fit(self, train_outputs: ClassifierOutputs) -> None:
        """Fit statistics on ID training features/logits; nothing by default."""

    @abstractmethod
    def score_outputs(self, outputs: ClassifierOutputs) -> np.ndarray:
        """Scores from precomputed `outputs.features` and `outputs.logits`."""

    def score(self, images: AnyImageSet) -> np.ndarray:
        return self.score_outputs(self.context.outputs(self.classifier, images))

    def predict(self, images: AnyImageSet) -> np.ndarray:
        return self.context.outputs(self.classifier, images).logits.argmax(1)
