"""What a method receives from the harness (`RunContext`): the benchmark's data, the device, the seed, the cache,
the run's classifier recipe, and the trained-classifier service with its cached features and logits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.cache import Cache
from harness.classifier.external import ExternalClassifier, ModelSpec
from harness.classifier.hooks import TrainingHook
from harness.classifier.models import Classifier, build_classifier
from harness.classifier.training import CLASSIFIER_VERSION, ClassifierConfig, extract_outputs, train_classifier
from harness.config import content_hash
from harness.data.benchmarks import Benchmark
from harness.data.sets import AnyImageSet
from harness.metrics import FprRule, Positive


@dataclass(frozen=True)
class ClassifierOutputs:
    """A classifier's penultimate `features` (N, D) and `logits` (N, C) on a set. `outputs["logits"]` reads a field
    by name, as plugins written against the mapping form of these outputs do."""

    features: np.ndarray
    logits: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in ("features", "logits"):
            raise KeyError(f"classifier outputs have 'features' and 'logits', not {name!r}")
        return getattr(self, name)


@dataclass(frozen=True)
class TrainedClassifier:
    """A classifier and the content key it was trained under, or a user's model and its weights' key (the key of its
    cached outputs)."""

    model: Classifier | ExternalClassifier
    key: str


def file_identity(path: str) -> list[Any]:
    """(path, size, mtime) of a file a stage reads, so replacing the file changes the stage's cache key."""
    if not path:
        return []
    stat = Path(path).expanduser().stat()
    return [str(Path(path).expanduser().resolve()), stat.st_size, stat.st_mtime_ns]


@dataclass(frozen=True)
class RunContext:
    benchmark: Benchmark
    seed: int
    device: torch.device
    cache: Cache
    classifier_config: ClassifierConfig
    fpr_positive: Positive = "id"           # the run's metric conventions, for metrics a method adds to `details`
    fpr_rule: FprRule = "recall-at-least"
    # `cache` is scoped by the method's code (a third-party plugin's distribution, version and source hash; the same
    # as `shared_cache` for a built-in); `shared_cache` is not, for the stages every method shares. None: `cache`.
    shared_cache: Cache | None = None
    # the run recipe's epochs over the spec's (a preset or `--set classifier.epochs`), for `recipe`
    epoch_ratio: Fraction = Fraction(1)
    model: ModelSpec | None = None  # the user's classifier, which replaces the baseline one (`--model`)

    @property
    def stage_cache(self) -> Cache:
        """The cache of the stages every method shares."""
        return self.shared_cache or self.cache

    def recipe(self, epochs: int | None = None, batch_size: int | None = None) -> ClassifierConfig:
        """The run's classifier recipe, with a method's own `epochs` (scaled by the run recipe's ratio to the spec's,
        e.g. under preset quick) and `batch_size` where given."""
        recipe = self.classifier_config
        if epochs is not None:
            recipe = replace(recipe, epochs=max(1, round(epochs * self.epoch_ratio)))
        if batch_size is not None:
            recipe = replace(recipe, batch_size=batch_size)
        return recipe

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
        cache = self.cache if hooks else self.stage_cache  # hooks are the method's code: keyed by it
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
        # a plugin's hooked classifier is its code's: its outputs are keyed by that code too (built-ins have no scope)
        method_scope = self.cache.scope[len(self.stage_cache.scope):] if hooks else ()
        return TrainedClassifier(model.to(self.device).eval(),
                                 content_hash(key, *method_scope) if method_scope else key)

    def baseline_classifier(self) -> TrainedClassifier:
        """The benchmark's plain cross-entropy classifier, shared by every post-hoc method (cached), or the user's
        model when the run has one."""
        if self.model is not None:
            return TrainedClassifier(self.model.classifier.to(self.device).eval(), self.model.key)
        return self.train_classifier("baseline")

    def outputs(self, classifier: TrainedClassifier, images: AnyImageSet) -> ClassifierOutputs:
        """Cached penultimate features and logits of `classifier` on `images`."""
        key = content_hash(classifier.key, images.fingerprint, CLASSIFIER_VERSION)
        stored = self.stage_cache.get_or_compute(
            "outputs", key,
            lambda: extract_outputs(classifier.model, images, self.device, self.classifier_config.eval_batch_size,
                                    desc=f"features {images.name}", precision=self.classifier_config.precision))
        return ClassifierOutputs(stored["features"], stored["logits"])
