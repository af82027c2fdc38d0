"""Data sources for the real benchmarks (CIFAR-100, ImageNet-100 and their OOD sets), read from files users have.

Formats: CIFAR-100 python pickles (`cifar-100-python/{train,test,meta}`), SVHN `test_32x32.mat`, image-folder trees
(DTD, Places365, LSUN_C, iSUN, the MOS iNaturalist/SUN/Places subsets), ImageNet-100 carved out of an ImageNet-1K
`train/` + `val/` root by wnid (val in class folders, or flat with a label file), and OpenOOD's
`benchmark_imglist/<bench>/<split>_<set>.txt` + `images_classic/` layout.

Every source has a probe: a cheap look at the files (counts, headers, pickle/.mat readability) that returns a
`SetProbe` (found / missing / incomplete / corrupted / mismatch) without decoding images, so `harness data check`
can print a table and `run` can refuse to start before any work when something is missing. Paths in specs are
relative to the data root: `--data-root DIR` or the `OODBENCH_DATA` environment variable.
"""

from __future__ import annotations

import codecs
import csv
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.data.sets import IMAGE_SUFFIXES, FileImageSet, ImageSet, list_images
from harness.data.sources import SetProbe, count_probe, first_unreadable, register_source
from harness.errors import HarnessError
from harness.paths import DATASETS_DIR

DATA_ROOT_ENV = "OODBENCH_DATA"
CIFAR_FILES = ("train", "test", "meta")


def resolve_data_root(given: str | Path | None) -> Path | None:
    """`--data-root` if given, else $OODBENCH_DATA, else None. A root that does not exist is a HarnessError."""
    text = str(given) if given is not None else os.environ.get(DATA_ROOT_ENV)
    if not text:
        return None
    root = Path(text).expanduser()
    if not root.is_dir():
        origin = "--data-root" if given is not None else f"${DATA_ROOT_ENV}"
        raise HarnessError(f"data root {root} (from {origin}) does not exist; point it at the directory holding the "
                           "benchmark data (see `python -m harness data check`)")
    return root.resolve()


def path_in_data_root(data_root: Path | None, path: str) -> Path:
    """`path` under the data root (an absolute `path` as it is), or one line saying how to give a data root."""
    if Path(path).is_absolute():
        return Path(path)
    if data_root is None:
        raise HarnessError(f"no data root for {path}: pass --data-root DIR or set {DATA_ROOT_ENV}")
    return Path(data_root) / path


# --- CIFAR-100 python pickles -----------------------------------------------------------------------------------

class RefusedClass(pickle.UnpicklingError):
    """A pickle named a class `ArrayUnpickler` does not load."""


class ArrayUnpickler(pickle.Unpickler):
    """Loads only numpy arrays, lists, dicts, str and bytes (what the CIFAR python pickles hold): any other class a
    pickle names is refused before anything could run."""

    ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode}  # how protocol-2 pickles store bytes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise RefusedClass(f"it refers to {module}.{name}, which a data file may not load")
        return self.ALLOWED[(module, name)]


def _unpickle(file: Path) -> dict[str, Any]:
    try:
        with open(file, "rb") as handle:
            data = ArrayUnpickler(handle, encoding="latin1").load()
    except RefusedClass as err:
        raise HarnessError(f"CIFAR pickle {file} was refused ({err}); re-extract cifar-100-python.tar.gz from its "
                           "official source") from None
    except Exception as err:  # noqa: BLE001  (a damaged pickle can raise almost anything; all mean "re-extract")
        raise HarnessError(f"cannot read CIFAR pickle {file} ({type(err).__name__}); re-extract "
                           "cifar-100-python.tar.gz") from None
    if not isinstance(data, dict):
        raise HarnessError(f"CIFAR pickle {file} holds a {type(data).__name__}, not a dict; re-extract "
                           "cifar-100-python.tar.gz")
    return data


def _cifar_split(file: Path, split: str, class_names: list[str]) -> ImageSet:
    data = _unpickle(file)
    if "data" not in data or "fine_labels" not in data:
        raise HarnessError(f"CIFAR pickle {file} lacks 'data'/'fine_labels' (keys: {sorted(data)[:6]}); is this "
                           "CIFAR-100 (not CIFAR-10)? re-extract cifar-100-python.tar.gz")
    pixels = np.asarray(data["data"])
    labels = np.asarray(data["fine_labels"], dtype=np.int64)
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072 or len(labels) != len(pixels):
        raise HarnessError(f"CIFAR pickle {file}: data {pixels.dtype} {pixels.shape} with {len(labels)} labels, "
                           "expected uint8 (N, 3072) and N labels; re-extract cifar-100-python.tar.gz")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise HarnessError(f"CIFAR pickle {file}: labels outside 0..{len(class_names) - 1}; re-extract the archive")
    images = torch.from_numpy(np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32)))
    return ImageSet(split, images, torch.from_numpy(labels))


def _cifar_class_names(folder: Path, expected: list[str]) -> list[str]:
    names = list(_unpickle(folder / "meta").get("fine_label_names", []))
    if names != list(expected):
        raise HarnessError(f"{folder / 'meta'} lists {len(names)} fine classes that do not match the spec's "
                           f"{len(expected)} CIFAR-100 class names; re-extract cifar-100-python.tar.gz")
    return names


def probe_cifar100_python(*, data_root: Path | None, path: str, expected: dict[str, int], class_names: list[str],
                          **_: Any) -> dict[str, SetProbe]:
    folder = path_in_data_root(data_root, path)
    missing = [f for f in CIFAR_FILES if not (folder / f).is_file()]
    if missing:
        return {s: SetProbe("missing", str(folder / s), expected=expected.get(s),
                            detail=f"lacks {', '.join(missing)}") for s in ("train", "test")}
    probes = {}
    try:
        _cifar_class_names(folder, class_names)
        for split in ("train", "test"):
            found = _cifar_split(folder / split, split, class_names)
            probes[split] = count_probe(folder / split, len(found), expected.get(split))
            if split == "train" and len(found) and len(np.unique(found.labels.numpy())) < len(class_names):
                probes[split] = SetProbe("mismatch", str(folder / split), len(found), expected.get(split),
                                         f"only {len(np.unique(found.labels.numpy()))} of {len(class_names)} "
                                         "classes present")
    except HarnessError as err:
        return {s: probes.get(s, SetProbe("corrupted", str(folder / s), expected=expected.get(s), detail=str(err)))
                for s in ("train", "test")}
    return probes


@register_source("cifar100_python", cached=False, probe=probe_cifar100_python)
def cifar100_python(*, data_root: Path | None, path: str, class_names: list[str], **_: Any) -> dict[str, ImageSet]:
    """CIFAR-100 from the python pickles: `data` uint8 (N, 3072) row-major RGB planes, `fine_labels`."""
    folder = path_in_data_root(data_root, path)
    for file in CIFAR_FILES:
        if not (folder / file).is_file():
            raise HarnessError(f"CIFAR-100 file {folder / file} is missing; extract cifar-100-python.tar.gz under "
                               "the data root")
    _cifar_class_names(folder, class_names)
    return {split: _cifar_split(folder / split, split, class_names) for split in ("train", "test")}


# --- SVHN .mat ----------------------------------------------------------------------------------------------------

def _load_svhn(file: Path) -> np.ndarray:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(file, variable_names=["X"])
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError, KeyError, IndexError, EOFError) as err:
        raise HarnessError(f"cannot read SVHN file {file} ({type(err).__name__}); download test_32x32.mat "
                           "again") from None
    pixels = mat.get("X")
    if pixels is None or pixels.ndim != 4 or pixels.shape[:3] != (32, 32, 3):
        raise HarnessError(f"SVHN file {file} has no (32, 32, 3, N) array 'X'; download test_32x32.mat again")
    return np.ascontiguousarray(pixels.transpose(3, 2, 0, 1)).astype(np.uint8)


def probe_svhn_mat(*, data_root: Path | None, path: str, expected: int | None = None, **_: Any) -> SetProbe:
    file = path_in_data_root(data_root, path)
    if not file.is_file():
        return SetProbe("missing", str(file), expected=expected)
    try:
        count = len(_load_svhn(file))
    except HarnessError as err:
        return SetProbe("corrupted", str(file), expected=expected, detail=str(err))
    return count_probe(file, count, expected)


@register_source("svhn_mat", cached=False, probe=probe_svhn_mat)
def svhn_mat(*, name: str, data_root: Path | None, path: str, **_: Any) -> ImageSet:
    """SVHN's `test_32x32.mat` (X: 32x32x3xN uint8), used unresized."""
    file = path_in_data_root(data_root, path)
    if not file.is_file():
        raise HarnessError(f"SVHN file {file} is missing; download test_32x32.mat from "
                           "http://ufldl.stanford.edu/housenumbers/")
    return ImageSet(name, torch.from_numpy(_load_svhn(file)))


# --- image-folder trees ------------------------------------------------------------------------------------------

def probe_image_tree(*, data_root: Path | None, path: str, expected: int | None = None, **_: Any) -> SetProbe:
    folder = path_in_data_root(data_root, path)
    if not folder.is_dir():
        return SetProbe("missing", str(folder), expected=expected)
    files = list_images(folder)
    return count_probe(folder, len(files), expected, first_unreadable(files))


@register_source("image_tree", cached=False, probe=probe_image_tree)
def image_tree(*, name: str, data_root: Path | None, path: str, size: int, channels: int,
               preprocess: str = "resize_center_crop", resize: int | None = None, **_: Any) -> FileImageSet:
    """Every image under a folder, recursively (class subfolders or flat), decoded with `preprocess`."""
    folder = path_in_data_root(data_root, path)
    if not folder.is_dir():
        raise HarnessError(f"image folder {folder} for set {name!r} does not exist; see `python -m harness data "
                           "check` for the expected layout")
    files = list_images(folder)
    if not files:
        raise HarnessError(f"image folder {folder} for set {name!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return FileImageSet(name, tuple(str(f) for f in files), size, channels, preprocess, resize)


def class_folders(folder: Path) -> list[str]:
    """The class subfolder names of an ImageFolder-style `folder`, sorted (torchvision's class order)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _split_files(root: Path, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for index, name in enumerate(classes):
        found = list_images(root / split / name) if (root / split / name).is_dir() else []
        files += found
        labels += [index] * len(found)
    return files, labels


def probe_image_folder_splits(*, data_root: Path | None, path: str, class_names: list[str], **_: Any
                              ) -> dict[str, SetProbe]:
    root = path_in_data_root(data_root, path)
    probes = {}
    for split in ("train", "test"):
        unknown = sorted(set(class_folders(root / split)) - set(class_names))
        if unknown:
            probes[split] = SetProbe("mismatch", str(root / split), detail=f"class folder {unknown[0]!r} is not one "
                                     f"of the {len(class_names)} classes of {root / 'train'}")
            continue
        files, _ = _split_files(root, split, class_names)
        probes[split] = count_probe(root / split, len(files), None, first_unreadable(files))
    return probes


@register_source("image_folder_splits", cached=False, probe=probe_image_folder_splits)
def image_folder_splits(*, data_root: Path | None, path: str, class_names: list[str], size: int, channels: int,
                        preprocess: str = "resize_center_crop", resize: int | None = None, **_: Any
                        ) -> dict[str, FileImageSet]:
    """An ID set in torchvision's ImageFolder layout: `<path>/{train,test}/<class>/*`, labels by sorted class name."""
    root = path_in_data_root(data_root, path)
    sets = {}
    for split in ("train", "test"):
        files, labels = _split_files(root, split, class_names)
        if not files:
            raise HarnessError(f"{root / split} holds no images in class folders; give --id NAME=DIR with "
                               "DIR/train/<class>/* and DIR/test/<class>/*")
        sets[split] = FileImageSet(split, tuple(str(f) for f in files), size, channels, preprocess, resize,
                                   torch.tensor(labels, dtype=torch.long))
    return sets


# --- ImageNet-100 carved from ImageNet-1K -------------------------------------------------------------------------

def read_wnids(file: Path) -> list[str]:
    wnids = [line.split()[0] for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if len(set(wnids)) != len(wnids):
        raise HarnessError(f"class list {file} repeats a wnid; each class must appear once")
    return wnids


def _val_labels(root: Path, label_files: list[str]) -> tuple[Path, dict[str, str]] | None:
    """{image file stem: wnid} from the first label file found: `<file> <wnid>` lines, or Kaggle's
    LOC_val_solution.csv (`ImageId,PredictionString` with the wnid first)."""
    for name in label_files:
        file = root / name
        if not file.is_file():
            continue
        labels = {}
        if file.suffix == ".csv":
            with open(file, newline="") as handle:
                for row in csv.DictReader(handle):
                    labels[Path(row["ImageId"]).stem] = row["PredictionString"].split()[0]
        else:
            for line in file.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    labels[Path(parts[0]).stem] = parts[1]
        return file, labels
    return None


def _imagenet_split(root: Path, split: str, wnids: list[str],
                    label_files: list[str]) -> tuple[list[Path], list[int], str]:
    """Files and class indices of one split, and how they were found. Raises HarnessError on layout problems."""
    folder = root / split
    if not folder.is_dir():
        raise HarnessError(f"ImageNet {split} folder {folder} does not exist; the root needs train/ and val/")
    present = {p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("n")}
    if present or split == "train":
        absent = [w for w in wnids if w not in present]
        if absent:
            raise HarnessError(f"{folder} lacks {len(absent)} of the {len(wnids)} ImageNet-100 class folders "
                               f"({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''}); the class folders "
                               "must be named by the wnids of datasets/imagenet100_classes.txt")
        files, labels = [], []
        for index, wnid in enumerate(wnids):
            found = list_images(folder / wnid)
            files += found
            labels += [index] * len(found)
        return files, labels, "class folders"
    table = _val_labels(root, label_files)
    if table is None:
        raise HarnessError(f"{folder} is flat (no class folders) and no label file ({', '.join(label_files)}) is "
                           f"under {root}; add one or sort val/ into wnid folders")
    label_file, labels_of = table
    index_of = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for file in list_images(folder):
        wnid = labels_of.get(file.stem)
        if wnid is None:
            raise HarnessError(f"{file.name} in {folder} has no entry in {label_file}; use the label file that "
                               "belongs to this val/ folder")
        if wnid in index_of:
            files.append(file)
            labels.append(index_of[wnid])
    return files, labels, f"flat, labels from {label_file.name}"


def probe_imagenet_wnids(*, data_root: Path | None, path: str, classes_file: str, expected: dict[str, int],
                         val_label_files: list[str] = (), min_per_class: int = 1, **_: Any) -> dict[str, SetProbe]:
    root = path_in_data_root(data_root, path)
    wnids = read_wnids(DATASETS_DIR / classes_file)
    probes = {}
    for split, folder in (("train", "train"), ("test", "val")):
        where = str(root / folder)
        if not (root / folder).is_dir():
            probes[split] = SetProbe("missing", where, expected=expected.get(split))
            continue
        try:
            files, labels, how = _imagenet_split(root, folder, wnids, list(val_label_files))
        except HarnessError as err:
            probes[split] = SetProbe("mismatch", where, expected=expected.get(split), detail=str(err))
            continue
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(wnids))
        sparse = int((counts < (min_per_class if split == "train" else 1)).sum())
        probe = count_probe(root / folder, len(files), expected.get(split), first_unreadable(files))
        if probe.status == "found" and sparse:
            probe = SetProbe("incomplete", where, len(files), expected.get(split),
                             f"{sparse} classes have fewer than {min_per_class} images")
        probes[split] = SetProbe(probe.status, where, probe.count, probe.expected,
                                 probe.detail or how)
    return probes


@register_source("imagenet_wnids", cached=False, probe=probe_imagenet_wnids)
def imagenet_wnids(*, data_root: Path | None, path: str, classes_file: str, size: int, channels: int,
                   val_label_files: list[str] = (), preprocess: str = "resize_center_crop", resize: int | None = None,
                   **_: Any) -> dict[str, FileImageSet]:
    """The classes of `classes_file` (wnids, in order = label index) from an ImageNet-1K root with train/ and val/."""
    root = path_in_data_root(data_root, path)
    wnids = read_wnids(DATASETS_DIR / classes_file)
    sets = {}
    for split, folder in (("train", "train"), ("test", "val")):
        files, labels, _how = _imagenet_split(root, folder, wnids, list(val_label_files))
        sets[split] = FileImageSet(split, tuple(str(f) for f in files), size, channels, preprocess, resize,
                                   torch.tensor(labels, dtype=torch.long))
    return sets


# --- OpenOOD image lists -------------------------------------------------------------------------------------------

def read_imglist(file: Path, images: Path) -> tuple[list[Path], list[int]]:
    """The images (under `images`) and labels of an OpenOOD image list: `<image path> <label>` lines, -1 (or no
    label) for an OOD image."""
    files, labels = [], []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            label = int(parts[1]) if len(parts) == 2 else -1
        except ValueError:
            raise HarnessError(f"{file} line {number} is not '<image path> <label>'; list one image and its class "
                               "index (-1 for an OOD image) per line, as OpenOOD's image lists do") from None
        files.append(images / parts[0])
        labels.append(label)
    return files, labels


def probe_openood_imglist(*, data_root: Path | None, path: str = "", imglist: str | None = None,
                          imglists: dict[str, str] | None = None, images: str = "images_classic",
                          **_: Any) -> SetProbe | dict[str, SetProbe]:
    base = path_in_data_root(data_root, path)
    lists = imglists or {"": imglist}
    probes = {}
    for split, relative in lists.items():
        file = base / relative
        if not file.is_file():
            probes[split] = SetProbe("missing", str(file))
            continue
        try:
            files, _ = read_imglist(file, base / images)
        except HarnessError as err:
            probes[split] = SetProbe("corrupted", str(file), detail=str(err))
            continue
        present = [f for f in files if f.is_file()]
        probe = count_probe(base / images, len(present), len(files), first_unreadable(present))
        probes[split] = SetProbe(probe.status, str(file), probe.count, probe.expected,
                                 probe.detail or f"images under {base / images}")
    return probes if imglists else probes[""]


@register_source("openood_imglist", cached=False, probe=probe_openood_imglist)
def openood_imglist(*, data_root: Path | None, size: int, channels: int, path: str = "",
                    imglist: str | None = None, imglists: dict[str, str] | None = None,
                    images: str = "images_classic", preprocess: str = "resize_center_crop", resize: int | None = None,
                    name: str = "ood", **_: Any) -> FileImageSet | dict[str, FileImageSet]:
    """OpenOOD's `<root>/benchmark_imglist/<bench>/<split>_<set>.txt` (`<path> <label>` lines, -1 = OOD) with images
    under `<root>/images_classic/`. `imglist` gives one OOD set; `imglists` ({"train": ..., "test": ...}) ID data."""
    base = path_in_data_root(data_root, path)
    sets = {}
    for split, relative in (imglists or {name: imglist}).items():
        file = base / relative
        if not file.is_file():
            raise HarnessError(f"OpenOOD image list {file} is missing; download OpenOOD's benchmark_imglist")
        files, labels = read_imglist(file, base / images)
        absent = [f for f in files if not f.is_file()]
        if absent:
            raise HarnessError(f"{len(absent)} images listed in {file} are missing (first: {absent[0]}); download "
                               f"OpenOOD's {images}")
        label_tensor = torch.tensor(labels, dtype=torch.long) if imglists else None
        sets[split] = FileImageSet(split, tuple(str(f) for f in files), size, channels, preprocess, resize,
                                   label_tensor)
    return sets if imglists else sets[name]
