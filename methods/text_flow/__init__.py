"""Normalizing flow on text embeddings, with or without synthetic text outliers (the flow paper, Sec. 2.2.2, 3.3,
Table 6).

A density detector on a text benchmark (`modality: text`): the texts are embedded by the benchmark's encoder (spaCy
md vectors for `movie_reviews`, ALBERT Base v2 from a local directory for `imdb`; cached, shared by both variants),
scaled per dimension to the ID training set's bounding box, and modelled by the image modality's FrEIA flow with
fully connected subnetworks of the embedding's width (Sec. 3.3: 768 for ALBERT). `variant=synthetic` ("with
synthetic outliers") trains it with the dual softplus loss (eq. 2 + 3) on the embeddings of the synthetic outliers
of the training texts (Sec. 2.2.2: sentences of at most 20 tokens, first WordNet synonyms; cached per text), each
training sample replaced by its outlier with probability `outlier_prob` at load time, as for images; `variant=mle`
("without") by maximum likelihood only. Score: the likelihood score log p(x) (eq. 4 negated), higher = more ID.
`details()` records C(X) (gzip bits per byte) of every set and of the synthesized ID set, the dropped texts, the
encoder and its pooling.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from harness.components.flows import Flow, FlowSpec, FlowTrainConfig, log_prob_batched, train_flow
from harness.config import content_hash
from harness.contract import Method, MethodInfo, Outliers
from harness.data.text import TextSet
from harness.errors import HarnessError
from methods.text_flow.complexity import text_complexity
from methods.text_flow.encoders import AlbertConfig
from methods.text_flow.outliers import TextOutlierConfig
from methods.text_flow.stages import EncoderSpec, EncoderStage, outliers_cached

TEXT_FLOW_VERSION = 1  # training of the text flow (cache stage `text-flow`)

FEATURE_SCALING = {
    "unit-box": "x = (e - min) / (max - min) per dimension, min/max over the ID training embeddings, so log p = 0 "
                "(the softplus margin of eq. 3) is the uniform density on the training box, as [0,1]^D for pixels",
    "standardize": "x = (e - mean) / std per dimension over the ID training embeddings",
}
SCORE_ONLY_FIELDS: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextFlowConfig:
    variant: Literal["synthetic", "mle"] = "synthetic"  # Table 6: with / without synthetic outliers
    outlier_prob: float = 0.5  # each training sample becomes its outlier with this probability (images: Sec. 3.1)
    max_length: int = 20  # Sec. 3.3: longest kept sentence, in tokens
    blocks: int = 8  # AllInOneBlocks, as the image flow (Sec. 3.1)
    hidden: int = 0  # FC subnet width; 0 = the embedding width (Sec. 3.3: 768 for ALBERT Base v2)
    subnet_layers: int = 2  # linear layers per subnet (the image subnet's two convs, Sec. 3.1)
    epochs: int = 100  # not given for text (images: 500); see docs/text_flow.md
    batch_size: int = 128  # Sec. 3.1
    lr: float = 1e-3  # Sec. 3.1
    weight_decay: float = 1e-5  # Sec. 3.1
    feature_scaling: Literal["unit-box", "standardize"] = "unit-box"
    encoder: Literal["spec", "spacy-md", "albert"] = "spec"  # spec = the benchmark's text_encoder
    encoder_path: str = ""  # ALBERT directory; "" = the spec's (under the data root)
    pooling: Literal["spec", "mean", "pooler"] = "spec"  # ALBERT pooling; spec = the benchmark's (default mean)

    def __post_init__(self) -> None:
        if not 0.0 < self.outlier_prob < 1.0:
            raise ValueError(f"outlier_prob={self.outlier_prob} must lie in (0, 1)")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.hidden < 0 or self.max_length < 1:
            raise ValueError("need epochs >= 1, batch_size >= 2, lr > 0, hidden >= 0 and max_length >= 1")

    def outlier_config(self) -> TextOutlierConfig:
        return TextOutlierConfig(max_length=self.max_length)

    def train_config(self) -> FlowTrainConfig:
        return FlowTrainConfig(self.epochs, self.batch_size, self.lr, self.weight_decay)


class TextFlow(Method[TextFlowConfig]):
    info = MethodInfo("text_flow", "Correcting the Bias of Normalizing Flows by Synthetic Outliers for Improving OOD "
                      "Detection (anonymous, under review), text modality", "density",
                      "FrEIA flow with FC subnets on text embeddings, dual softplus loss on synthetic text outliers")
    Config = TextFlowConfig
    modalities = ("text",)

    # --- set-up --------------------------------------------------------------------------------------------------

    def encoder_spec(self) -> EncoderSpec:
        spec = dict(self.context.benchmark.provenance.get("text_encoder") or {"name": "spacy-md"})
        name = spec.get("name", "spacy-md") if self.config.encoder == "spec" else self.config.encoder
        spec_path = spec.get("path") or "" if name == spec.get("name") else ""
        path = self.config.encoder_path or spec_path
        pooling = spec.get("pooling", "mean") if self.config.pooling == "spec" else self.config.pooling
        try:
            albert = AlbertConfig(pooling, int(spec.get("max_length", 512)), int(spec.get("batch_size", 16)))
        except ValueError as err:
            raise HarnessError(f"text encoder of {self.context.benchmark.spec.name}: {err}") from None
        return EncoderSpec(name, str(path), albert)

    @classmethod
    def check_config(cls, config: TextFlowConfig, classifier: Any) -> None:
        if config.encoder_path:  # the spec's directory is checked by `data check` (plan) instead
            EncoderSpec("albert", config.encoder_path).check()

    def _stage(self) -> EncoderStage:
        if not hasattr(self, "_encoder_stage"):
            spec = self.encoder_spec()
            spec.check()
            self._encoder_stage = EncoderStage(spec, self.context.cache, self.context.device)
        return self._encoder_stage

    def synthesized(self) -> tuple[TextSet, Any]:
        """The synthetic outliers of the ID training texts (cached per text) and their synthesis record."""
        train = self.context.benchmark.train
        made = outliers_cached(train.texts, self.config.outlier_config(), self.context.cache)
        texts = TextSet("synthesized_train", tuple(made.texts), tuple(train.labels[i] for i in made.sources))
        return texts, made

    def synthesize(self) -> Outliers | None:
        """variant=synthetic: one outlier per training text that has a sentence of <= max_length tokens."""
        if self.config.variant == "mle":
            return None
        texts, made = self.synthesized()
        if not len(texts):
            raise HarnessError("no training text has a sentence of at most "
                               f"{self.config.max_length} tokens, so there are no synthetic outliers; raise "
                               "text_flow.max_length")
        features = torch.from_numpy(self._stage().encode(texts))
        return Outliers("features", features, torch.tensor(made.sources),
                        fingerprint=texts.fingerprint)

    # --- training ------------------------------------------------------------------------------------------------

    def _fit_scaling(self, features: np.ndarray) -> None:
        if self.config.feature_scaling == "unit-box":
            low, high = features.min(0), features.max(0)
            self.shift, self.scale = low, np.where(high > low, high - low, 1.0)
        else:
            std = features.std(0)
            self.shift, self.scale = features.mean(0), np.where(std > 0, std, 1.0)

    def scaled(self, features: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((features - self.shift) / self.scale).astype(np.float32))

    def _batches(self, x_id: torch.Tensor, x_out: torch.Tensor | None, sources: torch.Tensor | None):
        """Seeded shuffling; with outliers, each sample is replaced by its outlier with probability outlier_prob
        (samples without an outlier stay ID); and the generator the batches draw from."""
        config, device = self.config, self.context.device
        gen = torch.Generator().manual_seed(self.context.seed)
        outlier_of = torch.full((len(x_id),), -1, dtype=torch.long)
        if x_out is not None:
            outlier_of[sources] = torch.arange(len(sources))
        batch_size = min(config.batch_size, len(x_id))

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
            order = torch.randperm(len(x_id), generator=gen)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                idx = order[start:start + batch_size]
                if x_out is None:
                    yield x_id[idx].to(device), None
                    continue
                turn = (torch.rand(len(idx), generator=gen) < config.outlier_prob) & (outlier_of[idx] >= 0)
                yield x_id[idx[~turn]].to(device), x_out[outlier_of[idx[turn]]].to(device)
        return batches, gen

    def train(self, outliers: Outliers | None) -> None:
        stage = self._stage()
        train = self.context.benchmark.train
        features = stage.encode(train)
        self._fit_scaling(features)
        x_id = self.scaled(features)
        x_out = self.scaled(outliers.data.numpy()) if outliers is not None else None
        dim = x_id.shape[1]
        try:
            flow_spec = FlowSpec((dim,), self.config.blocks, self.config.hidden or dim, False,
                                 self.config.subnet_layers)
        except ValueError as err:
            raise HarnessError(f"text_flow: {err}") from None
        train_fields = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in SCORE_ONLY_FIELDS}
        self.key = content_hash("text-flow", stage.key, train.fingerprint, self.context.seed, train_fields,
                                FEATURE_SCALING[self.config.feature_scaling],
                                outliers.fingerprint if outliers is not None else None, TEXT_FLOW_VERSION)

        def compute() -> dict[str, Any]:
            torch.manual_seed(self.context.seed)
            flow = Flow(flow_spec).to(self.context.device)
            start = time.perf_counter()
            batches, generator = self._batches(x_id, x_out, outliers.labels if outliers is not None else None)
            history = train_flow(flow, batches, self.config.train_config(),
                                 desc=f"text flow {self.config.variant} (seed {self.context.seed})",
                                 checkpoint=checkpoint, generator=generator)
            return {**flow.checkpoint(), "history": history, "train_seconds": time.perf_counter() - start}

        checkpoint = self.context.cache.path("checkpoints", f"text-flow-{self.key}")
        stored = self.context.cache.get_or_compute("text-flow", self.key, compute)
        checkpoint.unlink(missing_ok=True)
        self.flow = Flow.from_checkpoint(stored).to(self.context.device)
        self.history, self.train_seconds = stored["history"], stored["train_seconds"]
        self.outliers = outliers
        self._log_p: dict[str, np.ndarray] = {}

    # --- scores --------------------------------------------------------------------------------------------------

    def log_p(self, texts: TextSet) -> np.ndarray:
        """log p(x) in nats of each text's scaled embedding."""
        if texts.fingerprint not in self._log_p:
            x = self.scaled(self._stage().encode(texts))
            self._log_p[texts.fingerprint] = log_prob_batched(self.flow, x)
        return self._log_p[texts.fingerprint]

    def score(self, texts: TextSet) -> np.ndarray:
        """The likelihood score: log p(x) = -S_nll (eq. 4); higher = more in-distribution."""
        if not isinstance(texts, TextSet):
            raise HarnessError(f"text_flow scores text sets; {getattr(texts, 'name', texts)!r} is not one")
        return self.log_p(texts)

    def details(self) -> dict[str, Any]:
        bench = self.context.benchmark
        synthesized, made = self.synthesized()  # cached per text; the MLE variant records Table 9's row too
        sets = {"ID train": bench.train, "ID test": bench.test, **bench.ood}
        complexity = {name: round(text_complexity(s.texts), 4) for name, s in sets.items()}
        if len(synthesized):
            complexity["synthesized ID train"] = round(text_complexity(synthesized.texts), 4)
        encoder = self.encoder_spec()
        stage = self._stage()
        return {
            "encoder": encoder.name if encoder.name != "albert" else f"albert ({encoder.path})",
            "pooling": encoder.pooling_description,
            "embedding_dim": self.flow.spec.input_shape[0],
            "subnet_width": self.flow.spec.hidden,
            "feature_scaling": FEATURE_SCALING[self.config.feature_scaling],
            "texts_without_vector": {name: n for name, n in stage.empty.items() if n},
            "complexity_unit": "gzip (level 9) bits per UTF-8 byte of the whole set, C(X) = L(X)/d (Sec. 2.1)",
            "complexity": complexity,
            "synthesized": len(synthesized),
            "dropped_texts": made.dropped,  # training texts with no sentence of <= max_length tokens: no outlier
            "outliers_used": self.config.variant == "synthetic",
            "flow_key": self.context.cache.entry_key(self.key),
            "final_train_loss": self.history[-1],
            "train_seconds_uncached": round(self.train_seconds, 1),
            "mean_log_p_nats": {name: float(self.log_p(s).mean())
                                for name, s in {"ID": bench.test, **bench.ood}.items()},
        }
