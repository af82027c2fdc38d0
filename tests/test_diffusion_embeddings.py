"""NCIS diffusion embeddings (the NCIS paper, Sec. 3.1): batched == one image at a time, eq. 1 recomputed by hand,
Adam's first step, the loss goes down, the stage caches/resumes/shards, and bad input is one clear line. The subprocess
tests (kill -9 then resume, torchrun with 2 CPU ranks) run the `embed` CLI on the shipped tiny model and mnist5k."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.cache import Cache, ItemTally
from harness.data.sets import ImageSet
from harness.diffusion.backend import load_backend
from harness.diffusion.embeddings import (
    EmbeddingConfig,
    diffusion_embeddings,
    embed_batch,
    embed_one_at_a_time,
    encode_latents,
    image_seed,
    select_images,
)
from harness.errors import HarnessError

REPO = Path(__file__).resolve().parents[1]
NAMES = ["cat", "dog", "seven"]
TINY = EmbeddingConfig(iterations=2, timesteps_per_image=4, images_per_call=4)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def _train_set(n: int = 7) -> ImageSet:
    return ImageSet("toy-train", _images(n), torch.arange(n) % len(NAMES))


def test_batched_equals_one_image_at_a_time_with_the_same_draws(backend):
    images, labels, seeds = _images(6), torch.tensor([0, 1, 2, 0, 1, 2]), list(range(40, 46))
    batched = embed_batch(backend, images, labels, NAMES, TINY, seeds)  # calls of 4 + 2 images
    single = embed_one_at_a_time(backend, images, labels, NAMES, TINY, seeds)
    for got, want in zip(batched, single, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # fp32: only the UNet's batch reductions differ
    assert batched[0].shape == (6, backend.token_dim)
    swapped = embed_batch(backend, images, labels, NAMES, TINY, [41, 40, *seeds[2:]])
    assert not torch.allclose(swapped[1][:2], batched[1][:2])  # each image's draw comes from its own seed


def test_initial_loss_is_eq1_of_the_stock_prompt_recomputed_by_hand(backend):
    from diffusers import DDPMScheduler

    images, labels, seeds = _images(2), torch.tensor([1, 2]), [5, 6]
    _, initial, _ = embed_batch(backend, images, labels, NAMES, TINY, seeds)
    z0 = encode_latents(backend, images, backend.native_size)
    abar = DDPMScheduler.from_config(backend.scheduler_config).alphas_cumprod
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        t = torch.randint(0, 50, (4,), generator=g) * 20 + 1  # the 50-step DDIM grid of 1000 training steps
        eps = torch.randn((4, *z0.shape[1:]), generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z0[i] + (1 - a).sqrt() * eps
        with torch.no_grad():
            context = backend.encode([f"An image of a {NAMES[labels[i]]}"]).expand(4, -1, -1)
            pred = backend.unet(noisy, t, encoder_hidden_states=context).sample
        assert initial[i].item() == pytest.approx(((pred - eps) ** 2).mean().item(), rel=1e-5)


def test_one_adam_step_moves_every_coordinate_by_lr(backend):
    token_rows = torch.stack([backend.token_embedding(backend.class_token(n).token_id) for n in NAMES])
    config = EmbeddingConfig(iterations=1, timesteps_per_image=4, lr=1e-2)
    e, _, _ = embed_batch(backend, _images(3), [0, 1, 2], NAMES, config, [1, 2, 3])
    step = (e - token_rows).abs()  # Adam's first step is lr * g / (|g| + eps): lr per coordinate, own gradient only
    torch.testing.assert_close(step, torch.full_like(step, 1e-2), atol=1e-5, rtol=0)


def test_optimised_embedding_lowers_its_own_images_loss_on_average(session_cache):
    from harness.data.benchmarks import load_benchmark
    from harness.data.spec import load_spec

    spec = load_spec("mnist5k")
    train = load_benchmark(spec, session_cache).train
    tiny_sd = load_backend(REPO / "models" / "tiny-sd-mnist5k")
    idx = torch.arange(0, len(train), len(train) // 8)[:8]
    config = EmbeddingConfig(iterations=3, timesteps_per_image=8)
    _, initial, final = embed_batch(tiny_sd, train.gather(idx), train.labels[idx], spec.prompt_names, config,
                                    [image_seed(0, int(i)) for i in idx])
    assert final.mean() < initial.mean()
    assert (final < initial).sum() >= 6


def test_stage_caches_resumes_and_matches_the_batched_function(backend, tmp_path):
    cache, train = Cache(tmp_path), _train_set()
    config = EmbeddingConfig(iterations=2, timesteps_per_image=4, images_per_call=3)
    result = diffusion_embeddings(backend, cache, train, NAMES, config, seed=3)
    assert result.indices.tolist() == list(range(7)) and result.labels.tolist() == train.labels.tolist()
    assert result.tokens == {"cat": "cat</w>", "dog": "dog</w>", "seven": "seven</w>"}
    direct = embed_batch(backend, train.images, train.labels, NAMES, config, [image_seed(3, i) for i in range(7)])
    torch.testing.assert_close(result.embeddings, direct[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(result.final_loss, direct[2], atol=1e-6, rtol=0)
    (directory,) = (tmp_path / "ncis-embeddings").iterdir()
    files = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert len(files) == 7
    again = diffusion_embeddings(backend, cache, train, NAMES, config, seed=3)
    assert cache.events[-1][2] == "hit" and torch.equal(again.embeddings, result.embeddings)
    (directory / "0000004.pt").unlink()
    diffusion_embeddings(backend, cache, train, NAMES, config, seed=3)
    assert cache.events[-1][2] == "miss" and {p.name: p.read_bytes() for p in directory.iterdir()} == files
    # counted for a run's cost: every image the call returned, and those computed (a batch of 3 is redone whole)
    assert cache.tallies == [ItemTally("images_embedded", 7, 7), ItemTally("images_embedded", 7, 0),
                             ItemTally("images_embedded", 7, 3)]
    diffusion_embeddings(backend, cache, train, NAMES, config, seed=4)  # the seed is in the key
    assert len(list((tmp_path / "ncis-embeddings").iterdir())) == 2


def test_max_per_class_takes_a_seeded_subset_of_every_class(backend, tmp_path):
    labels = torch.tensor([0, 1, 2] * 5)
    chosen = select_images(labels, 2, seed=0)
    assert torch.bincount(labels[chosen]).tolist() == [2, 2, 2] and chosen.tolist() == sorted(chosen.tolist())
    assert torch.equal(chosen, select_images(labels, 2, seed=0))
    assert any(not torch.equal(chosen, select_images(labels, 2, seed=s)) for s in range(1, 5))
    train = ImageSet("toy", _images(15), labels)
    result = diffusion_embeddings(backend, Cache(tmp_path), train, NAMES, replace_config(max_per_class=1), seed=0)
    assert sorted(result.labels.tolist()) == [0, 1, 2]


def replace_config(**changes) -> EmbeddingConfig:
    from dataclasses import replace

    return replace(TINY, **changes)


# --- bad input ------------------------------------------------------------------------------------------------------
def test_missing_model_directory_is_one_line(tmp_path):
    with pytest.raises(HarnessError, match="does not exist; pass a local diffusers SD"):
        load_backend(tmp_path / "nope")


def test_vae_without_encoder_weights_is_refused_before_any_work(model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(model_dir, tmp_path / "decoder-only")
    (weights,) = (copy / "vae").glob("*.safetensors")
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("encoder.")}, weights)
    decoder_only = load_backend(copy)
    with pytest.raises(HarnessError, match="has no encoder weights"):
        diffusion_embeddings(decoder_only, Cache(tmp_path / "c"), _train_set(), NAMES, TINY, seed=0)
    assert not (tmp_path / "c").exists()


def test_class_name_without_token_names_it(backend, tmp_path):
    with pytest.raises(HarnessError, match="class name '€' has no token"):
        diffusion_embeddings(backend, Cache(tmp_path), _train_set(), ["cat", "dog", "€"], TINY, seed=0)
    assert not tmp_path.joinpath("ncis-embeddings").exists()


def test_non_finite_embedding_names_the_image_and_class(backend, monkeypatch):
    unet = backend.unet

    class NanForSecondImage(torch.nn.Module):
        config = unet.config

        def forward(self, sample, t, encoder_hidden_states):
            out = unet(sample, t, encoder_hidden_states=encoder_hidden_states)
            poison = torch.ones(len(sample), 1, 1, 1)
            poison[4:8] = float("nan")  # image 1's four noised copies
            out.sample = out.sample * poison
            return out

    monkeypatch.setattr(backend, "unet", NanForSecondImage())
    with pytest.raises(HarnessError, match=r"training image 11 \(class 'dog'\) became non-finite at Adam step 1"):
        embed_batch(backend, _images(3), [0, 1, 2], NAMES, TINY, [0, 1, 2], indices=[10, 11, 12])


def test_bfloat16_on_cpu_empty_set_and_bad_config_are_one_line(backend, tmp_path):
    with pytest.raises(HarnessError, match="bfloat16 is for GPUs; use precision=float32"):
        diffusion_embeddings(backend, Cache(tmp_path), _train_set(), NAMES, replace_config(precision="bfloat16"), 0)
    empty = ImageSet("empty", torch.zeros((0, 1, 12, 12), dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(HarnessError, match="'empty' is empty"):
        diffusion_embeddings(backend, Cache(tmp_path), empty, NAMES, TINY, 0)
    with pytest.raises(HarnessError, match="max_per_class must be >= 1"):
        EmbeddingConfig(max_per_class=0)
    assert not tmp_path.joinpath("ncis-embeddings").exists()


def test_cli_bad_setting_exits_2_with_one_line(capsys):
    from harness.diffusion.__main__ import main

    assert main(["embed", "--set", "embed.max_per_class=0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "max_per_class must be >= 1" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast is for GPUs")
def test_bfloat16_on_gpu_follows_the_float32_steps():
    gpu = load_backend(REPO / "models" / "tiny-sd-mnist5k", "cuda", "float32")
    images, labels, names = _images(4, 32), [0, 1, 2, 3], ["zero", "one", "two", "three"]
    start = torch.stack([gpu.token_embedding(gpu.class_token(n).token_id) for n in names])
    full = embed_batch(gpu, images, labels, names, TINY, [0, 1, 2, 3])
    half = embed_batch(gpu, images, labels, names, replace_config(precision="bfloat16"), [0, 1, 2, 3])
    assert torch.isfinite(half[0]).all()
    agree = (torch.sign(half[0] - start) == torch.sign(full[0] - start)).float().mean()
    assert agree > 0.9  # Adam's steps are +-lr per coordinate: bf16 must move e the same way as fp32
    torch.testing.assert_close(half[1], full[1], rtol=5e-2, atol=0)


# --- subprocesses: kill -9 and torchrun -----------------------------------------------------------------------------
def _embed_cmd(cache_dir: Path) -> list[str]:
    settings = ["max_per_class=3", "iterations=3", "timesteps_per_image=16", "images_per_call=2"]
    return ["-m", "harness.diffusion", "embed", "--model", str(REPO / "models" / "tiny-sd-mnist5k"),
            "--benchmark", "mnist5k", "--device", "cpu", "--cache-dir", str(cache_dir),
            *[arg for s in settings for arg in ("--set", f"embed.{s}")]]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _stage_files(cache_dir: Path) -> dict[str, bytes]:
    """The stored items; a kill -9 during a write can leave one hidden `.<item>.*.tmp` file that is never read."""
    (directory,) = (cache_dir / "ncis-embeddings").iterdir()
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("uninterrupted")
    out = subprocess.run([sys.executable, *_embed_cmd(cache_dir)], env=_env(), check=True, capture_output=True,
                         text=True, cwd=REPO)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["images"] == 30 and summary["final_loss"] < summary["initial_loss"]
    files = _stage_files(cache_dir)
    assert len(files) == 30
    return files


@pytest.mark.slow
def test_killed_stage_resumed_gives_bit_identical_files(tmp_path, uninterrupted):
    cmd = [sys.executable, *_embed_cmd(tmp_path)]
    process = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage_root = tmp_path / "ncis-embeddings"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if stage_root.is_dir() and any(p.suffix == ".pt" for d in stage_root.iterdir() for p in d.iterdir()):
            break
        time.sleep(0.01)
    assert process.poll() is None, "the stage finished before it could be killed; make the run longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < len(_stage_files(tmp_path)) < 30
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, cwd=REPO)
    assert _stage_files(tmp_path) == uninterrupted


@pytest.mark.slow
@pytest.mark.heavy
def test_torchrun_two_cpu_ranks_give_the_same_embeddings_as_one_process(tmp_path, uninterrupted):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_embed_cmd(tmp_path)]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _stage_files(tmp_path) == uninterrupted
