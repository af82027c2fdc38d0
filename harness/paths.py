"""The one place where the harness finds its shipped data: benchmark specs, the tiny model, committed results.

Lookup order of the data home (a folder holding `datasets/`, `models/` and `results/`):
1. `$OODBENCH_HOME`, when set;
2. the checkout the package runs from (an editable install, or `python -m harness` in a clone);
3. the copy an installed wheel carries inside the package (`harness/_shipped/`, made by `setup.py`'s build step).
`CODE_ROOT` is the folder above the package: the git checkout whose commit a record names, when there is one.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from harness.errors import HarnessError

HOME_ENV = "OODBENCH_HOME"
PACKAGE_ROOT = Path(__file__).resolve().parent
CODE_ROOT = PACKAGE_ROOT.parent
SHIPPED_DIR = PACKAGE_ROOT / "_shipped"


def data_home() -> Path:
    """The folder holding `datasets/`, `models/` and `results/` (see the module docstring for the order)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    if (CODE_ROOT / "datasets").is_dir():
        return CODE_ROOT
    return SHIPPED_DIR


DATA_HOME = data_home()
DATASETS_DIR = DATA_HOME / "datasets"
MODELS_DIR = DATA_HOME / "models"
RESULTS_DIR = DATA_HOME / "results"
REFERENCE_DIR = RESULTS_DIR / "reference"
EXPECTATIONS_DIR = RESULTS_DIR / "expectations"
PUBLISHED_FILE = RESULTS_DIR / "published.json"


def recorded_path(path: str | Path) -> str:
    """A path as records store it: relative to the data home when under it (`models/tiny-sd-mnist5k`), so records of
    the shipped model do not name the checkout's location; a path elsewhere (a user's model) absolute."""
    resolved = Path(path).expanduser().resolve()
    return str(resolved.relative_to(DATA_HOME)) if resolved.is_relative_to(DATA_HOME) else str(resolved)


# A name that becomes a file or folder name (a benchmark, a set): letters, digits, '_', '-', '.' and '+', starting
# with a letter or digit, never '..', at most 100 characters.
SAFE_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def check_name(value: object, what: str) -> str:
    """`value` when it is a safe file name (`SAFE_NAME`), else a one-line error naming `what`."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise HarnessError(f"{what} {value!r} cannot name a file: use letters, digits, '_', '-', '.' or '+' (starting "
                           "with a letter or digit, no '..', at most 100 characters)")
    return value


def path_under(root: Path, *parts: str) -> Path:
    """`root / parts...` as given, once proved to stay inside `root` when resolved (symbolic links included)."""
    base = Path(root).expanduser().resolve()
    if not base.joinpath(*parts).resolve().is_relative_to(base):
        raise HarnessError(f"{'/'.join(map(str, parts))} would lead outside {root}; refusing to write there")
    return Path(root).joinpath(*parts)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
