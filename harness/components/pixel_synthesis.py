"""The shared base of the pixel-space synthesis plugins (Dream-OOD, NCIS): outliers decoded by Stable Diffusion
from sampled conditioning embeddings, or read from a folder of pre-generated images (`outliers_dir`), then the
energy-regularised classifier of `EnergyRegularizedMethod`.

A plugin's config derives from `PixelSynthesisConfig` (the model, the decoding settings, the outlier folder and
the gallery; fields stay flat, so each is one `--set METHOD.FIELD`) and may redeclare a field to give its paper's
default. The plugin implements `synthesize_outliers` and `gallery_row_names`.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch

from harness.classifier.training import ClassifierConfig
from harness.components.outlier_images import (
    ResizePolicy,
    check_outlier_folder,
    load_outlier_folder,
    resize_outliers,
)
from harness.components.regularizers import EnergyRegularizedMethod, PhiOrientation
from harness.components.scores import msp_score
from harness.contract import Outliers
from harness.data.sets import AnyImageSet, ImageSet
from harness.diffusion.backend import (
    DiffusionBackend,
    GenerationConfig,
    Interpolation,
    load_backend,
    resolve_model_path,
)
from harness.diffusion.stage import check_template
from harness.paths import recorded_path
from harness.records.plots import save_image_grid


@dataclass(frozen=True)
class PixelSynthesisConfig:
    """What both pixel-synthesis methods set: the SD model, the decoding of sampled embeddings (SD v1.4 sizes by
    default), how outliers reach the ID resolution, an optional folder of ready outliers, and the gallery."""

    model: str = ""                       # local SD v1.4 diffusers directory ("" = $OODBENCH_SD_MODEL)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"   # generation precision
    outliers_dir: str = ""                # train on these pre-generated outlier images, skipping synthesis
    prompt_template: str = "A high-quality image of a {}"
    scheduler: Literal["pndm", "ddim"] = "ddim"
    steps: int = 50
    guidance_scale: float = 7.5
    generation_size: int | None = 512
    output_size: int | None = 256
    output_interpolation: Interpolation = "bilinear"
    generation_batch_size: int = 16
    outlier_resize: ResizePolicy = "random"
    # phi of the energy regulariser: "free" (the papers' MLP, either orientation can be learnt) or "anchored"
    # (monotone: a higher logsumexp always means more ID; harness.components.regularizers.MonotonePhi)
    phi_orientation: PhiOrientation = "free"
    gallery_classes: int = 6
    gallery_per_class: int = 8

    def __post_init__(self) -> None:
        if self.prompt_template.count("{}") != 1:
            raise ValueError(f"prompt_template {self.prompt_template!r} needs exactly one {{}} for the class name")
        self.generation  # noqa: B018  (validates steps, guidance, sizes, batch size)

    @property
    def generation(self) -> GenerationConfig:
        return GenerationConfig(self.scheduler, self.steps, self.guidance_scale, self.generation_size,
                                self.generation_size, output_size=self.output_size,
                                interpolation=self.output_interpolation, antialias=False,
                                batch_size=self.generation_batch_size)


ConfigT = TypeVar("ConfigT", bound=PixelSynthesisConfig)


class PixelSynthesisMethod(EnergyRegularizedMethod[ConfigT]):
    """`synthesize` reads `outliers_dir` when given, else calls `synthesize_outliers`; `figures` draws the gallery
    (one row per class, or rows in file order for an unlabelled folder)."""

    gallery_title: ClassVar[str]

    @classmethod
    def check_config(cls, config: ConfigT, classifier: ClassifierConfig) -> None:
        if config.outliers_dir:
            check_outlier_folder(config.outliers_dir, f"{cls.info.name}.outliers_dir")
            return
        check_template(config.prompt_template)
        cls.check_synthesis(config, resolve_model_path(config.model))  # a missing SD directory fails before work

    @classmethod
    def check_synthesis(cls, config: ConfigT, model_directory: Path) -> None:
        """Checks of a synthesising run beyond the prompt template and the model directory."""

    def diffusion_backend(self) -> DiffusionBackend:
        """The SD pipeline, loaded once per method instance."""
        if not hasattr(self, "backend"):
            self.backend = load_backend(self.config.model, self.context.device, self.config.dtype)
        return self.backend

    def synthesize(self) -> Outliers:
        c = self.config
        if c.outliers_dir:
            images, labels, fingerprint = load_outlier_folder(c.outliers_dir, self.context.benchmark.spec.channels)
            return Outliers("images", images, labels, fingerprint=fingerprint,
                            directory=str(Path(c.outliers_dir).expanduser()),
                            facts={"outliers_dir": recorded_path(c.outliers_dir), "outliers_fingerprint": fingerprint,
                                   "outliers_labelled": labels is not None})
        outliers = self.synthesize_outliers()
        outliers.facts = {"model_directory": recorded_path(self.backend.directory),
                          "model_fingerprint": self.backend.fingerprint, **outliers.facts}
        return outliers

    @abstractmethod
    def synthesize_outliers(self) -> Outliers:
        """Sample conditioning embeddings and decode them into labelled outlier images."""

    @abstractmethod
    def gallery_row_names(self, classes: list[int]) -> list[str]:
        """The row titles of the gallery for these class indices."""

    def baseline_msp_facts(self, outliers: Outliers) -> dict[str, Any]:
        """The shared baseline classifier's (`RunContext.baseline_classifier`, the very classifier and cache entry of
        msp/energy) maximum softmax probability on the outliers, brought to the ID size by bilinear resizing, vs on
        the ID test set: mean, median and the fraction above 0.95 (how confidently a plain classifier takes the
        outliers for ID images)."""
        ctx = self.context
        baseline = ctx.baseline_classifier()
        size = ctx.benchmark.spec.image_size
        images = outliers.data
        if images.dtype != torch.uint8:
            images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        if images.shape[-2:] != (size, size):
            resized = resize_outliers(images.float() / 255, size, "bilinear", torch.Generator())
            images = (resized.clamp(0, 1) * 255).round().to(torch.uint8)
        outlier_set = ImageSet(f"{self.info.name}-outliers", images.contiguous())

        def facts(image_set: AnyImageSet) -> dict[str, float]:
            msp = np.exp(msp_score(ctx.outputs(baseline, image_set).logits))  # msp_score is its log
            return {"mean": round(float(msp.mean()), 4), "median": round(float(np.median(msp)), 4),
                    "above_0.95": round(float((msp > 0.95).mean()), 4), "count": len(msp)}

        return {"outliers": facts(outlier_set), "id_test": facts(ctx.benchmark.test), "classifier": baseline.key}

    def figures(self, directory: Path, stem: str) -> list[Path]:
        """A gallery: up to `gallery_classes` rows x `gallery_per_class` outliers (Dream-OOD Fig. 1/4, NCIS Fig. 4),
        and the regulariser's per-epoch curves (`<stem>_regulariser.png`)."""
        c = self.config
        data, labels = self.outliers.data, self.outliers.labels
        if labels is None:  # an unlabelled outliers_dir: rows in file order
            labels = torch.arange(len(data)) // c.gallery_per_class
        classes = torch.unique(labels).tolist()[:c.gallery_classes]
        rows = [data[labels == k][:c.gallery_per_class] for k in classes]
        per_row = min(len(r) for r in rows)
        names = None if c.outliers_dir else self.gallery_row_names(classes)
        path = directory / f"{stem}_outliers.png"
        save_image_grid(torch.cat([r[:per_row] for r in rows]), path, rows=len(classes), row_titles=names,
                        title=self.gallery_title + (f" from {Path(c.outliers_dir).name}/" if c.outliers_dir else ""))
        return [path, *self.regulariser_figure(directory, stem)]
