"""Loading a benchmark spec into image sets: cached builds of package data, fresh reads of on-disk sets,
evaluation subsets and preset caps, each recorded in the benchmark's provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import Cache
from harness.config import content_hash
from harness.data.check import DataCheck, check_data, data_problem_message
from harness.data.sets import AnyImageSet, FileImageSet, ImageSet
from harness.data.sources import get_source, source_is_cached
from harness.data.spec import DESCRIPTIVE_KEYS, BenchmarkSpec, Preset
from harness.errors import HarnessError

# Part of the cache key of built benchmark data: bump it whenever a data source's output changes for the same spec.
DATA_VERSION = 2


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: ID train/test sets and the OOD test sets, all at the spec's resolution (image specs) or
    `harness.data.text.TextSet`s (text specs). `provenance` says, per set, which source and path were read and which
    subset was drawn, and for text specs the encoder directory (stored in every record)."""

    spec: BenchmarkSpec
    train: AnyImageSet
    test: AnyImageSet
    ood: dict[str, AnyImageSet]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


def _build_set(location: dict[str, Any], spec: BenchmarkSpec, data_root: Path | None) -> Any:
    skip = ("source", "expected", "eval_count", "subset_seed", *DESCRIPTIVE_KEYS)
    options = {k: v for k, v in location.items() if k not in skip}
    options.setdefault("seed", 0)
    options.setdefault("class_names", list(spec.class_names))
    return get_source(location["source"])(size=spec.image_size, channels=spec.channels, data_root=data_root,
                                          **options)


def _renamed(image_set: AnyImageSet, name: str) -> AnyImageSet:
    if hasattr(image_set, "renamed"):  # file-backed image sets and text sets
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
        from harness.data.sets import load_image_files

        return load_image_files(image_set.files, image_set.name, image_set.size, image_set.channels,
                                image_set.preprocess, image_set.resize, image_set.labels)
    return image_set


def _cap(*limits: int | None) -> int | None:
    given = [int(v) for v in limits if v is not None]
    return min(given) if given else None


def load_benchmark(spec: BenchmarkSpec, cache: Cache, data_root: Path | None = None, preset: Preset | None = None,
                   check: DataCheck | None = None) -> Benchmark:
    """Build every set of `spec`. Sets built from package data are cached; sets read from the user's disk (real
    benchmarks, `--ood` folders) are read fresh. Evaluation subsets and preset caps are drawn by each set's
    `subset_seed` and recorded in `provenance`; `preset` defaults to the spec's `paper`."""
    preset = preset or spec.preset("paper")
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

    provenance: dict[str, Any] = {"preset": preset.name, "data_root": str(data_root) if data_root else None, "sets": {}}

    def finish(name: str, image_set: AnyImageSet, location: dict[str, Any], count: int | None,
               group: str | None = None) -> AnyImageSet:
        seed = int(location.get("subset_seed", 0))
        image_set, drawn = _draw(_renamed(image_set, name), count, seed)
        provenance["sets"][name] = {"source": location["source"], "path": location.get("path"), **drawn,
                                    **({"group": group} if group else {})}
        if spec.modality == "text":  # each length feature's mean, std and median (harness.data.text)
            from harness.data.text import length_summary

            provenance["sets"][name]["lengths"] = length_summary(image_set.texts)
        return _store(image_set, spec.storage)

    id_location = chosen["id"]
    train = finish("train", built["id"]["train"], id_location, preset.max_train)
    test = finish("test", built["id"]["test"], id_location, _cap(id_location.get("eval_count"), preset.max_test))
    ood = {entry["name"]: finish(entry["name"], built[entry["name"]], chosen[entry["name"]],
                                 _cap(chosen[entry["name"]].get("eval_count"), preset.max_ood), entry.get("group"))
           for entry in spec.ood}
    if spec.text_encoder:  # the encoder directory a text method reads, resolved under the data root
        from harness.data.text import encoder_directory

        directory = encoder_directory(spec.text_encoder, data_root)
        provenance["text_encoder"] = {**spec.text_encoder, "path": str(directory) if directory else None}
    return Benchmark(spec, train, test, ood, provenance)

