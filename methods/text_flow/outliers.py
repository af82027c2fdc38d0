"""Synthetic text outliers (the flow paper, Sec. 2.2.2; settings of Sec. 3.3): shorter sentences, simpler words.

For each text: split it into sentences, drop every sentence longer than `max_length` (20, Sec. 3.3) tokens, tag the
words of the rest, replace each word by the first WordNet synonym for its part of speech that differs from it (keep
it when there is none), and join the simplified sentences into one new text.

What the paper leaves open, fixed here (fields of `TextOutlierConfig`):

- Sentences and tokens: spaCy `en_core_web_md` (the paper used NLTK, whose punkt/tagger data is not available
  offline). `sentences="sentencizer"` (default) splits on sentence punctuation like NLTK's punkt; `senter` and
  `parser` are the model's statistical splitters. Length counts every token but whitespace, punctuation included
  (as `nltk.word_tokenize` does); `count_punctuation=False` counts words only.
- Part of speech: `tagset="penn"` (default) maps the Penn tag's prefix as NLTK users do: NN* -> noun, VB* -> verb
  (auxiliaries too: "is" -> "be"), JJ* -> adjective (satellites included), RB* -> adverb; `universal` maps
  NOUN/VERB/ADJ/ADV (AUX not). Proper nouns (NNP*, PROPN) are looked up as nouns unless `proper_nouns=False`.
- "First" synonym: WordNet's sense order, then lemma order, as nltk's `synsets(word, pos)` returns them (nltk's
  `morphy` maps the inflected surface form to WordNet lemmas, so "pieces" -> "piece"). `synsets="first"` (default)
  looks only at the first sense: it reproduces the paper's Table 11 row 3 ("together", "typical" are kept although
  later senses have other lemmas); `all` goes on to later senses. "Differs" ignores case unless
  `case_insensitive_compare=False`.
- Multiword lemmas ("secret_plan"): `multiword="space"` writes them with spaces (Table 11: "secret plan"); `skip`
  passes them over for the next lemma.
- Case: the word's pattern is kept: ALL CAPS -> upper, Capitalised -> first letter upper, else WordNet's spelling.
- Punctuation, numbers, spaces and untagged words are kept as they are, with the original spacing. The host of a
  negation clitic ("do" in "don't", "is" in "isn't") is kept while `keep_negation_hosts` (default): replaced, it
  would glue the synonym to "n't" ("maken't").
- A text with no sentence of at most `max_length` tokens (an empty text included): `no_short_sentence="drop"`
  (default) gives no outlier for it and counts it in `SynthesizedTexts.dropped`; `shortest` simplifies its shortest
  sentence instead (an empty text is still dropped).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SentenceSplitter = Literal["sentencizer", "senter", "parser"]
Tagset = Literal["penn", "universal"]

_PENN = {"NN": "n", "VB": "v", "JJ": "a", "RB": "r"}
_UNIVERSAL = {"NOUN": "n", "PROPN": "n", "VERB": "v", "ADJ": "a", "ADV": "r"}


@dataclass(frozen=True)
class TextOutlierConfig:
    """The choices of Sec. 2.2.2 (see the module docstring)."""

    max_length: int = 20
    sentences: SentenceSplitter = "sentencizer"
    count_punctuation: bool = True
    tagset: Tagset = "penn"
    proper_nouns: bool = True
    synsets: Literal["first", "all"] = "first"
    multiword: Literal["space", "skip"] = "space"
    case_insensitive_compare: bool = True
    keep_negation_hosts: bool = True
    no_short_sentence: Literal["drop", "shortest"] = "drop"

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError("max_length must be >= 1")
        for name, allowed in (("sentences", ("sentencizer", "senter", "parser")), ("tagset", ("penn", "universal")),
                              ("synsets", ("first", "all")), ("multiword", ("space", "skip")),
                              ("no_short_sentence", ("drop", "shortest"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")


@dataclass(frozen=True)
class SynthesizedTexts:
    """The outliers, the index of each one's source text, and how many texts gave none."""

    texts: list[str]
    sources: list[int]
    dropped: int


def match_case(original: str, replacement: str) -> str:
    """`replacement` with the capitalisation pattern of `original` (upper, capitalised, or WordNet's own)."""
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def wordnet_pos(tag: str, pos: str, config: TextOutlierConfig) -> str | None:
    """The WordNet part of speech (n, v, a, r) of a token with Penn `tag` and universal `pos`, or None."""
    if config.tagset == "penn":
        if tag.startswith("NNP") and not config.proper_nouns:
            return None
        return _PENN.get(tag[:2])
    if pos == "PROPN" and not config.proper_nouns:
        return None
    return _UNIVERSAL.get(pos)


def first_synonym(word: str, pos: str, wordnet: Any, config: TextOutlierConfig) -> str | None:
    """The first lemma of the word's WordNet senses for `pos` that differs from `word` (Sec. 2.2.2), or None."""
    senses = wordnet.synsets(word, pos)
    if config.synsets == "first":
        senses = senses[:1]
    same = word.casefold() if config.case_insensitive_compare else word
    for sense in senses:
        for lemma in sense.lemma_names():
            if "_" in lemma and config.multiword == "skip":
                continue
            candidate = lemma.replace("_", " ")
            if (candidate.casefold() if config.case_insensitive_compare else candidate) != same:
                return candidate
    return None


class TextSimplifier:
    """Sec. 2.2.2 on spaCy docs with nltk's WordNet; `from_resources` loads both from the text resources."""

    def __init__(self, nlp: Any, wordnet: Any, config: TextOutlierConfig = TextOutlierConfig()) -> None:
        self.nlp, self.wordnet, self.config = nlp, wordnet, config
        self._memo: dict[tuple[str, str], str | None] = {}

    @classmethod
    def from_resources(cls, config: TextOutlierConfig = TextOutlierConfig(), root: Path | str | None = None,
                       fetch: bool = True) -> TextSimplifier:
        from harness.data.text_resources import load_spacy, load_wordnet

        exclude = {"sentencizer": ("ner", "lemmatizer", "parser", "senter"), "senter": ("ner", "lemmatizer", "parser"),
                   "parser": ("ner", "lemmatizer", "senter")}[config.sentences]
        nlp = load_spacy(root, fetch, exclude=exclude, enable=("senter",) if config.sentences == "senter" else ())
        if config.sentences == "sentencizer":
            nlp.add_pipe("sentencizer")
        return cls(nlp, load_wordnet(root, fetch), config)

    def sentence_length(self, sentence: Iterable[Any]) -> int:
        return sum(1 for t in sentence if not t.is_space and (self.config.count_punctuation or not t.is_punct))

    def replacement(self, token: Any) -> str:
        """The token's text after synonym replacement (the original when it is kept)."""
        pos = wordnet_pos(token.tag_, token.pos_, self.config)
        if pos is None or token.is_punct or token.is_space or not any(c.isalpha() for c in token.text):
            return token.text
        if self.config.keep_negation_hosts and not token.whitespace_ and token.i + 1 < len(token.doc) \
                and token.doc[token.i + 1].lower_ in ("n't", "n’t"):
            return token.text
        key = (token.text, pos)
        if key not in self._memo:
            self._memo[key] = first_synonym(token.text, pos, self.wordnet, self.config)
        synonym = self._memo[key]
        return token.text if synonym is None else match_case(token.text, synonym)

    def simplify_sentence(self, sentence: Any) -> str:
        return "".join(self.replacement(t) + t.whitespace_ for t in sentence).strip()

    def simplify_doc(self, doc: Any) -> str | None:
        """The outlier of one parsed text, or None when it has no usable sentence."""
        sentences = [s for s in doc.sents if self.sentence_length(s) > 0]
        short = [s for s in sentences if self.sentence_length(s) <= self.config.max_length]
        if not short and sentences and self.config.no_short_sentence == "shortest":
            short = [min(sentences, key=self.sentence_length)]
        if not short:
            return None
        return " ".join(self.simplify_sentence(s) for s in short)

    def synthesize(self, texts: Sequence[str], batch_size: int = 64) -> SynthesizedTexts:
        """The outliers of `texts` (parsed in batches with `nlp.pipe`), in order, empty ones dropped and counted."""
        out, sources = [], []
        for i, doc in enumerate(self.nlp.pipe(texts, batch_size=batch_size)):
            simplified = self.simplify_doc(doc)
            if simplified:
                out.append(simplified)
                sources.append(i)
        return SynthesizedTexts(out, sources, len(texts) - len(out))
