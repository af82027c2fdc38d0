"""The registry of data sources that benchmark specs name, and cheap probes of on-disk sets.

A source turns one entry of a benchmark spec ("source": NAME plus its options) into image sets. The built-in sources
(`harness.data.embedded`, `harness.data.readers`) register themselves when the `harness.data` package is imported."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data.sets import IMAGE_SUFFIXES, ImageSet, list_images, load_image_folder
from harness.errors import HarnessError


@dataclass(frozen=True)
class SetProbe:
    """What a cheap look at one set's files found. `status`: found, missing, incomplete (fewer images than
    expected), corrupted (a file cannot be read; `detail` names it), mismatch (wrong classes or shapes) or
    unavailable (an embedded set whose resources cannot be fetched; `detail` says why)."""

    status: str
    path: str
    count: int | None = None
    expected: int | None = None
    detail: str = ""


def count_probe(path: Path, count: int, expected: int | None, bad: str | None = None) -> SetProbe:
    if bad:
        return SetProbe("corrupted", str(path), count, expected, bad)
    if count == 0:
        return SetProbe("missing", str(path), 0, expected, f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if expected is not None and count < expected:
        return SetProbe("incomplete", str(path), count, expected, f"{count} of {expected} images")
    return SetProbe("found", str(path), count, expected)


def first_unreadable(files: Sequence[Path]) -> str | None:
    """The first file whose image header PIL cannot parse, as a message (cheap: no pixel decoding)."""
    from PIL import Image, UnidentifiedImageError

    for file in files:
        try:
            with Image.open(file) as img:
                img.size  # noqa: B018  (parsing the header is the check)
        except Image.DecompressionBombError:
            return (f"image {file} has more pixels than PIL decodes safely ({Image.MAX_IMAGE_PIXELS:,}); remove it or "
                    "replace it with a downscaled copy")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return f"cannot read image {file}"
    return None


def probe_image_folder(*, path: str, count: int | None = None, **_: Any) -> SetProbe:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return SetProbe("missing", str(folder), detail="not a directory")
    files = list_images(folder)
    return count_probe(folder, len(files), None, first_unreadable(files))


# --- data sources --------------------------------------------------------------------------------------------------
# A source turns one entry of a benchmark spec ("source": NAME plus its options) into image sets. Sources for the
# ID data return {"train": ImageSet, "test": ImageSet}; OOD sources return one ImageSet.

#
# A source registered with `cached=False` reads files the user already has on disk (real benchmarks): its sets are
# read fresh every run instead of being copied into the stage cache. A source may register a `probe` (same options,
# returns a `SetProbe`) that `harness data check` and `run` use to find missing or incomplete data cheaply.

SourceFn = Callable[..., Any]
_SOURCES: dict[str, SourceFn] = {}
_UNCACHED: set[str] = set()
_PROBES: dict[str, SourceFn] = {}


def register_source(name: str, *, cached: bool = True,
                    probe: SourceFn | None = None) -> Callable[[SourceFn], SourceFn]:
    def decorate(fn: SourceFn) -> SourceFn:
        if name in _SOURCES:
            raise RuntimeError(f"data source {name!r} registered twice ({_SOURCES[name].__module__} and "
                               f"{fn.__module__})")
        _SOURCES[name] = fn
        if not cached:
            _UNCACHED.add(name)
        if probe is not None:
            _PROBES[name] = probe
        return fn
    return decorate


def source_is_cached(name: str) -> bool:
    get_source(name)
    return name not in _UNCACHED


def get_probe(name: str) -> SourceFn | None:
    get_source(name)
    return _PROBES.get(name)


def get_source(name: str) -> SourceFn:
    if name not in _SOURCES:
        raise HarnessError(f"unknown data source {name!r} in benchmark spec; known sources: "
                           f"{', '.join(sorted(_SOURCES))}")
    return _SOURCES[name]


@register_source("image_folder", probe=probe_image_folder)
def image_folder_source(*, name: str, path: str, size: int, channels: int, seed: int, count: int | None = None,
                        **_: Any) -> ImageSet:
    """Any directory of images, e.g. a user's extra OOD set (`--ood NAME=PATH`)."""
    return load_image_folder(path, name, size, channels, limit=count, seed=seed)
