"""Text encoders for the flow's text experiment (the flow paper, Sec. 3.3): texts -> fixed-size feature vectors.

- `SpacyVectorEncoder`: spaCy `en_core_web_md`'s 300-d static word vectors, mean-pooled over the tokens that have a
  vector and are neither punctuation nor whitespace (punctuation vectors would pull every text toward the same
  point); a text with no such token gets the zero vector (counted in `last_empty`). Only the tokenizer runs: every
  pipeline component is excluded, the vectors are looked up by the token's exact text (as `Token.vector` does).
- `AlbertEncoder`: the paper's encoder (ALBERT Base v2, 768-d) from a local directory (`config.json`, weights,
  tokenizer files). `pooling="mean"` (default) averages the last hidden states over the attention mask;
  `pooler` takes ALBERT's pooled [CLS] output (tanh dense layer). The paper does not say which it used.
  Texts are truncated to `max_length` (512, ALBERT's positions) tokens; batched; runs on the given device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.data.text import holds_albert
from harness.errors import HarnessError

_SPACY_COMPONENTS = ("tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer", "ner")


class SpacyVectorEncoder:
    """Mean-pooled en_core_web_md word vectors (see the module docstring)."""

    dim = 300

    def __init__(self, nlp: Any | None = None, root: Path | str | None = None, batch_size: int = 256) -> None:
        if nlp is None:
            from harness.data.text_resources import load_spacy

            nlp = load_spacy(root, exclude=_SPACY_COMPONENTS)
        self.nlp, self.batch_size = nlp, batch_size
        self.vectors = nlp.vocab.vectors
        self.dim = int(self.vectors.shape[1])
        self.last_empty = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 300) float32 features."""
        from spacy.attrs import IS_PUNCT, IS_SPACE, ORTH

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        table = np.asarray(self.vectors.data)
        self.last_empty = 0
        with self.nlp.select_pipes(disable=self.nlp.pipe_names):
            for i, doc in enumerate(self.nlp.pipe(texts, batch_size=self.batch_size)):
                attrs = doc.to_array([ORTH, IS_PUNCT, IS_SPACE]).reshape(-1, 3)
                keep = attrs[(attrs[:, 1] == 0) & (attrs[:, 2] == 0), 0]
                rows = np.asarray(self.vectors.find(keys=keep.astype(np.uint64)), dtype=np.int64) if len(keep) \
                    else np.empty(0, dtype=np.int64)
                rows = rows[rows >= 0]
                if len(rows):
                    out[i] = table[rows].mean(axis=0)
                else:
                    self.last_empty += 1
        return out


@dataclass(frozen=True)
class AlbertConfig:
    """How `AlbertEncoder` turns token states into one vector per text."""

    pooling: Literal["mean", "pooler"] = "mean"
    max_length: int = 512
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "pooler"):
            raise ValueError(f"pooling must be mean or pooler, not {self.pooling!r}")
        if self.max_length < 2 or self.batch_size < 1:
            raise ValueError("max_length must be >= 2 and batch_size >= 1")


def check_albert_directory(directory: Path) -> None:
    """A directory without an ALBERT model is one HarnessError line."""
    if not holds_albert(directory):
        raise HarnessError(f"no ALBERT model in {directory} (needs config.json and model.safetensors or "
                           "pytorch_model.bin); save one there with save_pretrained, e.g. albert/albert-base-v2")


class AlbertEncoder:
    """ALBERT (transformers `AlbertModel`) from a local directory, in eval mode on `device`."""

    def __init__(self, directory: Path | str, config: AlbertConfig = AlbertConfig(), device: Any = "cpu") -> None:
        import torch
        from transformers import AlbertModel, AutoTokenizer

        directory = Path(directory).expanduser()
        check_albert_directory(directory)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as err:
            raise HarnessError(f"no usable tokenizer in {directory} ({str(err).splitlines()[0]}); save the "
                               "model's tokenizer there too") from None
        self.model = AlbertModel.from_pretrained(directory, local_files_only=True).to(device).eval()
        self.device, self.config, self._torch = torch.device(device), config, torch
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), hidden_size) float32 features, in batches of `config.batch_size`."""
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.config.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.config.batch_size]), padding=True, truncation=True,
                                   max_length=self.config.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                result = self.model(**batch)
            if self.config.pooling == "pooler":
                pooled = result.pooler_output
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(result.last_hidden_state.dtype)
                pooled = (result.last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out[start:start + len(pooled)] = pooled.float().cpu().numpy()
        return out
