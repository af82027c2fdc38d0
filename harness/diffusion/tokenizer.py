"""A CLIP BPE tokenizer with a small vocabulary: every character, plus whole-word tokens for a given word list.

Stable Diffusion's tokenizer is a `CLIPTokenizer` over a 49,408-token BPE vocabulary; its token-embedding table alone
would be larger than the whole tiny model. The tiny model uses the same tokenizer class over `vocab.json` +
`merges.txt` written here: single characters (so any lower-case ASCII text tokenizes) and, for each listed word, a
chain of merges that assembles the word into one token (`seven</w>`), exactly how CLIP's BPE forms whole words.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges building `word` as one end-of-word token: (s, e), (se, v), ..., (seve, n</w>)."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    merges, left = [], pieces[0]
    for piece in pieces[1:]:
        merges.append((left, piece))
        left += piece
    return merges


def write_word_tokenizer(words: Iterable[str], directory: Path, model_max_length: int) -> list[str]:
    """Write `vocab.json`, `merges.txt` and the tokenizer configs of a `CLIPTokenizer` to `directory`.

    Returns the vocabulary in id order. Each word must be lower-case ASCII letters or digits (CLIP lower-cases).
    """
    words = list(dict.fromkeys(words))
    for word in words:
        if not word or not all(c in string.ascii_lowercase + string.digits for c in word):
            raise ValueError(f"word {word!r} must be non-empty lower-case ASCII letters/digits")
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = list(chars) + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in words:
        for pair in word_merges(word):
            if pair not in merges:
                merges.append(pair)
                merged = pair[0] + pair[1]
                if merged not in vocab:
                    vocab.append(merged)
    vocab += [BOS, EOS]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, indent=0))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "bos_token": BOS,
              "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2))
    return vocab
