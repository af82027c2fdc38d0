"""Sharding of a stage's work items across `torchrun` ranks: rank/world from the environment, the process group,
and `ShardedStage` (one atomically written file per item, so a killed run resumes and ranks split the work)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from harness.cache import Cache, DiskFull, ItemTally, load_or_none, remove_stale_temporaries, write_entry
from harness.errors import HarnessError

T = TypeVar("T")


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


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
    results are read. A full disk is a one-line error; the partial file is removed and a rerun resumes. With a
    `tally` name, each call logs its item count and the items it computed in `cache.tallies` (a run's cost).
    """

    cache: Cache
    stage: str
    key: str
    suffix: str = ".pt"
    tally: str | None = None

    @property
    def directory(self) -> Path:
        return self.cache.root / self.stage / self.cache.entry_key(self.key)

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
                    write: Callable[[Any, Path], None] = write_entry,
                    progress: Callable[[list[list[str]]], Any] | None = None) -> dict[str, Path]:
        """Compute this rank's unfinished batches with `compute(list of items) -> one output per item` and store
        each output with `write(output, path)` (atomic, through `atomic_write_bytes`); returns every item's path."""
        env_rank, env_world = dist_rank_world()
        rank = env_rank if rank is None else rank
        world = env_world if world is None else world
        ids = list(items)
        batches = [ids[start:start + batch_size] for start in range(0, len(ids), batch_size)][rank::world]
        todo = [batch for batch in batches if any(not self.item_path(i).exists() for i in batch)]
        self.cache.events.append((self.stage, self.key, "miss" if todo else "hit"))
        for batch in todo:  # a killed earlier run's half-written files of the items this rank owns
            for item_id in batch:
                remove_stale_temporaries(self.item_path(item_id))
        for batch in (progress(todo) if progress else todo):
            outputs = compute([items[i] for i in batch])
            for item_id, output in zip(batch, outputs, strict=True):
                path = self.item_path(item_id)
                if path.exists():
                    continue
                try:
                    write(output, path)
                except DiskFull:  # `write` goes through atomic_write_bytes, which names a full disk so
                    stored = sum(self.item_path(i).exists() for i in ids)
                    raise HarnessError(f"disk full while writing {path}; {stored} of {len(ids)} items of stage "
                                       f"{self.stage} are stored and kept: free space and rerun to resume") from None
        if self.tally:
            self.cache.tallies.append(ItemTally(self.tally, len(ids), sum(len(batch) for batch in todo)))
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        return {item_id: self.item_path(item_id) for item_id in items}

    def load(self, item_id: str) -> Any:
        """The stored output of `item_id`; a damaged one is removed and reported in one line (a rerun recomputes
        it)."""
        value = load_or_none(self.item_path(item_id), f"item of stage {self.stage}")
        if value is None:
            raise HarnessError(f"item {item_id} of stage {self.stage} was missing or damaged and is removed; rerun "
                               "to recompute it")
        return value
