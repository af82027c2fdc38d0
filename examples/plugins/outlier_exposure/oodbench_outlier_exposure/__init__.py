"""Outlier Exposure (Hendrycks et al., "Deep Anomaly Detection with Outlier Exposure", ICLR 2019) on outlier images
the plugin synthesises from the benchmark: the classifier is trained with

    L = CE(f(x), y) + weight * CE(softmax(f(x_out)), uniform)

and scored by its maximum softmax probability (as a log, rank-equivalent). Departures from the paper: outliers are
pixel-shuffled ID training images or uniform noise instead of 80 Million Tiny Images, and the classifier is trained
from scratch with the run's recipe instead of fine-tuned for 10 epochs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.classifier.hooks import hook_seed
from harness.components.outlier_images import OutlierImageSource
from harness.components.scores import msp_score
from harness.context import TrainedClassifier
from harness.contract import Method, MethodInfo, Outliers
from harness.data.sets import AnyImageSet, ImageSet
from harness.records.plots import save_image_grid
from oodbench_outlier_exposure.loss import OutlierExposureLoss
from oodbench_outlier_exposure.synthesis import Synthesis, synthesize_outliers

# Part of the trained classifier's cache key: bump it when training changes what it computes.
VERSION = 1


@dataclass(frozen=True)
class OEConfig:
    weight: float = 0.5                  # lambda, the paper's value for vision
    synthesis: Synthesis = "pixel-shuffle"
    count: int = 5000                    # outlier images synthesised per run
    per_step: int = 256                  # outliers appended to each training batch (paper: 2x the ID batch of 128)
    baseline_diagnostic: bool = True     # also measure the shared baseline classifier on the outliers (trains it)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight={self.weight} is negative; use weight >= 0")
        if min(self.count, self.per_step) < 1:
            raise ValueError("count and per_step must be >= 1")


def mean_max_softmax(logits: np.ndarray) -> float:
    return float(np.exp(msp_score(logits)).mean())


class OutlierExposure(Method[OEConfig]):
    info = MethodInfo("oe", "Hendrycks et al., ICLR 2019", "pixel-synthesis",
                      "uniform-softmax loss on synthesised outlier images (Outlier Exposure)")
    Config = OEConfig
    benchmark_defaults = {"mnist5k": {"count": 4000}}  # as many outliers as ID training images
    smoke_settings = {"*": {"count": 64, "per_step": 32}}

    classifier: TrainedClassifier

    def synthesize(self) -> Outliers:
        spec, c = self.context.benchmark.spec, self.config
        images = synthesize_outliers(self.context.benchmark.train, c.synthesis, c.count,
                                     (spec.channels, spec.image_size, spec.image_size), self.context.seed)
        fingerprint = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
        return Outliers("images", images, fingerprint=fingerprint, facts={"synthesis": c.synthesis})

    def train(self, outliers: Outliers | None) -> None:
        recipe = self.context.recipe()
        # per step `per_step` random outliers, augmented like the ID batch, from a generator of their own
        draws = OutlierImageSource(outliers.data, self.config.per_step, size=self.context.benchmark.spec.image_size,
                                   policy="bilinear", padding=recipe.crop_padding, hflip=recipe.hflip,
                                   seed=hook_seed(self.context.seed, "oe-draws"))
        self.loss = OutlierExposureLoss(draws, self.config.weight)
        self.classifier = self.context.train_classifier("oe", config=recipe, hooks=[self.loss],
                                                        key_parts=[self.config, outliers.fingerprint, VERSION])
        self.outliers = outliers

    def _logits(self, images: AnyImageSet, classifier: TrainedClassifier | None = None) -> np.ndarray:
        return self.context.outputs(classifier or self.classifier, images).logits

    def score(self, images: AnyImageSet) -> np.ndarray:
        return msp_score(self._logits(images))

    def predict(self, images: AnyImageSet) -> np.ndarray:
        return self._logits(images).argmax(axis=1)

    def details(self) -> dict[str, Any]:
        outlier_set = ImageSet("oe-outliers", self.outliers.data)
        msp = {"oe": mean_max_softmax(self._logits(outlier_set))}
        if self.config.baseline_diagnostic:
            msp["baseline"] = mean_max_softmax(self._logits(outlier_set, self.context.baseline_classifier()))
        return {"outliers": len(self.outliers), "outlier_mean_max_softmax": msp,
                "uniform_ce_per_epoch": self.loss.history}

    def figures(self, directory: Path, stem: str) -> list[Path]:
        path = directory / f"{stem}_outliers.png"
        save_image_grid(self.outliers.data[:32], path, rows=4, title=f"oe: {self.config.synthesis} outliers")
        return [path]
