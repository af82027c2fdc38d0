"""The review_sentences benchmark: length-matched sampling, and no length feature telling ID from OOD."""

import numpy as np
import pytest

from harness.data import text as td
from harness.metrics import auroc
from tests.text_helpers import resource_root

MAX_LENGTH_AUROC = 0.65  # issue 33: no single length feature separates ID from an OOD set above 65 AUROC


def length_auroc(id_texts, ood_texts) -> dict[str, float]:
    """Per length feature, the AUROC of ID vs OOD in the better direction: max(a, 1 - a)."""
    ours, theirs = td.length_features(id_texts), td.length_features(ood_texts)
    return {name: max(a, 1 - a) for name in td.LENGTH_FEATURES
            for a in [auroc(ours[name], theirs[name])]}


def test_length_matched_sample_fills_each_cell_by_its_share():
    cells = td.LengthCells(token_edges=(1, 3, 5), word_length_edges=(4.0,))
    texts = [" ".join([w] * n) for n in (1, 2, 3, 4) for w in ("ab", "abcdef") for _ in range(10)]
    data = td.text_set("pool", texts, None, "test")
    shares = [0.5, 0.0, 0.25, 0.25]  # cells: (1-2 tokens, short words), (1-2, long), (3-4, short), (3-4, long)
    sample = td.length_matched_sample(data, cells, shares, 8, seed=0)
    assert np.bincount(cells.of(sample.texts), minlength=4).tolist() == [4, 0, 2, 2]
    assert sample.texts == td.length_matched_sample(data, cells, shares, 8, seed=0).texts
    assert sample.texts != td.length_matched_sample(data, cells, shares, 8, seed=1).texts
    short = td.length_matched_sample(data, cells, [1.0, 0, 0, 0], 30, seed=0)  # the cell holds 20 texts
    assert len(short) == 20 and set(cells.of(short.texts)) == {0}
    assert cells.of(["", "a b c d e"]).tolist() == [-1, -1]  # outside the token range


def test_pang_lee_style_splits_punctuation_and_keeps_pang_lee_text():
    assert td.pang_lee_style('He said: "It\'s fine," (really).') == 'he said : " it\'s fine , " ( really ) .'
    snippet = "the rock is destined to be the 21st century's new \" conan \" and that he's going to make a splash ."
    assert td.pang_lee_style(snippet) == snippet
    assert td.newsgroup_prose("In article <1@a.b> x writes:\n> quoted\nown text\n| more quoted") == "own text"


def check_lengths_unmatched_at_most(id_test, ood: dict) -> dict[str, dict[str, float]]:
    found = {name: length_auroc(id_test.texts, texts.texts) for name, texts in ood.items()}
    for name, features in found.items():
        for feature, value in features.items():
            assert value <= MAX_LENGTH_AUROC, f"{feature} separates ID from {name}: AUROC {value:.3f}"
    return found


@pytest.fixture(scope="module")
def root():
    return resource_root()


def test_no_length_feature_separates_id_from_the_fast_sets(root):
    """rt_snippets and the newsgroup sentences (the spec's seeds) against the ID test set: a few seconds."""
    id_test = td.pang_lee_review_sentences_source()["test"]
    ood = {corpus: td.length_matched_sentences_source(corpus=corpus, seed=seed)
           for corpus, seed in (("rt_snippets", 1), ("newsgroup_posts", 4))}
    found = check_lengths_unmatched_at_most(id_test, ood)
    assert len(id_test) == 500 and all(len(s) == 500 for s in ood.values())
    unmatched = td.rt_snippets().subset(np.arange(500))  # the guard has teeth: raw snippets differ in length
    assert max(length_auroc(id_test.texts, unmatched.texts).values()) > MAX_LENGTH_AUROC
    assert set(found["rt_snippets"]) == set(td.LENGTH_FEATURES)


@pytest.mark.slow
@pytest.mark.heavy
def test_no_length_feature_separates_id_from_any_set_of_the_spec(root, session_cache):
    """Every OOD set of datasets/review_sentences.json, built as `run` builds it (the Wikipedia dump takes ~10 s)."""
    from harness.data.benchmarks import load_benchmark
    from harness.data.spec import load_spec

    bench = load_benchmark(load_spec("review_sentences"), session_cache)
    check_lengths_unmatched_at_most(bench.test, bench.ood)
    for name, stats in bench.provenance["sets"].items():
        assert set(stats["lengths"]) == set(td.LENGTH_FEATURES), name
