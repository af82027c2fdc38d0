"""Content-addressed cache of expensive stages, atomic writes, and sharding of a stage's work items across ranks.

A stage's output is stored under `<root>/<stage>/<key>.pt`, where the key is the content hash of everything the
output depends on: its config, the fingerprints of its inputs, the seed, the version of the code that computes it
(`STAGE_VERSIONS`, or a third-party plugin's distribution and source hash) and, through the cache's `scope`, the
numerics of the run (thread count, kernel mode and instruction sets, device). Files are written to a temporary name in
the same directory and renamed, so a crash never leaves a half-written entry and a rerun picks up where it stopped.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock, Timeout

from harness.config import content_hash

T = TypeVar("T")
DEFAULT_CACHE_ENV = "OODBENCH_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(DEFAULT_CACHE_ENV, Path.home() / ".cache" / "oodbench"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files a killed `atomic_write_bytes` to `path` left behind; call it only while no other
    process can be writing `path` (under its lock, or for an item only this rank writes)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_or_none(path: Path, what: str = "cache entry") -> Any | None:
    """The object stored at `path`; None when there is none, or when it is truncated or corrupted (then it is
    reported in one line on stderr and removed, so the caller recomputes it)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"warning: {what} {path} is truncated or corrupted ({reason}); recomputing it", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


@dataclass
class Cache:
    """Stage outputs keyed by content hash. `events` logs (stage, key, "hit" | "miss") for inspection and tests;
    `scope` holds key parts every entry of this view of the cache depends on (`scoped`)."""

    root: Path = field(default_factory=default_cache_dir)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    scope: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()

    def scoped(self, *parts: Any) -> Cache:
        """The same cache (root, event log) whose every key also covers `parts`: the run's numerics, a plugin's
        code. A view without parts is the cache itself."""
        return Cache(self.root, self.events, self.scope + parts) if parts else self

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
        key = path.stem
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
            atomic_torch_save(value, path)
            return value
        finally:
            lock.release()

    def misses(self, stage: str) -> int:
        return sum(1 for s, _, kind in self.events if s == stage and kind == "miss")

    def hits(self, stage: str) -> int:
        return sum(1 for s, _, kind in self.events if s == stage and kind == "hit")
