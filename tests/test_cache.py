import pytest

from harness.cache import Cache, atomic_write_bytes
from harness.distributed import ShardedStage


def test_get_or_compute_stores_once_and_hits_after(tmp_path):
    cache = Cache(tmp_path)
    calls = []
    compute = lambda: calls.append(1) or {"value": 3}  # noqa: E731
    assert cache.get_or_compute("stage", "k1", compute) == {"value": 3}
    assert Cache(tmp_path).get_or_compute("stage", "k1", compute) == {"value": 3}
    assert len(calls) == 1 and cache.misses("stage") == 1


def test_failed_computation_leaves_nothing_behind(tmp_path):
    cache = Cache(tmp_path)

    def explode():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("stage", "k", explode)
    assert not cache.path("stage", "k").exists()


def test_atomic_write_keeps_old_content_when_interrupted(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # the write fails midway
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_sharded_stage_splits_items_across_ranks_and_resumes(tmp_path):
    cache = Cache(tmp_path)
    items = {f"item{i}": i for i in range(7)}
    done = []
    stage = ShardedStage(cache, "gen", "abc")
    stage.run(items, lambda x: done.append(x) or x * x, rank=0, world=2)
    assert sorted(done) == [0, 2, 4, 6]
    stage.run(items, lambda x: done.append(x) or x * x, rank=1, world=2)
    assert sorted(done) == list(range(7))
    done.clear()
    paths = stage.run(items, lambda x: done.append(x) or x * x)  # everything stored: nothing recomputed
    assert done == [] and len(paths) == 7 and stage.load("item5") == 25


def test_a_killed_writers_temporary_file_is_removed_when_the_item_is_recomputed(tmp_path):
    stage = ShardedStage(Cache(tmp_path), "items", "k")
    stage.directory.mkdir(parents=True)
    stale = stage.directory / ".a.pt.x1y2z3.tmp"  # what atomic_write_bytes leaves when killed mid-write
    stale.write_bytes(b"half")
    stage.run({"a": 1, "b": 2}, lambda item: item * 10)
    assert sorted(p.name for p in stage.directory.iterdir()) == ["a.pt", "b.pt"]
    assert stage.load("a") == 10
