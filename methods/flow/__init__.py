"""Normalizing flow trained with synthetic outliers ("Correcting the Bias of Normalizing Flows by Synthetic
Outliers for Improving OOD Detection", anonymous, under review): dual likelihood loss, NLL / complexity scores.

A density detector: no classifier. `synthesize` loads real outliers for the `real` variant (the paper's RO
baseline) and nothing otherwise, because synthetic outliers are drawn afresh at load time in every batch (each
sample becomes an outlier with probability `outlier_prob`, Sec. 3.1); `train` fits the flow (cached by content
hash: `score` and `lipschitz_samples` are not part of the key, so scoring both ways trains once); `score` returns
-S_nll (eq. 4) or -S_comp (eq. 5) in bits/dim, higher = more in-distribution. The other score's metrics, the
compressor used, per-set bits/dim and complexity and the Table 4 Lipschitz estimate go to `details()`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from harness.components.flows import (
    Flow,
    FlowSpec,
    FlowTrainConfig,
    OutlierWeighting,
    bits_per_dim,
    lipschitz_estimate,
    log_prob_batched,
    scale_pixels,
    train_flow,
    unit_to_pixels,
)
from harness.config import Protocol, content_hash
from harness.contract import Method, MethodInfo, Outliers
from harness.data.sets import ImageSet
from harness.data.sources import get_source
from harness.errors import HarnessError
from harness.metrics import ood_metrics
from harness.records.plots import save_complexity_scatter
from methods.flow.outlier_synthesis import (
    SYNTHETIC_VARIANTS,
    SynthesisConfig,
    Variant,
    complexity_bits_per_dim,
    compressor_name,
    split_for_outliers,
    synthesize_outliers,
)

DATA_SCALING = "x = (v + u) / 256, u ~ U(0,1) in training and 0.5 at evaluation; log p in nats on [0,1]^D"
SCORE_ONLY_FIELDS = ("score", "lipschitz_samples")  # do not change the trained flow
FLOW_VERSION = 1  # training and scoring of the image flow (cache stages `flow`, `flow-loglik`, `complexity`)
SCORE_BATCH = 1000  # images read (and scored) at once: file-backed sets are never held in memory whole


@dataclass(frozen=True)
class FlowConfig:
    variant: Variant = "ccm+gaussian"  # mle | gaussian | ccm | ccm+gaussian | real (paper Tables 2-3)
    score: Literal["nll", "complexity"] = "nll"  # primary score: eq. 4 or eq. 5; the other goes to details
    outlier_prob: float = 0.5  # paper: 0.5 per sample at load time
    alpha: float = 1.0  # CutMix / MixUp Beta(alpha, alpha); paper 1.0
    blur_radius: float = 1.0  # Gaussian blur std in pixels (PIL radius); paper 1
    real_set: str = ""  # variant=real: a data source name (not a test OOD set of the run)
    real_fraction: float = 0.1  # variant=real: real outliers as a fraction of the ID training set (paper RO: 10%)
    blocks: int = 8  # AllInOneBlocks
    hidden: int = 128  # channels of the two 3x3 convs of each subnet (not given in the paper)
    # Haar downsampling before the blocks: None = only where needed, i.e. 1-channel images (an affine coupling
    # splits channels, and 1 channel cannot be split; Haar makes 4). The paper has the 8 AllInOneBlocks only.
    haar: bool | None = None
    epochs: int = 500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5
    lipschitz_samples: int = 1000  # Table 4 estimate on this many ID test images; 0 skips it
    outlier_weighting: OutlierWeighting = "batch"  # Sec. 2.3: outlier_prob balances the terms (components.flows)
    protocol: Protocol = "paper"  # no official code is published: reference = paper (reference_settings empty)

    def __post_init__(self) -> None:
        self.synthesis()  # validates outlier_prob, alpha, blur_radius
        if self.variant == "real" and not self.real_set:
            raise ValueError("variant=real needs real_set=<data source name>, e.g. flow.real_set=shapes")
        if not 0.0 < self.real_fraction <= 1.0:
            raise ValueError(f"real_fraction={self.real_fraction} must lie in (0, 1]")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.lipschitz_samples < 0:
            raise ValueError("need epochs >= 1, batch_size >= 2, lr > 0, lipschitz_samples >= 0")

    def synthesis(self) -> SynthesisConfig:
        return SynthesisConfig(self.variant, self.outlier_prob, self.alpha, self.blur_radius)

    def train_config(self) -> FlowTrainConfig:
        return FlowTrainConfig(self.epochs, self.batch_size, self.lr, self.weight_decay,
                               outlier_weighting=self.outlier_weighting)


class NormalizingFlow(Method[FlowConfig]):
    info = MethodInfo("flow", "Correcting the Bias of Normalizing Flows by Synthetic Outliers for Improving OOD "
                      "Detection (anonymous, under review)", "density",
                      "FrEIA AllInOneBlock flow, dual loss NLL(ID) + softplus(log p) on CCM+blur outliers")
    Config = FlowConfig
    smoke_settings = {"*": {"epochs": 1, "blocks": 2, "hidden": 4, "lipschitz_samples": 2}}
    benchmark_defaults = {"mnist5k": {"hidden": 32, "epochs": 12}}

    def synthesize(self) -> Outliers | None:
        """Real outliers for variant=real (a seeded subset of `real_set`); synthetic ones are drawn per batch."""
        if self.config.variant != "real":
            return None
        spec = self.context.benchmark.spec
        test_sets = {e["name"] for e in spec.ood} | {e["source"] for e in spec.ood}
        if self.config.real_set in test_sets:
            raise HarnessError(f"flow.real_set={self.config.real_set} is a test OOD set of this run; training on it "
                               f"would leak test data: pick another source (not {', '.join(sorted(test_sets))})")
        count = max(1, round(self.config.real_fraction * len(self.context.benchmark.train)))
        images = get_source(self.config.real_set)(name=self.config.real_set, size=spec.image_size,
                                                  channels=spec.channels, count=count, seed=10_000 + self.context.seed)
        return Outliers("images", images.images, fingerprint=images.fingerprint,
                        facts={"source": self.config.real_set})

    # --- training ------------------------------------------------------------------------------------------------

    def _flow_spec(self) -> FlowSpec:
        shape = tuple(self.context.benchmark.train.gather(torch.tensor([0])).shape[1:])
        haar = shape[0] == 1 if self.config.haar is None else self.config.haar
        try:
            return FlowSpec(shape, self.config.blocks, self.config.hidden, haar)
        except ValueError as err:
            raise HarnessError(f"flow: {err}") from None

    def _batches(self, outliers: Outliers | None):
        """Load-time batches (x_id, x_outliers): seeded shuffling, dequantization and outlier draws; and the generator
        they draw from."""
        config, device = self.config, self.context.device
        pixels = self.context.benchmark.train  # in memory or file-backed (ImageNet scale): read per batch
        gen = torch.Generator().manual_seed(self.context.seed)
        synthesis = config.synthesis()

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
            order = torch.randperm(len(pixels), generator=gen)
            for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
                batch = pixels.gather(order[start:start + config.batch_size]).to(device)
                if config.variant == "mle":
                    yield scale_pixels(batch, gen), None
                    continue
                keep, turn = split_for_outliers(batch, config.outlier_prob, gen)
                if config.variant in SYNTHETIC_VARIANTS and len(turn):
                    # synthesise on [0, 1] pixels, round back to 8-bit values, then dequantise like ID data, so
                    # the flow cannot tell outliers apart by their missing dequantization noise
                    turn = unit_to_pixels(synthesize_outliers(turn.float() / 255, synthesis, gen)).round()
                elif len(turn):
                    pick = torch.randint(0, len(outliers.data), (len(turn),), generator=gen)
                    turn = outliers.data[pick].to(device)
                yield scale_pixels(keep, gen), scale_pixels(turn, gen)
        return batches, gen

    def train(self, outliers: Outliers | None) -> None:
        flow_spec = self._flow_spec()
        train_fields = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in SCORE_ONLY_FIELDS}
        self.key = content_hash("flow", self.context.benchmark.train.fingerprint, self.context.seed, train_fields,
                                DATA_SCALING, outliers.fingerprint if outliers else None, FLOW_VERSION)

        def compute() -> dict[str, Any]:
            torch.manual_seed(self.context.seed)
            flow = Flow(flow_spec).to(self.context.device)
            start = time.perf_counter()
            batches, generator = self._batches(outliers)
            history = train_flow(flow, batches, self.config.train_config(),
                                 desc=f"flow {self.config.variant} (seed {self.context.seed})", checkpoint=checkpoint,
                                 generator=generator)
            return {**flow.checkpoint(), "history": history, "train_seconds": time.perf_counter() - start}

        checkpoint = self.context.cache.path("checkpoints", f"flow-{self.key}")
        stored = self.context.cache.get_or_compute("flow", self.key, compute)
        checkpoint.unlink(missing_ok=True)
        self.flow = Flow.from_checkpoint(stored).to(self.context.device)
        self.history, self.train_seconds = stored["history"], stored["train_seconds"]

    # --- scores --------------------------------------------------------------------------------------------------

    def _check_channels(self, images: ImageSet) -> None:
        shape = tuple(images.gather(torch.tensor([0])).shape[1:])
        if shape != self.flow.spec.input_shape:
            raise HarnessError(f"flow was built for images shaped {self.flow.spec.input_shape} but {images.name} has "
                               f"{shape}; convert the set to the benchmark's channels/size")

    def bits_per_dim(self, images: ImageSet) -> np.ndarray:
        """Cached NLL in bits/dim per image (eq. 4 in bits/dim, centre dequantization)."""
        self._check_channels(images)
        key = content_hash(self.key, images.fingerprint)
        log_p = self.context.cache.get_or_compute(
            "flow-loglik", key, lambda: np.concatenate([log_prob_batched(self.flow, scale_pixels(batch))
                                                        for batch in images.batches(SCORE_BATCH)]))
        return bits_per_dim(log_p, self.flow.spec.dims)

    def complexity(self, images: ImageSet) -> np.ndarray:
        """Cached C(x) in bits/dim (Definition 1) with the recorded compressor."""
        compressor = compressor_name()
        key = content_hash(compressor, images.fingerprint, FLOW_VERSION)
        return self.context.cache.get_or_compute("complexity", key,
                                                 lambda: np.concatenate([complexity_bits_per_dim(batch, compressor)
                                                                         for batch in images.batches(SCORE_BATCH)]))

    def scores(self, images: ImageSet, kind: str) -> np.ndarray:
        """-S_nll = -bpd (eq. 4) or -S_comp = C(x) - bpd (eq. 5); higher = more in-distribution."""
        bpd = self.bits_per_dim(images)
        return -bpd if kind == "nll" else self.complexity(images) - bpd

    def score(self, images: ImageSet) -> np.ndarray:
        return self.scores(images, self.config.score)

    def details(self) -> dict[str, Any]:
        ctx = self.context
        bench = ctx.benchmark
        other = "complexity" if self.config.score == "nll" else "nll"
        id_other = self.scores(bench.test, other)
        sets = {"ID": bench.test, **bench.ood}
        facts: dict[str, Any] = {
            "data_scaling": DATA_SCALING,
            "compressor": compressor_name(),
            # <cache dir>/flow/<key>.pt; `python -m methods.flow.figure lipschitz KEY`
            "flow_key": self.context.cache.entry_key(self.key),
            "final_train_loss": self.history[-1],
            "haar": self.flow.spec.haar,
            "train_seconds_uncached": round(self.train_seconds, 1),
            "mean_bits_per_dim": {n: float(self.bits_per_dim(s).mean()) for n, s in sets.items()},
            "mean_complexity_bits_per_dim": {n: float(self.complexity(s).mean()) for n, s in sets.items()},
            f"metrics_{other}": {n: ood_metrics(id_other, self.scores(s, other), ctx.fpr_positive, ctx.fpr_rule)
                                 for n, s in bench.ood.items()},
        }
        if self.config.lipschitz_samples:
            idx = np.random.default_rng(self.context.seed).permutation(len(bench.test))[:self.config.lipschitz_samples]
            sample = bench.test.gather(torch.from_numpy(np.sort(idx)))
            facts["lipschitz"] = lipschitz_estimate(self.flow, scale_pixels(sample))
        return facts

    def figures(self, directory: Path, stem: str) -> list[Path]:
        """`<stem>_complexity.png`: C(x) against the NLL per set (the paper's Fig. 3), where both scores read off."""
        sets = {"ID": self.context.benchmark.test, **self.context.benchmark.ood}
        path = directory / f"{stem}_complexity.png"
        save_complexity_scatter({n: self.complexity(s) for n, s in sets.items()},
                                {n: self.bits_per_dim(s) for n, s in sets.items()}, path,
                                f"flow {self.config.variant} on {self.context.benchmark.spec.name}, seed "
                                f"{self.context.seed}")
        return [path]
