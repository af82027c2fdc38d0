"""Text sets: readers of the paper's download formats on small fixtures, their bad inputs, the embedded sets."""

import numpy as np
import pytest

from harness.data import text as td
from harness.errors import HarnessError
from tests.text_helpers import resource_root


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_imdb_folder(tmp_path):
    write(tmp_path / "aclImdb/test/pos/0_10.txt", "Great film.<br /><br />Loved it.")
    write(tmp_path / "aclImdb/test/pos/1_9.txt", "Fine.")
    write(tmp_path / "aclImdb/test/neg/0_2.txt", "Dull.")
    data = td.read_imdb(tmp_path / "aclImdb", "test")
    assert data.texts == ("Great film.  Loved it.", "Fine.", "Dull.") and data.labels == (1, 1, 0)
    with pytest.raises(HarnessError, match="IMDb folder not found: .*train/pos"):
        td.read_imdb(tmp_path / "aclImdb", "train")


def test_pang_lee_folder_and_non_utf8(tmp_path):
    write(tmp_path / "txt_sentoken/pos/cv000_1.txt", "a good film .\n")
    write(tmp_path / "txt_sentoken/neg/cv000_2.txt", "a bad film .\n")
    assert td.read_pang_lee_folder(tmp_path / "txt_sentoken").labels == (1, 0)
    write(tmp_path / "txt_sentoken/neg/cv001_3.txt", "caf\xe9 .", encoding="latin-1")
    with pytest.raises(HarnessError, match=r"cv001_3.txt is not UTF-8 text \(bad byte at offset 3\)"):
        td.read_pang_lee_folder(tmp_path / "txt_sentoken")


def test_ag_news_csv(tmp_path):
    path = write(tmp_path / "test.csv", '"3","Wall St. Bears","Short-sellers \\\\band of ultra-cynics"\n'
                                        '"1","Title two","Desc, with comma"\n')
    data = td.read_ag_news(path)
    assert data.texts == ("Wall St. Bears Short-sellers band of ultra-cynics", "Title two Desc, with comma")
    assert data.labels == (2, 0)
    with pytest.raises(HarnessError, match="line 1 is not class,title,description"):
        td.read_ag_news(write(tmp_path / "bad.csv", "title,description\n"))
    with pytest.raises(HarnessError, match="text set 'ag_news' is empty"):
        td.read_ag_news(write(tmp_path / "empty.csv", ""))


def test_sst2_tsv(tmp_path):
    data = td.read_sst2(write(tmp_path / "dev.tsv", "sentence\tlabel\nit 's a charming journey . \t1\nbad .\t0\n"))
    assert data.texts == ("it 's a charming journey .", "bad .") and data.labels == (1, 0)
    unlabelled = td.read_sst2(write(tmp_path / "test.tsv", "index\tsentence\n0\tuneasy mishmash .\n"))
    assert unlabelled.texts == ("uneasy mishmash .",) and unlabelled.labels == (-1,)
    with pytest.raises(HarnessError, match="no `sentence` column"):
        td.read_sst2(write(tmp_path / "nohead.tsv", "good .\t1\n"))
    with pytest.raises(HarnessError, match="line 3 does not match its header"):
        td.read_sst2(write(tmp_path / "badrow.tsv", "sentence\tlabel\nok .\t1\nno label\n"))
    with pytest.raises(HarnessError, match="SST-2 TSV not found"):
        td.read_sst2(tmp_path / "missing.tsv")


def test_wikitext_raw(tmp_path):
    raw = (" \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 is a game . \n \n = = Gameplay = = \n \n"
           " Players fight . \n \n = Tower Building = \n \n The tower is tall . \n")
    path = write(tmp_path / "wiki.test.raw", raw)
    assert td.read_wikitext(path).texts == ("Senjō no Valkyria 3 is a game .", "Players fight .",
                                            "The tower is tall .")
    assert td.read_wikitext(path, "article").texts == ("Senjō no Valkyria 3 is a game .\nPlayers fight .",
                                                       "The tower is tall .")
    with pytest.raises(HarnessError, match="is empty"):
        td.read_wikitext(write(tmp_path / "wiki.valid.raw", " = Only A Title = \n"))


def test_unreadable_file_named(tmp_path):
    path = write(tmp_path / "locked.tsv", "sentence\tlabel\n")
    path.chmod(0)
    try:
        if path.stat().st_mode and __import__("os").access(path, __import__("os").R_OK):
            pytest.skip("running as a user who can read mode-000 files")
        with pytest.raises(HarnessError, match="cannot read .*locked.tsv"):
            td.read_sst2(path)
    finally:
        path.chmod(0o644)


def test_strip_wiki_markup():
    text = ("[[File:A.jpg|thumb|Caption with [[Link|text]].]]Hi [[Page|shown]] and [[plain]] '''bold''' "
            "{{cite|x{{y}}}}[http://x.org label]<ref>r</ref>&amp; [[Category:Things]]{|\n| cell\n|}.")
    assert td.strip_wiki_markup(text) == "Hi shown and plain bold label& ."


def test_text_set_subset_and_fingerprint():
    data = td.TextSet("s", ("a", "b", "c"), (0, 1, 0))
    assert data.subset([2, 0]).texts == ("c", "a") and data.subset([2, 0]).labels == (0, 0)
    assert data.fingerprint != td.TextSet("s", ("a", "b", "c"), (0, 1, 1)).fingerprint
    assert data.renamed("t").fingerprint == data.fingerprint and data.renamed("t").name == "t"
    with pytest.raises(ValueError):
        td.TextSet("s", ("a",), ())


@pytest.fixture(scope="module")
def root():
    return resource_root()


def test_embedded_sets_have_their_documented_sizes(root):
    reviews = td.pang_lee_reviews(root)
    assert len(reviews) == 1500 and sum(reviews.labels) == 750
    assert len(td.rt_snippets(root)) == 4000
    assert len(td.lee_news(root)) == 300
    assert len(td.newsgroup_posts(root)) == 200
    wiki = td.wiki_paragraphs(root)
    assert len(wiki) > 1000 and all(len(t.split()) >= 20 for t in wiki.texts)
    assert sum("[[" in t or "{{" in t for t in wiki.texts) < 0.01 * len(wiki)


def test_embedded_benchmark_split_is_seeded_and_disjoint(root):
    a, b, c = (td.embedded_text_benchmark(seed, root) for seed in (0, 0, 1))
    assert len(a.id_train) == 1000 and len(a.id_test) == 500
    assert a.id_train.texts == b.id_train.texts and a.id_train.texts != c.id_train.texts
    assert not set(a.id_train.texts) & set(a.id_test.texts)
    assert {k: len(v) for k, v in a.ood.items()} == {"rt_snippets": 500, "lee_news": 300, "wiki_paragraphs": 500,
                                                     "newsgroup_posts": 200}
    with pytest.raises(HarnessError, match="cannot split 1500 texts"):
        td.split_train_test(td.pang_lee_reviews(root), 1500, 0)
    assert np.all(np.diff([a.ood["rt_snippets"].texts.index(t) for t in a.ood["rt_snippets"].texts]) > 0)
