"""The method contract: `synthesize -> train -> score`, the run context each method receives, and method metadata.

A method is a subclass of `Method` with three class attributes (`info`, `Config`, optionally `benchmark_defaults`)
and three stages:

- `synthesize()` returns outliers (`Outliers` of pixel images or feature vectors) or None for post-hoc methods;
- `train(outliers)` produces the detector: a regularised classifier, or fitted statistics on the shared baseline
  classifier, or a density model;
- `score(images)` returns one float per image, **higher = more in-distribution**.

Everything a method needs from the harness comes through `RunContext`: the benchmark's data, the device, the seed,
the cache, and the shared baseline classifier with its cached features/logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import torch

from harness.cache import Cache
from harness.classifier.hooks import TrainingHook
from harness.classifier.models import Classifier, build_classifier
from harness.classifier.training import CLASSIFIER_VERSION, ClassifierConfig, extract_outputs, train_classifier
from harness.config import content_hash
from harness.data.benchmarks import Benchmark
from harness.data.sets import AnyImageSet
from harness.metrics import FprRule, Positive

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
    """Synthesised outliers: `images` (N, C, H, W) in [0, 1] or uint8, or `features` (N, D); labels are the ID class
    each outlier was synthesised from, when there is one."""

    kind: Literal["images", "features"]
    data: torch.Tensor
    labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class TrainedClassifier:
    """A classifier and the content key it was trained under (the key of its cached outputs)."""

    model: Classifier
    key: str


def file_identity(path: str) -> list[Any]:
    """(path, size, mtime) of a file a stage reads, so replacing the file changes the stage's cache key."""
    if not path:
        return []
    stat = Path(path).expanduser().stat()
    return [str(Path(path).expanduser().resolve()), stat.st_size, stat.st_mtime_ns]


@dataclass
class RunContext:
    benchmark: Benchmark
    seed: int
    device: torch.device
    cache: Cache
    classifier_config: ClassifierConfig
    artifact_dir: Path | None = None
    fpr_positive: Positive = "id"           # the run's metric conventions, for metrics a method adds to `details`
    fpr_rule: FprRule = "recall-at-least"
    # `cache` is scoped by the method's code (a third-party plugin's distribution, version and source hash; the same
    # as `shared_cache` for a built-in); `shared_cache` is not, for the stages every method shares.
    shared_cache: Cache | None = None

    def __post_init__(self) -> None:
        if self.shared_cache is None:
            self.shared_cache = self.cache

    def new_classifier(self, config: ClassifierConfig | None = None) -> Classifier:
        spec, config = self.benchmark.spec, config or self.classifier_config
        return build_classifier(config.backbone, spec.channels, spec.num_classes, spec.mean, spec.std,
                                pretrained=config.pretrained)

    def train_classifier(self, purpose: str, config: ClassifierConfig | None = None,
                         hooks: Sequence[TrainingHook] = (), key_parts: Sequence[Any] = ()) -> TrainedClassifier:
        """Train (or load from the cache) a classifier on the ID training set.

        The cache key covers the benchmark data, the classifier recipe, the seed, `purpose` and `key_parts`, and,
        with hooks, the method's code (the classifier is stored through the method's own scoped `cache`): a method
        that trains with hooks must put everything its hooks depend on (its config, its outliers' fingerprint) in
        `key_parts`.
        """
        config = config or self.classifier_config
        key = content_hash(purpose, self.benchmark.train.fingerprint, self.benchmark.spec.mean,
                           self.benchmark.spec.std, config, self.seed, list(key_parts),
                           file_identity(config.pretrained), CLASSIFIER_VERSION)
        cache = self.cache if hooks else self.shared_cache  # hooks are the method's code: keyed by it
        checkpoint = cache.path("checkpoints", f"classifier-{key}")

        def compute() -> dict[str, Any]:
            torch.manual_seed(self.seed)  # initial weights come from the seed, not from whatever ran before
            model = train_classifier(self.new_classifier(config), self.benchmark.train, config, self.device,
                                     self.seed, hooks, desc=f"{purpose} (seed {self.seed})",
                                     failure_checkpoint=cache.root / "failed" / f"classifier-{purpose}-{key}.pt",
                                     checkpoint=checkpoint)
            return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                    "hooks": [[m.state_dict() for m in h.modules()] for h in hooks],
                    "records": [h.training_record() for h in hooks]}

        stored = cache.get_or_compute("classifier", key, compute)
        checkpoint.unlink(missing_ok=True)  # the finished weights are stored; the epoch checkpoint is done
        model = self.new_classifier(config)
        model.load_state_dict(stored["state_dict"])
        for hook, states in zip(hooks, stored["hooks"], strict=True):
            for module, state in zip(hook.modules(), states, strict=True):
                module.load_state_dict(state)
        for hook, record in zip(hooks, stored.get("records", [None] * len(hooks)), strict=True):
            if record is not None:
                hook.load_training_record(record)
        return TrainedClassifier(model.to(self.device).eval(), key)

    def baseline_classifier(self) -> TrainedClassifier:
        """The benchmark's plain cross-entropy classifier, shared by every post-hoc method (cached)."""
        return self.train_classifier("baseline")

    def outputs(self, classifier: TrainedClassifier, images: AnyImageSet) -> dict[str, np.ndarray]:
        """Cached penultimate `features` and `logits` of `classifier` on `images`."""
        key = content_hash(classifier.key, images.fingerprint, CLASSIFIER_VERSION)
        return self.shared_cache.get_or_compute(
            "outputs", key,
            lambda: extract_outputs(classifier.model, images, self.device, self.classifier_config.eval_batch_size,
                                    desc=f"features {images.name}", precision=self.classifier_config.precision))


class Method(ABC, Generic[ConfigT]):
    """Base class of every OOD detection method (see module docstring)."""

    info: ClassVar[MethodInfo]
    Config: ClassVar[type]
    # The benchmark modalities (`BenchmarkSpec.modality`) the method works on; `plan` refuses any other in one line.
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    benchmark_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # The official code's values of the fields where it departs from the paper, applied together by
    # `protocol=reference` (a config field of type `harness.config.Protocol`): key "*" for every benchmark, a
    # benchmark name for that benchmark only (applied after "*").
    reference_settings: ClassVar[dict[str, dict[str, Any]]] = {}

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

    def train(self, outliers: Outliers | None) -> None:
        self.classifier = self.context.baseline_classifier()
        self.fit(self.context.outputs(self.classifier, self.context.benchmark.train))

    def fit(self, train_outputs: dict[str, np.ndarray]) -> None:
        """Fit statistics on ID training features/logits; nothing by default."""

    @abstractmethod
    def score_outputs(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Scores from precomputed `features` and `logits`."""

    def score(self, images: AnyImageSet) -> np.ndarray:
        return self.score_outputs(self.context.outputs(self.classifier, images))

    def predict(self, images: AnyImageSet) -> np.ndarray:
        return self.context.outputs(self.classifier, images)["logits"].argmax(1)
