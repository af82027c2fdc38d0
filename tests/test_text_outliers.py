"""Synthetic text outliers (the flow paper, Sec. 2.2.2) on hand-built spaCy docs and the real pipeline."""

import pytest

from methods.text_flow.outliers import TextOutlierConfig, TextSimplifier, first_synonym, match_case, wordnet_pos
from tests.text_helpers import resource_root


@pytest.fixture(scope="module")
def simplifier():
    return TextSimplifier.from_resources(root=resource_root())


@pytest.fixture(scope="module")
def wn(simplifier):
    return simplifier.wordnet


def nltk_first(wn, word, pos, all_senses=False):
    """The paper's rule written directly on nltk: first lemma (underscores -> spaces) differing from the word."""
    senses = wn.synsets(word, pos) if all_senses else wn.synsets(word, pos)[:1]
    for sense in senses:
        for lemma in sense.lemma_names():
            if lemma.replace("_", " ").lower() != word.lower():
                return lemma.replace("_", " ")
    return None


def make_doc(simplifier, tagged, sent_starts=None):
    """A Doc from (word, Penn tag) pairs, each followed by a space except before punctuation."""
    from spacy.tokens import Doc

    words = [w for w, _ in tagged]
    spaces = [i + 1 < len(words) and tagged[i + 1][1] not in (".", ",") for i in range(len(words))]
    doc = Doc(simplifier.nlp.vocab, words=words, spaces=spaces, tags=[t for _, t in tagged],
              sent_starts=sent_starts or [i == 0 for i in range(len(words))])
    return simplifier.nlp.get_pipe("attribute_ruler")(doc)  # punctuation flags and universal POS from the tags


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="sentences"):
        TextOutlierConfig(sentences="punkt")
    with pytest.raises(ValueError, match="max_length"):
        TextOutlierConfig(max_length=0)


def test_match_case_keeps_the_pattern():
    assert match_case("Movie", "film") == "Film"
    assert match_case("MOVIE", "film") == "FILM"
    assert match_case("movie", "Hollywood") == "Hollywood"
    assert match_case("I", "iodine") == "Iodine"


def test_pos_mapping_penn_and_universal():
    penn = TextOutlierConfig()
    assert [wordnet_pos(t, "", penn) for t in ("NNS", "NNP", "VBZ", "JJR", "RBS", "DT", "IN", ".")] == \
        ["n", "n", "v", "a", "r", None, None, None]
    assert wordnet_pos("NNP", "PROPN", TextOutlierConfig(proper_nouns=False)) is None
    universal = TextOutlierConfig(tagset="universal")
    assert [wordnet_pos("", p, universal) for p in ("NOUN", "PROPN", "VERB", "AUX", "ADJ", "ADV", "PUNCT")] == \
        ["n", "n", "v", None, "a", "r", None]


@pytest.mark.parametrize("word,pos", [("midget", "n"), ("film", "n"), ("hilarious", "a"), ("freaks", "n"),
                                      ("makes", "v"), ("is", "v"), ("fell", "v"), ("really", "r"), ("end", "n"),
                                      ("together", "r"), ("typical", "a"), ("good", "a")])
def test_first_differing_synonym_matches_nltk(wn, word, pos):
    assert first_synonym(word, pos, wn, TextOutlierConfig()) == nltk_first(wn, word, pos)
    assert first_synonym(word, pos, wn, TextOutlierConfig(synsets="all")) == nltk_first(wn, word, pos, True)


def test_first_sense_keeps_words_the_paper_kept(wn):
    """Table 11 row 3 keeps "together" and "typical": their first sense has no other lemma."""
    config = TextOutlierConfig()
    assert first_synonym("together", "r", wn, config) is None
    assert first_synonym("typical", "a", wn, config) is None
    assert first_synonym("together", "r", wn, TextOutlierConfig(synsets="all")) is not None
    assert first_synonym("is", "v", wn, config) == "be"  # morphy's exception list (written from spaCy's table)


def test_multiword_lemmas_spaces_or_skipped(wn):
    assert first_synonym("plot", "n", wn, TextOutlierConfig()) == "secret plan"
    skipped = first_synonym("plot", "n", wn, TextOutlierConfig(multiword="skip"))
    lemmas = [lemma for lemma in wn.synsets("plot", "n")[0].lemma_names() if "_" not in lemma and lemma != "plot"]
    assert skipped == (lemmas[0] if lemmas else None)


def test_unknown_words_and_punctuation_kept(simplifier, wn):
    doc = make_doc(simplifier, [("The", "DT"), ("blorptastic", "JJ"), ("midget", "NN"), ("laughs", "VBZ"),
                                ("!", ".")])
    assert wn.synsets("blorptastic") == []
    expected = f"The blorptastic {nltk_first(wn, 'midget', 'n')} {nltk_first(wn, 'laughs', 'v')}!"
    assert simplifier.simplify_doc(doc) == expected == "The blorptastic dwarf laugh!"


def test_negation_hosts_kept_unless_asked(simplifier):
    doc = simplifier.nlp("i don't like this film .")
    assert simplifier.simplify_doc(doc) == "i don't wish this movie ."
    glued = TextSimplifier(simplifier.nlp, simplifier.wordnet, TextOutlierConfig(keep_negation_hosts=False))
    assert glued.simplify_doc(doc) == "i maken't wish this movie ."


def test_case_of_replaced_words(simplifier):
    doc = make_doc(simplifier, [("Midget", "NN"), ("FILM", "NN"), ("end", "NN"), (".", ".")])
    assert simplifier.simplify_doc(doc) == "Dwarf MOVIE terminal."


def test_length_filter_keeps_twenty_tokens_and_drops_twenty_one(simplifier):
    twenty = [("the", "DT")] * 19 + [(".", ".")]
    twenty_one = [("a", "DT")] * 20 + [(".", ".")]
    doc = make_doc(simplifier, twenty + twenty_one, [i in (0, 20) for i in range(41)])
    assert [simplifier.sentence_length(s) for s in doc.sents] == [20, 21]
    assert simplifier.simplify_doc(doc) == " ".join(["the"] * 19) + "."
    words_only = TextSimplifier(simplifier.nlp, simplifier.wordnet, TextOutlierConfig(count_punctuation=False))
    assert words_only.simplify_doc(doc) == " ".join(["the"] * 19) + ". " + " ".join(["a"] * 20) + "."


def test_text_without_short_sentence_dropped_or_shortest(simplifier):
    long_text = " ".join(["the midget"] * 12) + ". " + " ".join(["the end"] * 11) + "."
    result = simplifier.synthesize([long_text, "", "   "])
    assert result.texts == [] and result.sources == [] and result.dropped == 3
    shortest = TextSimplifier(simplifier.nlp, simplifier.wordnet, TextOutlierConfig(no_short_sentence="shortest"))
    out = shortest.synthesize([long_text, ""])
    assert out.sources == [0] and out.dropped == 1
    assert out.texts[0] == " ".join(["the terminal"] * 11) + "."


def test_real_pipeline_reproduces_table_11_row_3(simplifier):
    """The described procedure on the paper's own example (Table 11 row 3); only "padding" differs, which the
    paper's NLTK tagger read as a verb ("embroider") and spaCy reads as a noun."""
    text = ("Bela Lugosi as creepy insane scientist who uses orchids to woo brides in order to steal life essence "
            "for aged wife. The midget in this film is hilarious!! A lot of freaks, plus a lot of padding and no plot "
            "makes watching this film a nightmare. I loved how all the pieces fell together in the end in typical "
            "Hollywood fashion.")
    result = simplifier.synthesize([text])
    assert result.texts == ["The dwarf in this movie be screaming!! A batch of freak, plus a batch of cushioning and "
                            "no secret plan make watch this movie a incubus. I love how all the piece drop together "
                            "in the terminal in typical Hollywood manner."]
