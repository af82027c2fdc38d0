"""Benchmark specs (JSON data files under `datasets/`) and their loading into image sets.

A spec names the ID source, each OOD set with its source and options, the normalisation, and the default classifier
recipe. `--benchmark NAME` reads `datasets/NAME.json`; `--benchmark path/to/spec.json` reads any spec file, so a user
can add OOD sets (e.g. `{"name": "mine", "group": "far", "source": "image_folder", "path": "/data/mine"}`) without
code.

Specs of on-disk benchmarks (cifar100, imagenet100) add, per set: `locations` (alternative layouts tried in order,
e.g. the papers' folders then OpenOOD's image lists; each with its `source`, `path` under the data root and
`layout`), `expected` image counts, `from` (where the data comes from), `preprocess`, and `eval_count` +
`subset_seed` (the evaluation subset, drawn once by that seed so every method sees the same images). `presets`
scale the classifier's epochs and cap subset sizes (`paper` = the papers' protocol); `storage` says whether sets
are decoded into memory (`memory`) or read from files batch by batch (`files`, ImageNet scale).

`modality` is `image` (default) or `text`. A text spec's sets are `harness.data.text.TextSet`s; it needs no
image_size/channels/mean/std, may name its `text_encoder` (`{"name": "spacy-md"}`, or `{"name": "albert", "path":
DIR under the data root or absolute, "pooling": "mean" | "pooler"}`) and the metric columns of its leaderboard
(`leaderboard_metrics`, default fpr95 and auroc; any of fpr95, auroc, aupr_in, aupr_out).

Every OOD entry names its `group`, `near` or `far` (OpenOOD v1.5's split; `groups_note` cites where each spec's
grouping comes from): records carry the near- and far-OOD averages beside the overall one. `baselines` names, per
method kind (`*` for every other kind), the label every other label of that kind is compared with
(`harness.records.statistics`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import MAX_SEED, is_number, is_whole
from harness.data.sets import PREPROCESSING
from harness.errors import HarnessError
from harness.paths import DATASETS_DIR, check_name

MODALITIES = ("image", "text")
LEADERBOARD_METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out")


@dataclass(frozen=True)
class Preset:
    """A benchmark's protocol preset: `epoch_scale` scales the classifier epochs; `max_train`/`max_test`/`max_ood`
    cap set sizes (drawn by each set's subset seed)."""

    name: str
    epoch_scale: float | None = None
    max_train: int | None = None
    max_test: int | None = None
    max_ood: int | None = None
    description: str = ""

    def scale_epochs(self, epochs: int) -> int:
        """`epochs` under this preset's `epoch_scale`, never below 1."""
        return epochs if self.epoch_scale is None else max(1, round(epochs * float(self.epoch_scale)))


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    image_size: int = 0  # image fields: 0 / () for text specs
    channels: int = 0
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    prompt_names: tuple[str, ...] = ()  # natural names for text prompts (no '_'), one per class
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    id: dict[str, Any] = field(default_factory=dict)
    ood: tuple[dict[str, Any], ...] = ()
    modality: str = "image"
    text_encoder: dict[str, Any] = field(default_factory=dict)
    leaderboard_metrics: tuple[str, ...] = ("fpr95", "auroc")
    classifier: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    presets: dict[str, dict[str, Any]] = field(default_factory=lambda: {"paper": {}})
    storage: str = "memory"
    # the class-name lists of the official code, by use (e.g. "dream_ood", "ncis_embedding", "ncis_generation")
    official_prompt_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # the spec file's own name: a variant (`mnist5k:resnet-bn`) is named `mnist5k-resnet-bn` but takes the methods'
    # per-benchmark defaults of `mnist5k`
    family: str = ""
    variants: tuple[str, ...] = ()
    # the seed-std targets (pp) the leaderboard marks rows against: "average_auroc" by method kind ("*" for every
    # other kind), "id_accuracy"; empty = no marks
    stability_targets: dict[str, Any] = field(default_factory=dict)
    # the label each method kind is compared with ("*" for every other kind), e.g. {"density": "flow(variant=mle)",
    # "*": "energy"}; empty = no comparison
    baselines: dict[str, str] = field(default_factory=dict)

    def baseline(self, kind: str) -> str | None:
        """The label a method of `kind` is compared with (`baselines`), None when the spec names none."""
        return self.baselines.get(kind, self.baselines.get("*"))

    def stability_target(self, metric: str, kind: str) -> float | None:
        """The seed-std target (pp) of `metric` ("average_auroc" or "id_accuracy") for a method of `kind`."""
        target = self.stability_targets.get(metric)
        return target.get(kind, target.get("*")) if isinstance(target, dict) else target

    def preset(self, name: str) -> Preset:
        """The preset `name` (`paper` is the papers' protocol, unscaled)."""
        if name not in self.presets:
            raise HarnessError(f"benchmark {self.name} has no preset {name!r}; choose one of "
                               f"{', '.join(sorted(self.presets))}")
        return Preset(name, **self.presets[name])

    @property
    def ood_names(self) -> list[str]:
        return [entry["name"] for entry in self.ood]

    @property
    def ood_groups(self) -> dict[str, str]:
        """OOD set name -> its group ("near" or "far"), for the sets that have one (an `--ood` set may not)."""
        return {entry["name"]: entry["group"] for entry in self.ood if "group" in entry}

    def with_extra_ood(self, folders: dict[str, str], groups: dict[str, str] | None = None) -> BenchmarkSpec:
        """The same spec plus image-folder OOD sets given on the command line (`--ood [GROUP:]NAME=PATH`), each in
        its OOD group ("near" or "far") where `groups` names one."""
        if folders and self.modality != "image":
            raise HarnessError(f"--ood adds image folders; {self.name} is a {self.modality} benchmark (add text sets "
                               "to a copy of its spec file instead)")
        for name in folders:
            check_name(name, "--ood NAME")
        clash = sorted(set(folders) & set(self.ood_names))
        if clash:
            raise HarnessError(f"--ood {clash[0]}=... clashes with the benchmark's own OOD set {clash[0]!r}; "
                               "pick another name")
        for name, group in (groups or {}).items():
            check_group(group, f"--ood {group}:{name}=...")
        extra = tuple({"name": n, "source": "image_folder", "path": str(Path(p).expanduser().resolve()),
                       **({"group": groups[n]} if n in (groups or {}) else {})} for n, p in folders.items())
        return BenchmarkSpec(**{**self.__dict__, "ood": self.ood + extra})

    def with_id(self, name: str, path: str) -> BenchmarkSpec:
        """The same benchmark (OOD sets, presets, recipe, per-family method defaults) with the user's ID set
        (`--id NAME=DIR`): DIR/{train,test}/<class>/* (ImageFolder: classes are the sorted train folders) or
        DIR/train.txt and DIR/test.txt (OpenOOD image lists, `<image path relative to DIR> <class index>`). The spec
        is named `<benchmark>-id-<NAME>`, so its records and leaderboard never mix with the benchmark's own."""
        check_name(name, "--id NAME")
        if self.modality != "image":
            raise HarnessError(f"--id takes image folders; {self.name} is a {self.modality} benchmark")
        root = Path(path).expanduser().resolve()
        if (root / "train.txt").is_file() and (root / "test.txt").is_file():
            classes = [str(c) for c in range(imglist_class_count(root / "train.txt", root))]
            location = {"source": "openood_imglist", "path": str(root), "images": ".",
                        "imglists": {"train": "train.txt", "test": "test.txt"}}
        elif (root / "train").is_dir() and (root / "test").is_dir():
            classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
            location = {"source": "image_folder_splits", "path": str(root)}
        else:
            raise HarnessError(f"--id {name}={path}: {root} holds neither train/ and test/ class folders (ImageFolder) "
                               "nor train.txt and test.txt (OpenOOD image lists); give a directory with one of the two")
        if len(classes) < 2:
            raise HarnessError(f"--id {name}={path}: {len(classes)} class(es) found in {root}; an ID set needs at "
                               "least two classes")
        return BenchmarkSpec(**{**self.__dict__, "name": f"{self.name}-id-{name}", "num_classes": len(classes),
                                "class_names": tuple(classes), "prompt_names": tuple(c.replace("_", " ")
                                                                                     for c in classes),
                                "official_prompt_names": {}, "id": {"locations": [location],
                                                                    "from": f"--id {name}={root}"}})


OOD_GROUPS = ("near", "far")


def check_group(group: Any, where: str) -> None:
    """An OOD set's group is near or far (one line otherwise)."""
    if group not in OOD_GROUPS:
        raise HarnessError(f"{where}: group {group!r} must be one of {', '.join(OOD_GROUPS)}")


def imglist_class_count(file: Path, images: Path) -> int:
    """The number of ID classes of an OpenOOD image list (`read_imglist`): its largest class index plus one; an
    empty list or an OOD label (-1) is one line."""
    from harness.data.readers import read_imglist

    _, labels = read_imglist(file, images)
    if not labels or min(labels) < 0:
        raise HarnessError(f"{file} {'lists no images' if not labels else 'has an OOD label (-1)'}; an ID list "
                           "gives one '<image path> <class index>' per line")
    return max(labels) + 1


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
    """Spec of a named benchmark (`datasets/<name>.json`) or of a spec file path; `NAME:VARIANT` applies one of the
    spec's `variants` (a dict of top-level fields to replace; `classifier` and `presets` are merged key by key)."""
    name_or_path, _, variant = name_or_path.partition(":")
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
    if variant:
        raw = _apply_variant(raw, variant, path)
    if not isinstance(raw, dict):
        raise HarnessError(f"benchmark spec {path} holds a JSON {type(raw).__name__}, not an object; see "
                           "datasets/mnist5k.json for the format")
    modality = raw.get("modality", "image")
    if modality not in MODALITIES:
        raise HarnessError(f"benchmark spec {path}: modality {modality!r} must be one of {', '.join(MODALITIES)}")
    required = ("name", "id", "ood") if modality == "text" else \
        ("name", "image_size", "channels", "num_classes", "class_names", "mean", "std", "id", "ood")
    missing = [key for key in required if key not in raw]
    if missing:
        raise HarnessError(f"benchmark spec {path} lacks {', '.join(missing)}; "
                           "see datasets/mnist5k.json for the format")
    check_name(raw["name"], f"benchmark spec {path}: name")
    if not isinstance(raw["ood"], list):
        raise HarnessError(f"benchmark spec {path}: ood must be a list of set entries")
    check_schema(raw, path)
    names = [entry.get("name") for entry in raw["ood"]]
    if None in names or len(set(names)) != len(names):
        raise HarnessError(f"benchmark spec {path}: every OOD entry needs a distinct 'name'")
    for name in names:
        check_name(name, f"benchmark spec {path}: OOD set name")
    class_names = raw.get("class_names", [])
    if isinstance(class_names, str):  # a class-list file next to the spec, one name (e.g. wnid) per line
        from harness.data.readers import read_wnids

        class_names = read_wnids(path.parent / class_names)
    if len(class_names) != int(raw.get("num_classes", len(class_names))):
        raise HarnessError(f"benchmark spec {path}: {len(class_names)} class names for num_classes "
                           f"{raw['num_classes']}; fix the spec")
    for entry in [raw["id"], *raw["ood"]]:
        for location in locations(entry):
            if location.get("preprocess", "resize_center_crop") not in PREPROCESSING:
                raise HarnessError(f"benchmark spec {path}: preprocess {location['preprocess']!r} unknown; use one "
                                   f"of {', '.join(PREPROCESSING)}")
    presets = {"paper": {}, **raw.get("presets", {})}
    storage = raw.get("storage", "memory")
    if storage not in ("memory", "files"):
        raise HarnessError(f"benchmark spec {path}: storage {storage!r} must be 'memory' or 'files'")
    metrics = tuple(raw.get("leaderboard_metrics", ("fpr95", "auroc")))
    if not metrics or set(metrics) - set(LEADERBOARD_METRICS):
        raise HarnessError(f"benchmark spec {path}: leaderboard_metrics {list(metrics)} must be some of "
                           f"{', '.join(LEADERBOARD_METRICS)}")
    targets = dict(raw.get("stability_targets", {}))
    _check_stability_targets(targets, path)
    baselines = dict(raw.get("baselines", {}))
    _check_baselines(baselines, path)
    encoder = dict(raw.get("text_encoder", {}))
    if encoder and encoder.get("name") not in ("spacy-md", "albert"):
        raise HarnessError(f"benchmark spec {path}: text_encoder name {encoder.get('name')!r} must be spacy-md or "
                           "albert")
    return BenchmarkSpec(
        name=raw["name"], image_size=int(raw.get("image_size", 0)), channels=int(raw.get("channels", 0)),
        num_classes=len(class_names), class_names=tuple(class_names),
        prompt_names=_prompt_names(raw, class_names, path),
        official_prompt_names={use: tuple(names) for use, names in raw.get("official_prompt_names", {}).items()},
        mean=tuple(raw.get("mean", ())), modality=modality, text_encoder=encoder, leaderboard_metrics=metrics,
        std=tuple(raw.get("std", ())), id=dict(raw["id"]), ood=tuple(dict(e) for e in raw["ood"]),
        classifier=dict(raw.get("classifier", {})), description=raw.get("description", ""),
        presets=presets, storage=storage, family=raw.get("family", raw["name"]),
        variants=tuple(sorted(raw.get("variants", {}))), stability_targets=targets, baselines=baselines,
    )


TOP_LEVEL_KEYS = ("name", "description", "modality", "image_size", "channels", "num_classes", "class_names",
                  "prompt_names", "prompt_names_note", "official_prompt_names", "mean", "std", "id", "ood",
                  "classifier", "presets", "storage", "leaderboard_metrics", "stability_targets", "text_encoder",
                  "variants", "family", "baselines", "groups_note")
# Keys every set entry may carry whatever its source: how the harness draws and describes it.
ENTRY_KEYS = ("name", "source", "note", "from", "layout", "locations", "expected", "eval_count", "subset_seed",
              "preprocess", "seed", "class_names", "group")
COUNT_KEYS = ("count", "train", "test", "expected", "eval_count", "min_per_class", "max_per_class")
SEED_KEYS = ("seed", "split_seed", "subset_seed")
PRESET_KEYS = ("epoch_scale", "max_train", "max_test", "max_ood", "description")
MAX_COUNT = 10_000_000


def _unknown(keys: Any, allowed: Any, where: str) -> None:
    """One line naming the first key of `keys` not in `allowed`, with the nearest allowed one."""
    import difflib

    for key in keys:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise HarnessError(f"{where}: unknown key {key!r} ({hint}allowed: {', '.join(sorted(allowed))})")


def check_schema(raw: dict[str, Any], path: Path) -> None:
    """Every field of a spec (after its variant is applied) has a known name and a value of the right type and
    range; otherwise one line naming the field, what it holds and what is expected."""
    where = f"benchmark spec {path}"
    _unknown(raw, TOP_LEVEL_KEYS, where)
    if raw.get("modality", "image") == "image":
        _check_image_fields(raw, where)
    for name, preset in raw.get("presets", {}).items():
        _unknown(preset, PRESET_KEYS, f"{where}: presets.{name}")
        for key, value in preset.items():
            if key != "description" and not (is_number(value) and 0 < value <= MAX_COUNT):
                raise HarnessError(f"{where}: presets.{name}.{key} {value!r} must be a positive number")
    for label, entry in [("id", raw["id"]), *((f"ood {e.get('name')!r}", e) for e in raw["ood"])]:
        if not isinstance(entry, dict):
            raise HarnessError(f"{where}: {label} must be an object with a 'source'")
        if "group" in entry:
            check_group(entry["group"], f"{where}: {label}")
        for location in locations(entry):
            _check_location(location, f"{where}: {label}")
        if entry is not raw["id"] and "group" not in entry:
            raise HarnessError(f"{where}: {label} has no group; give it \"group\": \"near\" (semantically close "
                               "to the ID classes) or \"far\", as OpenOOD v1.5 splits its OOD sets")
        if "fetch" in entry:
            _check_fetch(entry["fetch"], f"{where}: {label} fetch")


def _check_image_fields(raw: dict[str, Any], where: str) -> None:
    if not is_whole(raw["image_size"], 8, 4096):
        raise HarnessError(f"{where}: image_size {raw['image_size']!r} must be a whole number of pixels from 8 to "
                           "4096")
    if not is_whole(raw["channels"], 1, 3) or raw["channels"] == 2:
        raise HarnessError(f"{where}: channels {raw['channels']!r} must be 1 (grey) or 3 (RGB)")
    for key in ("mean", "std"):
        values = raw[key]
        if not isinstance(values, list) or len(values) != raw["channels"] or not all(
                is_number(v) and math.isfinite(v) for v in values):
            raise HarnessError(f"{where}: {key} {values!r} must list {raw['channels']} finite numbers, one per channel")
    if not all(v > 0 for v in raw["std"]):
        raise HarnessError(f"{where}: std {raw['std']!r} must be positive in every channel (it divides the pixels)")


def _source_options(source: str) -> set[str]:
    """The options a spec entry may give `source`: the keyword parameters of its reader and probe (and of the
    functions they wrap), less what the harness passes itself."""
    import inspect

    from harness.data.sources import get_probe, get_source

    functions = [get_source(source), *filter(None, [get_probe(source)])]
    parameters = [p for fn in functions for follow in (False, True)
                  for p in inspect.signature(fn, follow_wrapped=follow).parameters.values()]
    named = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return named - {"size", "channels", "data_root"}


def _check_location(location: dict[str, Any], where: str) -> None:
    source = location.get("source")
    if not isinstance(source, str):
        raise HarnessError(f"{where} names no 'source'")
    _unknown(location, {*ENTRY_KEYS, *_source_options(source)}, f"{where} (source {source})")
    for key in COUNT_KEYS:
        value = location.get(key)  # a count, or one per split ({"train": ..., "test": ...})
        counts = list(value.values()) if isinstance(value, dict) else [value]
        if value is not None and not all(is_whole(c, 1, MAX_COUNT) for c in counts):
            raise HarnessError(f"{where} {key} {value!r} must be a whole number from 1 to {MAX_COUNT:,}")
    for key in SEED_KEYS:
        if key in location and not is_whole(location[key], 0, MAX_SEED):
            raise HarnessError(f"{where} {key} {location[key]!r} must be a whole number from 0 to {MAX_SEED}")


FETCH_FILE_KEYS = ("urls", "md5", "sha256", "unpack", "to", "strip")
CHECKSUM_DIGITS = {"md5": 32, "sha256": 64}


def download_name(file: dict[str, Any]) -> str:
    """The file name a `fetch` file is downloaded as: the last part of its first URL's path."""
    from urllib.parse import urlparse

    return Path(urlparse(file["urls"][0]).path).name


def _check_fetch(fetch: Any, where: str) -> None:
    """A set's `fetch` (see harness.data.fetch): `files` to download or `manual` steps, one non-empty list."""
    if not isinstance(fetch, dict):
        raise HarnessError(f"{where} must be an object with 'files' (downloads) or 'manual' (steps)")
    _unknown(fetch, ("files", "manual"), where)
    lists = list(fetch.values())
    if len(lists) != 1 or not isinstance(lists[0], list) or not lists[0]:
        raise HarnessError(f"{where} needs one non-empty list: 'files' (downloads) or 'manual' (steps)")
    if not all(isinstance(step, str) for step in fetch.get("manual", [])):
        raise HarnessError(f"{where}: manual steps must be strings")
    for number, file in enumerate(fetch.get("files", []), 1):
        _check_fetch_file(file, f"{where} file {number}")


def _check_fetch_file(file: Any, where: str) -> None:
    if not isinstance(file, dict):
        raise HarnessError(f"{where} must be an object with urls, md5 or sha256, unpack and to")
    _unknown(file, FETCH_FILE_KEYS, where)
    urls = file.get("urls")
    if not isinstance(urls, list) or not urls or not all(
            isinstance(url, str) and url.startswith(("https://", "http://")) for url in urls):
        raise HarnessError(f"{where}: urls {urls!r} must list http(s) addresses (mirrors, tried in order)")
    check_name(download_name(file), f"{where}: the file name of its first url")
    checksums = [key for key in CHECKSUM_DIGITS if key in file]
    if len(checksums) != 1 or not (isinstance(file[checksums[0]], str) and re.fullmatch(
            f"[0-9a-f]{{{CHECKSUM_DIGITS[checksums[0]]}}}", file[checksums[0]])):
        raise HarnessError(f"{where} needs one checksum: md5 (32 lowercase hex digits) or sha256 (64)")
    if file.get("unpack") not in ("file", "tar"):
        raise HarnessError(f"{where}: unpack {file.get('unpack')!r} must be 'file' (put the download at `to`) or "
                           "'tar' (extract it under `to`)")
    for key in ("to", "strip"):
        value = file.get(key, "")
        if not isinstance(value, str) or Path(value).is_absolute() or ".." in Path(value).parts:
            raise HarnessError(f"{where}: {key} {value!r} must be a relative path under the data root, without '..'")
    if file["unpack"] == "file" and not file.get("to"):
        raise HarnessError(f"{where}: a file that is not unpacked needs `to`, its path under the data root")


def _check_stability_targets(targets: dict[str, Any], path: Path) -> None:
    unknown = set(targets) - {"average_auroc", "id_accuracy"}
    if unknown:
        raise HarnessError(f"benchmark spec {path}: stability_targets has unknown keys {sorted(unknown)}; use "
                           "average_auroc and id_accuracy")
    for key, value in targets.items():
        values = value.values() if isinstance(value, dict) else [value]
        if not all(is_number(v) and v > 0 for v in values):
            raise HarnessError(f"benchmark spec {path}: stability_targets.{key} must be a positive number of pp "
                               f"(or a mapping from method kind to one); got {value!r}")


def _check_baselines(baselines: dict[str, Any], path: Path) -> None:
    for kind, label in baselines.items():
        if not (isinstance(label, str) and label):
            raise HarnessError(f"benchmark spec {path}: baselines.{kind} {label!r} must be a method label, e.g. "
                               "\"energy\" or \"flow(variant=mle)\"")


def _apply_variant(raw: dict[str, Any], variant: str, path: Path) -> dict[str, Any]:
    variants = raw.get("variants", {})
    if variant not in variants:
        raise HarnessError(f"benchmark {raw.get('name', path.stem)} has no variant {variant!r}; choose one of "
                           f"{', '.join(sorted(variants)) or '(none defined)'} as NAME:VARIANT")
    changes = variants[variant]
    merged = {**raw, **changes, "name": f"{raw['name']}-{variant}", "family": raw["name"]}
    for key in ("classifier", "presets"):
        merged[key] = {**raw.get(key, {}), **changes.get(key, {})}
    return merged


# Keys that describe a set (for people, for data check, its OOD group for the records, where data fetch downloads it
# from) rather than how to read it.
DESCRIPTIVE_KEYS = ("locations", "note", "from", "layout", "group", "fetch")


def locations(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternative on-disk layouts of a set, each merged with the set's shared options."""
    shared = {k: v for k, v in entry.items() if k not in DESCRIPTIVE_KEYS}
    alternatives = entry.get("locations") or [{}]
    return [{**shared, **alternative} for alternative in alternatives]
