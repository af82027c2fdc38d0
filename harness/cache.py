"""Content-addressed cache of expensive stages, atomic writes, and sharding of a stage's work items across ranks.

A stage's output is stored under `<root>/<stage>/<key>.pt`, where the key is the content hash of everything the
output depends on (its config, the fingerprints of its inputs, the seed). Files are written to a temporary name in
the same directory and renamed, so a crash never leaves a half-written entry and a rerun picks up where it stopped.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock, Timeout

from harness.config import content_hash
from harness.errors import HarnessError

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


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class Cache:
    """Stage outputs keyed by content hash. `events` logs (stage, key, "hit" | "miss") for inspection and tests."""

    root: Path = field(default_factory=default_cache_dir)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.pt"

    def key(self, stage: str, *parts: Any) -> str:
        return content_hash(stage, *parts)

    def get_or_compute(self, stage: str, key: str, compute: Callable[[], T]) -> T:
        """Return the stored output of (stage, key), computing and storing it atomically on a miss.

        A miss is computed under an OS file lock (`<key>.pt.lock`), so concurrent runs needing the same entry
        compute it once: the others wait, then read it. The lock dies with its process, so a killed run leaves no
        stale lock behind. A truncated or corrupted entry is reported in one line and recomputed."""
        path = self.path(stage, key)
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
            value = compute()
            atomic_torch_save(value, path)
            return value
        finally:
            lock.release()

    def misses(self, stage: str) -> int:
        return sum(1 for s, _, kind in self.events if s == stage and kind == "miss")

    def hits(self, stage: str) -> int:
        return sum(1 for s, _, kind in self.events if s == stage and kind == "hit")


def init_distributed(device: torch.device) -> None:
    """Join torchrun's process group (gloo on the CPU, nccl on CUDA) when launched with WORLD_SIZE > 1."""
    _, world = dist_rank_world()
    if world > 1 and torch.distributed.is_available() and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


@dataclass
class ShardedStage:
    """A stage made of independent work items, each stored as its own file under `<root>/<stage>/<key>/`.

    `run` computes the items this rank owns that are not stored yet, writing each one atomically, so a crashed or
    killed run resumes where it stopped and `torchrun` ranks split the work. `run_batches` does the same for items
    computed together in fixed batches (e.g. images generated in one call): the batches are cut from the full item
    list before ranks take them round-robin, and a batch with any missing item is recomputed whole, so every item
    comes out of the same batch, bit for bit, whatever the number of ranks and however often the run was
    interrupted. When launched under torchrun with an initialised process group, ranks meet at a barrier before
    results are read. A full disk is a one-line error; the partial file is removed and a rerun resumes.
    """

    cache: Cache
    stage: str
    key: str
    suffix: str = ".pt"

    @property
    def directory(self) -> Path:
        return self.cache.root / self.stage / self.key

    def item_path(self, item_id: str) -> Path:
        return self.directory / f"{item_id}{self.suffix}"

    def pending(self, item_ids: Sequence[str], rank: int = 0, world: int = 1) -> list[str]:
        return [i for i in list(item_ids)[rank::world] if not self.item_path(i).exists()]

    def run(self, items: dict[str, T], compute: Callable[[T], Any], rank: int | None = None,
            world: int | None = None, progress: Callable[[list[str]], Any] | None = None) -> dict[str, Path]:
        return self.run_batches(items, lambda batch: [compute(item) for item in batch], 1, rank, world,
                                progress=(lambda batches: progress([b[0] for b in batches])) if progress else None)

    def run_batches(self, items: dict[str, T], compute: Callable[[list[T]], Sequence[Any]], batch_size: int,
                    rank: int | None = None, world: int | None = None,
                    write: Callable[[Any, Path], None] = atomic_torch_save,
                    progress: Callable[[list[list[str]]], Any] | None = None) -> dict[str, Path]:
        """Compute this rank's unfinished batches with `compute(list of items) -> one output per item` and store
        each output with `write(output, path)` (atomic); returns every item's path."""
        env_rank, env_world = dist_rank_world()
        rank = env_rank if rank is None else rank
        world = env_world if world is None else world
        ids = list(items)
        batches = [ids[start:start + batch_size] for start in range(0, len(ids), batch_size)][rank::world]
        todo = [batch for batch in batches if any(not self.item_path(i).exists() for i in batch)]
        self.cache.events.append((self.stage, self.key, "miss" if todo else "hit"))
        for batch in (progress(todo) if progress else todo):
            outputs = compute([items[i] for i in batch])
            for item_id, output in zip(batch, outputs, strict=True):
                path = self.item_path(item_id)
                if path.exists():
                    continue
                try:
                    write(output, path)
                except OSError as err:
                    if err.errno in (errno.ENOSPC, errno.EDQUOT):
                        stored = sum(self.item_path(i).exists() for i in ids)
                        raise HarnessError(f"disk full while writing {path}; {stored} of {len(ids)} items of stage "
                                           f"{self.stage} are stored and kept: free space and rerun to resume") \
                            from None
                    raise
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        return {item_id: self.item_path(item_id) for item_id in items}

    def load(self, item_id: str) -> Any:
        return torch.load(self.item_path(item_id), map_location="cpu", weights_only=False)
