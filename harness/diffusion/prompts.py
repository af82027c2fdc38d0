"""How class words tokenise inside their prompts, for the methods that substitute a class token (Dream-OOD, NCIS).

Both methods replace the embedding of the class word's first BPE token in the prompt "<template with the word>".
Two things silently weaken that substitution, and the official code has both: a word of several BPE tokens only
has its first piece replaced (NCIS: cockroach -> 'co', skyscraper -> 'sky'), and a token taken from one word list
may not occur in a prompt built from another (the 'chimpanzee' case: the replaced token is absent, so the
"outlier" is a plain class image). `token_report` lists both, per class, so a record says what was substituted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.diffusion.backend import DiffusionBackend
from harness.errors import HarnessError


@dataclass(frozen=True)
class TokenReport:
    """Per class: the word whose first token is substituted, the token, all its BPE pieces, and whether that token
    occurs in the class's prompt."""

    words: tuple[str, ...]
    prompts: tuple[str, ...]
    tokens: tuple[str, ...]
    pieces: tuple[tuple[str, ...], ...]
    in_prompt: tuple[bool, ...]

    @property
    def multi_token(self) -> list[str]:
        return [w for w, p in zip(self.words, self.pieces, strict=True) if len(p) > 1]

    @property
    def missing(self) -> list[str]:
        return [w for w, ok in zip(self.words, self.in_prompt, strict=True) if not ok]

    def as_record(self) -> dict[str, Any]:
        return {"substituted_tokens": dict(zip(self.words, self.tokens, strict=True)),
                "multi_token_classes": {w: list(p) for w, p in zip(self.words, self.pieces, strict=True) if len(p) > 1},
                "missing_token_classes": self.missing}

    def require_present(self, fix: str) -> None:
        """Raise a one-line HarnessError when a substituted token does not occur in its prompt."""
        if self.missing:
            raise HarnessError(f"the substituted token of {', '.join(map(repr, self.missing))} does not occur in "
                               f"its prompt, so those outliers would be plain class images; {fix}")


def token_report(backend: DiffusionBackend, token_words: Sequence[str], template: str,
                 prompt_words: Sequence[str] | None = None) -> TokenReport:
    """Tokenise each class word (`token_words`, whose first token is substituted) and its prompt (`template` with
    `prompt_words`, the same words by default) and check that the token occurs in the prompt."""
    prompt_words = list(token_words if prompt_words is None else prompt_words)
    if len(prompt_words) != len(token_words):
        raise HarnessError(f"{len(token_words)} token words but {len(prompt_words)} prompt words; give one per class")
    classes = [backend.class_token(word) for word in token_words]
    prompts = [template.format(word) for word in prompt_words]
    ids = backend.prompt_ids(prompts)
    present = [bool((row == c.token_id).any()) for row, c in zip(ids, classes, strict=True)]
    return TokenReport(tuple(token_words), tuple(prompts), tuple(c.token for c in classes),
                       tuple(c.tokens for c in classes), tuple(present))
