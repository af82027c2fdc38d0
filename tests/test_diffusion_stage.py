"""Generation as a sharded, resumable stage: reruns skip finished images, a kill -9 mid-way then a rerun gives the
same files as an uninterrupted run, torchrun with 2 CPU ranks gives the same files as one process, and a full disk
leaves no partial image behind. Subprocess tests (kill, torchrun) are marked slow; they take a few seconds each."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import harness.cache
from harness.cache import Cache, ItemTally
from harness.diffusion.backend import GenerationConfig, read_png
from harness.diffusion.stage import generate_images, load_images
from harness.errors import HarnessError

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["dog", "cat", "seven"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convolutions: one thread is fastest


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _request(backend, cache, embeddings=None):
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    seeds = torch.arange(100, 107)
    config = GenerationConfig(steps=3, guidance_scale=2.0, batch_size=3)
    return generate_images(backend, cache, CLASSES, labels, seeds, config, "A high-quality image of a {}",
                           embeddings)


def test_rerun_skips_finished_images_and_recomputes_missing_ones_identically(backend, tmp_path):
    cache = Cache(tmp_path)
    embeddings = torch.randn(7, backend.token_dim)
    paths = _request(backend, cache, embeddings)
    assert len(paths) == 7 and all(p.exists() for p in paths)
    image, meta = read_png(paths[3])
    assert meta["class"] == "cat" and meta["embedding_id"] == "3" and meta["seed"] == "103"
    assert meta["substituted_token"] == "cat</w>"
    first = _files(paths[0].parent)
    assert _request(backend, cache, embeddings) == paths and cache.events[-1][2] == "hit"
    paths[4].unlink()
    _request(backend, cache, embeddings)
    assert cache.events[-1][2] == "miss" and _files(paths[0].parent) == first
    # counted for a run's cost: every image the call returned, and those computed (a batch of 3 is redone whole)
    assert cache.tallies == [ItemTally("images_generated", 7, 7), ItemTally("images_generated", 7, 0),
                             ItemTally("images_generated", 7, 3)]
    assert load_images(paths).shape == (7, 3, 16, 16)
    other = _request(backend, cache, None)  # stock class embeddings: another stage key
    assert other[0].parent != paths[0].parent


def test_full_disk_leaves_no_partial_image_and_rerun_resumes(backend, tmp_path, monkeypatch):
    reference = _files(_request(backend, Cache(tmp_path / "ref"))[0].parent)
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync_until_full(fd):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(harness.cache.os, "fsync", fsync_until_full)
    cache = Cache(tmp_path / "full")
    with pytest.raises(HarnessError, match="disk full while writing .*4 of 7 items .* rerun to resume"):
        _request(backend, cache)
    directory = next((tmp_path / "full" / "generation").iterdir())
    assert sorted(p.name for p in directory.iterdir()) == sorted(reference)[:4]  # no temporary or partial file
    monkeypatch.setattr(harness.cache.os, "fsync", real_fsync)
    _request(backend, cache)
    assert _files(directory) == reference


def _generate_cmd(model_dir: Path, cache_dir: Path) -> list[str]:
    return ["-m", "harness.diffusion", "generate", "--model", str(model_dir), "--classes", ",".join(CLASSES),
            "--per-class", "4", "--steps", "4", "--guidance", "2.0", "--batch-size", "2", "--device", "cpu",
            "--cache-dir", str(cache_dir)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def uninterrupted(model_dir, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run([sys.executable, *_generate_cmd(model_dir, cache_dir)], env=_env(), check=True,
                   capture_output=True, cwd=REPO)
    (directory,) = (cache_dir / "generation").iterdir()
    files = _files(directory)
    assert len(files) == 12
    return files


@pytest.mark.slow
def test_killed_generation_resumed_gives_the_same_files(model_dir, tmp_path, uninterrupted):
    cmd = [sys.executable, *_generate_cmd(model_dir, tmp_path)]
    process = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage_root = tmp_path / "generation"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if stage_root.is_dir() and any(p.suffix == ".png" for d in stage_root.iterdir() for p in d.iterdir()):
            break
        time.sleep(0.02)
    assert process.poll() is None, "generation finished before it could be killed; make the run longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    (directory,) = stage_root.iterdir()
    assert 0 < sum(p.suffix == ".png" for p in directory.iterdir()) < 12
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, cwd=REPO)
    assert _files(directory) == uninterrupted


@pytest.mark.slow
@pytest.mark.heavy
def test_torchrun_two_cpu_ranks_give_the_same_files_as_one_process(model_dir, tmp_path, uninterrupted):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_generate_cmd(model_dir, tmp_path)]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    (directory,) = (tmp_path / "generation").iterdir()
    assert _files(directory) == uninterrupted
