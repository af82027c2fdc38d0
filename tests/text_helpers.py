"""Shared helpers of the text tests: the text resources (fetched once by the set-up path), or a clean skip."""

import functools
from pathlib import Path

import pytest


@functools.lru_cache(maxsize=1)
def _setup() -> tuple[Path | None, str]:
    from harness.data.text_resources import default_resource_dir, setup_all
    from harness.errors import HarnessError

    try:
        setup_all()
    except HarnessError as err:
        return None, str(err)
    return default_resource_dir(), ""


def resource_root() -> Path:
    """The text-resource root after `setup_all()`; skips when a resource is absent and cannot be fetched."""
    root, why = _setup()
    if root is None:
        pytest.skip(f"text resources unavailable: {why}")
    return root


def save_random_albert(path: Path, words: list[str], hidden: int = 32) -> Path:
    """A tiny random-weight ALBERT (AlbertConfig) with a word-level tokenizer over `words`, saved as save_pretrained
    writes it (config.json, model.safetensors, tokenizer files)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AlbertConfig, AlbertModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(["<pad>", "<unk>", "[CLS]", "[SEP]", *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(path)
    torch.manual_seed(0)
    AlbertModel(AlbertConfig(vocab_size=len(vocab), embedding_size=16, hidden_size=hidden, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=37)).save_pretrained(path)
    return path
