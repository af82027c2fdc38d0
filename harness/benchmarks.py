"""Benchmark specs (JSON data files under `datasets/`) and their loading into image sets.

A spec names the ID source, each OOD set with its source and options, the normalisation, and the default classifier
recipe. `--benchmark NAME` reads `datasets/NAME.json`; `--benchmark path/to/spec.json` reads any spec file, so a user
can add OOD sets (e.g. `{"name": "mine", "source": "image_folder", "path": "/data/mine"}`) without code.

Specs of on-disk benchmarks (cifar100, imagenet100) add, per set: `locations` (alternative layouts tried in order,
e.g. the papers' folders then OpenOOD's image lists; each with its `source`, `path` under the data root and
`layout`), `expected` image counts, `from` (where the data comes from), `preprocess`, and `eval_count` +
`subset_seed` (the evaluation subset, drawn once by that seed so every method sees the same images). `presets`
scale the classifier's epochs and cap subset sizes (`paper` = the papers' protocol); `storage` says whether sets
are decoded into memory (`memory`) or read from files batch by batch (`files`, ImageNet scale).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import Cache
from harness.config import content_hash
from harness.data import PREPROCESSING, AnyImageSet, FileImageSet, ImageSet, get_probe, get_source, source_is_cached
from harness.errors import HarnessError

DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
# Part of the cache key of built benchmark data: bump it whenever a data source's output changes for the same spec.
DATA_VERSION = 2


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    image_size: int
    channels: int
    num_classes: int
    class_names: tuple[str, ...]
    prompt_names: tuple[str, ...]  # natural names for text prompts (no '_'), one per class
    mean: tuple[float, ...]
    std: tuple[float, ...]
    id: dict[str, Any]
    ood: tuple[dict[str, Any], ...]
    classifier: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    presets: dict[str, dict[str, Any]] = field(default_factory=lambda: {"paper": {}})
    storage: str = "memory"
    # the class-name lists of the official code, by use (e.g. "dream_ood", "ncis_embedding", "ncis_generation")
    official_prompt_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def preset(self, name: str) -> dict[str, Any]:
        """Scalings of the preset `name`: `epoch_scale` (classifier epochs), `max_train`/`max_test`/`max_ood`
        (caps on set sizes, drawn by each set's subset seed). `paper` is the papers' protocol, unscaled."""
        if name not in self.presets:
            raise HarnessError(f"benchmark {self.name} has no preset {name!r}; choose one of "
                               f"{', '.join(sorted(self.presets))}")
        return self.presets[name]

    @property
    def ood_names(self) -> list[str]:
        return [entry["name"] for entry in self.ood]

    def with_extra_ood(self, folders: dict[str, str]) -> BenchmarkSpec:
        """The same spec plus image-folder OOD sets given on the command line (`--ood NAME=PATH`)."""
        clash = sorted(set(folders) & set(self.ood_names))
        if clash:
            raise HarnessError(f"--ood {clash[0]}=... clashes with the benchmark's own OOD set {clash[0]!r}; "
                               "pick another name")
        extra = tuple({"name": n, "source": "image_folder", "path": str(Path(p).expanduser().resolve())}
                      for n, p in folders.items())
        return BenchmarkSpec(**{**self.__dict__, "ood": self.ood + extra})


def _prompt_names(raw: dict[str, Any], class_names: list[str], path: Path) -> tuple[str, ...]:
    """The spec's `prompt_names` (natural words for prompts), else the class names with '_' read as a space."""
    names = raw.get("prompt_names") or [name.replace("_", " ") for name in class_names]
    if len(names) != len(class_names):
        raise HarnessError(f"benchmark spec {path}: {len(names)} prompt_names for {len(class_names)} classes; "
                           "give one per class")
    return tuple(names)


def available_benchmarks() -> list[str]:
    return sorted(p.stem for p in DATASETS_DIR.glob("*.json"))


def load_spec(name_or_path: str) -> BenchmarkSpec:
    """Spec of a named benchmark (`datasets/<name>.json`) or of a spec file path."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = DATASETS_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise HarnessError(f"unknown benchmark {name_or_path!r}; available: {', '.join(available_benchmarks())} "
                               "(or pass a spec file path ending in .json)")
    if not path.exists():
        raise HarnessError(f"benchmark spec file {path} does not exist; pass an existing .json spec")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HarnessError(f"benchmark spec {path} is not valid JSON ({err.msg} at line {err.lineno}); fix the file") \
            from None
    required = ("name", "image_size", "channels", "num_classes", "class_names", "mean", "std", "id", "ood")
    missing = [key for key in required if key not in raw]
    if missing:
        raise HarnessError(f"benchmark spec {path} lacks {', '.join(missing)}; "
                           "see datasets/mnist5k.json for the format")
    names = [entry.get("name") for entry in raw["ood"]]
    if None in names or len(set(names)) != len(names):
        raise HarnessError(f"benchmark spec {path}: every OOD entry needs a distinct 'name'")
    class_names = raw["class_names"]
    if isinstance(class_names, str):  # a class-list file next to the spec, one name (e.g. wnid) per line
        from harness.real_data import read_wnids

        class_names = read_wnids(path.parent / class_names)
    if len(class_names) != int(raw["num_classes"]):
        raise HarnessError(f"benchmark spec {path}: {len(class_names)} class names for num_classes "
                           f"{raw['num_classes']}; fix the spec")
    for entry in [raw["id"], *raw["ood"]]:
        for location in _locations(entry):
            if location.get("preprocess", "resize_center_crop") not in PREPROCESSING:
                raise HarnessError(f"benchmark spec {path}: preprocess {location['preprocess']!r} unknown; use one "
                                   f"of {', '.join(PREPROCESSING)}")
    presets = {"paper": {}, **raw.get("presets", {})}
    storage = raw.get("storage", "memory")
    if storage not in ("memory", "files"):
        raise HarnessError(f"benchmark spec {path}: storage {storage!r} must be 'memory' or 'files'")
    return BenchmarkSpec(
        name=raw["name"], image_size=int(raw["image_size"]), channels=int(raw["channels"]),
        num_classes=int(raw["num_classes"]), class_names=tuple(class_names),
        prompt_names=_prompt_names(raw, class_names, path),
        official_prompt_names={use: tuple(names) for use, names in raw.get("official_prompt_names", {}).items()},
        mean=tuple(raw["mean"]),
        std=tuple(raw["std"]), id=dict(raw["id"]), ood=tuple(dict(e) for e in raw["ood"]),
        classifier=dict(raw.get("classifier", {})), description=raw.get("description", ""),
        presets=presets, storage=storage,
    )


# Keys that describe a set for people (data check) rather than how to read it.
_DESCRIPTIVE = ("locations", "note", "from", "layout")


def _locations(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternative on-disk layouts of a set, each merged with the set's shared options."""
    shared = {k: v for k, v in entry.items() if k not in _DESCRIPTIVE}
    alternatives = entry.get("locations") or [{}]
    return [{**shared, **alternative} for alternative in alternatives]


@dataclass(frozen=True)
class DataRow:
    """One line of `harness data check`: a set (or an ID split), its status and where it was looked for."""

    set: str
    status: str
    count: int | None
    expected: int | None
    path: str
    detail: str = ""
    layout: str = ""
    origin: str = ""


@dataclass(frozen=True)
class DataCheck:
    rows: tuple[DataRow, ...]
    chosen: dict[str, dict[str, Any]]   # set name ("id" for the ID entry) -> the location that will be read

    def problems(self, allow_incomplete: bool = False) -> list[DataRow]:
        ok = {"found", "embedded"} | ({"incomplete"} if allow_incomplete else set())
        return [row for row in self.rows if row.status not in ok]


def _probe_location(location: dict[str, Any], spec: BenchmarkSpec, data_root: Path | None) -> Any:
    probe = get_probe(location["source"])
    if probe is None:
        return None
    options = {k: v for k, v in location.items() if k != "source"}
    options.setdefault("class_names", list(spec.class_names))
    return probe(data_root=data_root, **options)


def _where(location: dict[str, Any], data_root: Path | None) -> str:
    """The file or folder a location is read from (an OpenOOD location: its image list)."""
    lists = location.get("imglists") or {}
    relative = Path(location["path"]) / (location.get("imglist") or next(iter(lists.values()), ""))
    return str(data_root / relative if data_root else relative)


def _entry_rows(label: str, entry: dict[str, Any], spec: BenchmarkSpec, data_root: Path | None,
                splits: tuple[str, ...]) -> tuple[list[DataRow], dict[str, Any]]:
    """Probe the locations of one set in order; the first one not missing is the one reported and read."""
    tried, details = [], []
    for location in _locations(entry):
        if data_root is None and not source_is_cached(location["source"]):
            tried.append(location)
            details.append("no data root")
            continue
        probes = _probe_location(location, spec, data_root)
        if probes is None:
            return [DataRow(f"{label} {s}".strip(), "embedded", None, None, f"source {location['source']}")
                    for s in splits], location
        probes = probes if isinstance(probes, dict) else {"": probes}
        if all(p.status == "missing" for p in probes.values()):
            tried.append(location)
            details += [p.detail for p in list(probes.values())[:1] if p.detail]
            continue
        rows = [DataRow(f"{label} {split}".strip(), p.status, p.count, p.expected, p.path, p.detail,
                        location.get("layout", ""), entry.get("from", "")) for split, p in probes.items()]
        return rows, location
    looked = " or ".join(_where(loc, data_root) for loc in tried)
    layouts = " or ".join(loc.get("layout", loc["path"]) for loc in tried)
    expected = entry.get("expected")
    rows = [DataRow(f"{label} {split}".strip(), "missing", None,
                    expected.get(split) if isinstance(expected, dict) else expected, looked,
                    "; ".join(dict.fromkeys(details)), layouts, entry.get("from", "")) for split in splits]
    return rows, None


def reads_data_root(spec: BenchmarkSpec) -> bool:
    """Whether any set of `spec` is read from under the data root (embedded benchmarks need none)."""
    return any(not source_is_cached(location["source"])
               for entry in [spec.id, *spec.ood] for location in _locations(entry))


def check_data(spec: BenchmarkSpec, data_root: Path | None) -> DataCheck:
    """Probe every set of `spec` under `data_root` (cheap: counts and headers, no decoding)."""
    rows, chosen = [], {}
    id_rows, chosen["id"] = _entry_rows("ID", spec.id, spec, data_root, ("train", "test"))
    rows += id_rows
    for entry in spec.ood:
        entry_rows, chosen[entry["name"]] = _entry_rows(entry["name"], entry, spec, data_root, ("",))
        rows += entry_rows
    return DataCheck(tuple(rows), chosen)


def data_problem_message(spec: BenchmarkSpec, check: DataCheck, allow_incomplete: bool) -> str | None:
    """One line naming the first unusable set, or None when every set can be read."""
    problems = check.problems(allow_incomplete)
    if not problems:
        return None
    row = problems[0]
    what = {"missing": "is missing", "incomplete": f"is incomplete ({row.count} of {row.expected} images)",
            "corrupted": "is corrupted", "mismatch": "does not match the spec"}.get(row.status, row.status)
    more = f" and {len(problems) - 1} more set(s) need attention" if len(problems) > 1 else ""
    detail = f": {row.detail}" if row.detail else ""
    hint = " (or pass --allow-incomplete)" if row.status == "incomplete" else ""
    return (f"benchmark {spec.name}: set {row.set!r} {what} at {row.path}{detail}{more}; see `python -m harness data "
            f"check --benchmark {spec.name}` for the expected layout{hint}")


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: ID train/test sets and the OOD test sets, all at the spec's resolution. `provenance`
    says, per set, which source and path were read and which subset was drawn (stored in every record)."""

    spec: BenchmarkSpec
    train: AnyImageSet
    test: AnyImageSet
    ood: dict[str, AnyImageSet]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


def _build_set(location: dict[str, Any], spec: BenchmarkSpec, data_root: Path | None) -> Any:
    skip = ("source", "expected", "eval_count", "subset_seed", *_DESCRIPTIVE)
    options = {k: v for k, v in location.items() if k not in skip}
    options.setdefault("seed", 0)
    options.setdefault("class_names", list(spec.class_names))
    return get_source(location["source"])(size=spec.image_size, channels=spec.channels, data_root=data_root,
                                          **options)


def _renamed(image_set: AnyImageSet, name: str) -> AnyImageSet:
    if isinstance(image_set, FileImageSet):
        return image_set.renamed(name)
    return ImageSet(name, image_set.images, image_set.labels)


def _draw(image_set: AnyImageSet, count: int | None, seed: int) -> tuple[AnyImageSet, dict[str, int]]:
    """A seeded subset of `count` images (sorted indices), or the whole set when it is not larger."""
    total = len(image_set)
    if count is None or count >= total:
        return image_set, {"used": total, "available": total}
    keep = np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))
    return image_set.subset(keep), {"used": count, "available": total, "subset_seed": seed}


def _store(image_set: AnyImageSet, storage: str) -> AnyImageSet:
    """Decode a file-backed set into memory when the spec's storage is `memory`."""
    if storage == "memory" and isinstance(image_set, FileImageSet):
        from harness.data import load_image_files

        return load_image_files(image_set.files, image_set.name, image_set.size, image_set.channels,
                                image_set.preprocess, image_set.resize, image_set.labels)
    return image_set


def _cap(*limits: int | None) -> int | None:
    given = [int(v) for v in limits if v is not None]
    return min(given) if given else None


def load_benchmark(spec: BenchmarkSpec, cache: Cache, data_root: Path | None = None, preset: str = "paper",
                   check: DataCheck | None = None) -> Benchmark:
    """Build every set of `spec`. Sets built from package data are cached; sets read from the user's disk (real
    benchmarks, `--ood` folders) are read fresh. Evaluation subsets and preset caps are drawn by each set's
    `subset_seed` and recorded in `provenance`."""
    limits = spec.preset(preset)
    check = check or check_data(spec, data_root)
    chosen = {name: loc for name, loc in check.chosen.items() if loc is not None}
    if "id" not in chosen or len(chosen) != 1 + len(spec.ood):
        raise HarnessError(data_problem_message(spec, check, allow_incomplete=True)
                           or f"benchmark {spec.name}: a set has no readable location")

    def cacheable(location: dict[str, Any]) -> bool:
        return location["source"] != "image_folder" and source_is_cached(location["source"])

    cached_names = [n for n, loc in chosen.items() if cacheable(loc)]
    built: dict[str, Any] = {}
    if cached_names:
        key = content_hash(DATA_VERSION, spec.image_size, spec.channels, [chosen[n] for n in cached_names])
        built = cache.get_or_compute("benchmark-data", key,
                                     lambda: {n: _build_set(chosen[n], spec, data_root) for n in cached_names})
    for name, location in chosen.items():
        if name not in built:
            built[name] = _build_set(location, spec, data_root)

    provenance: dict[str, Any] = {"preset": preset, "data_root": str(data_root) if data_root else None, "sets": {}}

    def finish(name: str, image_set: AnyImageSet, location: dict[str, Any], count: int | None) -> AnyImageSet:
        seed = int(location.get("subset_seed", 0))
        image_set, drawn = _draw(_renamed(image_set, name), count, seed)
        provenance["sets"][name] = {"source": location["source"], "path": location.get("path"), **drawn}
        return _store(image_set, spec.storage)

    id_location = chosen["id"]
    train = finish("train", built["id"]["train"], id_location, limits.get("max_train"))
    test = finish("test", built["id"]["test"], id_location, _cap(id_location.get("eval_count"), limits.get("max_test")))
    ood = {entry["name"]: finish(entry["name"], built[entry["name"]], chosen[entry["name"]],
                                 _cap(chosen[entry["name"]].get("eval_count"), limits.get("max_ood")))
           for entry in spec.ood}
    return Benchmark(spec, train, test, ood, provenance)

