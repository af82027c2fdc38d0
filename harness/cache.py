"""Content-addressed cache of expensive stages, atomic writes, and sharding of a stage's work items across ranks.

A stage's output is stored under `<root>/<stage>/<key>.pt`, where the key is the content hash of everything the
output depends on: its config, the fingerprints of its inputs, the seed, the version of the code that computes it
(`STAGE_VERSIONS`, or a third-party plugin's distribution and source hash) and, through the cache's `scope`, the
numerics of the run (thread count, kernel mode and instruction sets, device). Files are written to a temporary name in
the same directory and renamed, so a crash never leaves a half-written entry and a rerun picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from filelock import FileLock, Timeout

from harness.config import content_hash
from harness.errors import HarnessError

T = TypeVar("T")
DEFAULT_CACHE_ENV = "OODBENCH_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(DEFAULT_CACHE_ENV, Path.home() / ".cache" / "oodbench"))


class DiskFull(HarnessError):
    """The disk (or quota) filled up during a write; nothing half-written was left."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and an atomic rename; a full disk is a
    one-line error, with nothing half-written left behind."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"disk full while writing {path}; free space and rerun (finished stages are cached and "
                           "kept)") from None
        raise


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files a killed `atomic_write_bytes` to `path` left behind; call it only while no other
    process can be writing `path` (under its lock, or for an item only this rank writes)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


# Dataclasses a cache entry may hold (e.g. image sets), registered by their modules with `storable`: an entry
# names one of these or holds only tensors, numbers, strings, lists, tuples and dicts, so loading it runs no code.
STORABLE: dict[str, type] = {}
ENTRY_MAGIC = b"oodbench-cache-entry 1\n"


def storable(cls: type[T]) -> type[T]:
    """Class decorator: instances of the dataclass `cls` may be stored in cache entries (by their fields)."""
    STORABLE[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def encode(obj: Any) -> Any:
    """`obj` as what `torch.load(weights_only=True)` reads back: numpy arrays become tensors, registered dataclasses
    their fields, both tagged for `decode`."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biuf":
            return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj))}
        return {"__ndarray_list__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if name not in STORABLE:
            raise TypeError(f"{name} is not registered with harness.cache.storable")
        return {"__dataclass__": name, "fields": {f.name: encode(getattr(obj, f.name))
                                                  for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def decode(obj: Any) -> Any:
    """The inverse of `encode`; a dataclass name that is not registered is refused (ValueError)."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return obj["__ndarray__"].numpy()
        if "__ndarray_list__" in obj:
            return np.array(obj["__ndarray_list__"], dtype=np.dtype(obj["dtype"]))
        if "__dataclass__" in obj:
            cls = STORABLE.get(obj["__dataclass__"])
            if cls is None:
                raise ValueError(f"entry names the unregistered type {obj['__dataclass__']}")
            return cls(**{k: decode(v) for k, v in obj["fields"].items()})
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode(v) for v in obj)
    return obj


def _serialize(obj: Any) -> bytes:
    """`torch.save` bytes of `encode(obj)`."""
    buffer = io.BytesIO()
    torch.save(encode(obj), buffer)
    return buffer.getvalue()


def _deserialize(source: Any) -> Any:
    """The object of `_serialize` bytes (a path or a file object), loaded without running code."""
    return decode(torch.load(source, map_location="cpu", weights_only=True))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`obj` as a plain `torch.save` file that `torch.load(weights_only=True)` reads (`load_tensors`)."""
    atomic_write_bytes(Path(path), _serialize(obj))


def load_tensors(path: Path) -> Any:
    """A file of `atomic_torch_save` (or any torch file of tensors and plain values), loaded without running code."""
    return _deserialize(path)


def write_entry(obj: Any, path: Path) -> None:
    """A cache entry: a header naming the entry (`<stage>/<file>`) and the SHA-256 of its payload, then the payload
    (`_serialize(obj)`); written atomically."""
    payload = _serialize(obj)
    header = json.dumps({"entry": f"{path.parent.name}/{path.name}", "sha256": hashlib.sha256(payload).hexdigest()})
    atomic_write_bytes(Path(path), ENTRY_MAGIC + header.encode() + b"\n" + payload)


def read_entry(path: Path) -> Any:
    """The object of the cache entry at `path`; ValueError when it is not one, is stored under another name (a
    moved or swapped file) or its payload does not match its checksum (a flipped bit, a truncated write)."""
    data = Path(path).read_bytes()
    if not data.startswith(ENTRY_MAGIC):
        raise ValueError("not a cache entry of this harness version")
    line, _, payload = data[len(ENTRY_MAGIC):].partition(b"\n")
    try:
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("its header is damaged") from None
    if header.get("entry") != f"{path.parent.name}/{path.name}":
        raise ValueError(f"it holds the entry {header.get('entry')!r}, not this one")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError("its content does not match its checksum")
    return _deserialize(io.BytesIO(payload))


def load_or_none(path: Path, what: str = "cache entry") -> Any | None:
    """The object stored at `path`; None when there is none, or when it is damaged, moved or not loadable without
    running code (then it is reported in one line on stderr and removed, so the caller recomputes it)."""
    if not path.exists():
        return None
    try:
        return read_entry(path)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"warning: {what} {path} is damaged or not trusted ({reason}); recomputing it", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


@dataclass(frozen=True)
class ItemTally:
    """One call of a sharded stage (`harness.distributed.ShardedStage`) whose items are counted in a run's cost
    (`harness.records.cost`): the name they are counted under, how many items the call returned, and how many of
    them this process computed (the rest were read from the cache or computed by other ranks)."""

    name: str
    items: int
    computed: int


@dataclass
class Cache:
    """Stage outputs keyed by content hash. `events` logs (stage, key, "hit" | "miss") for inspection and tests,
    `tallies` the counted stage items (`ItemTally`); `scope` holds key parts every entry of this view of the cache
    depends on (`scoped`)."""

    root: Path = field(default_factory=default_cache_dir)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    scope: tuple[Any, ...] = ()
    tallies: list[ItemTally] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()

    def scoped(self, *parts: Any) -> Cache:
        """The same cache (root, event log, tallies) whose every key also covers `parts`: the run's numerics, a
        plugin's code. A view without parts is the cache itself."""
        return Cache(self.root, self.events, self.scope + parts, self.tallies) if parts else self

    def entry_key(self, key: str) -> str:
        """The file name of `key` under this view's scope."""
        return content_hash(key, *self.scope) if self.scope else key

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{self.entry_key(key)}.pt"

    def key(self, stage: str, *parts: Any) -> str:
        return content_hash(stage, *parts)

    def get_or_compute(self, stage: str, key: str, compute: Callable[[], T]) -> T:
        """Return the stored output of (stage, key), computing and storing it atomically on a miss.

        A miss is computed under an OS file lock (`<key>.pt.lock`), so concurrent runs needing the same entry
        compute it once: the others wait, then read it. The lock dies with its process, so a killed run leaves no
        stale lock behind. A truncated or corrupted entry is reported in one line and recomputed."""
        path = self.path(stage, key)
        key = path.stem  # the scoped key: what the event log and the lock name
        value = load_or_none(path)
        if value is not None:
            self.events.append((stage, key, "hit"))
            return value
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{path}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"waiting for another run computing {stage}/{key} (lock {lock.lock_file})", file=sys.stderr)
            lock.acquire()
        try:
            value = load_or_none(path)
            if value is not None:
                self.events.append((stage, key, "hit"))
                return value
            self.events.append((stage, key, "miss"))
            remove_stale_temporaries(path)
            value = compute()
            write_entry(value, path)
            return value
        finally:
            lock.release()

    def misses(self, stage: str) -> int:
        return sum(1 for s, _, kind in self.events if s == stage and kind == "miss")

    def hits(self, stage: str) -> int:
        return sum(1 for s, _, kind in self.events if s == stage and kind == "hit")
