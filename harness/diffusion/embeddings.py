"""NCIS diffusion embeddings (the NCIS paper, Sec. 3.1, eq. 1, Alg. 1) as a cached, sharded, resumable stage.

For a training image x of class y, the embedding e is found by minimising the noise-prediction loss of eq. 1,

    E_{t, eps ~ N(0, I)} || eps - eps_theta(x_t, t, e) ||^2,   x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps,

over e, where z0 is the VAE latent of x (distribution mode x `scaling_factor`) and e takes the place of the class
word's (first BPE) token embedding in the prompt. The regulariser R(e, e_y) of eq. 1 is implemented as in the paper:
e starts at the class token embedding e_y and takes only `iterations` (3) Adam steps (lr 1e-2). Each step draws
`timesteps_per_image` (32) noised copies of the latent, timesteps on the 50-step DDIM grid (t = k * 20 + 1).

The official script embeds one image per call (its 32 copies in one UNet batch). `embed_batch` puts
`images_per_call` images, each with its own e (the backend's per-sample token substitution), in one UNet call.
The loss it back-propagates is the SUM of the per-image mean losses, so image i's gradient is exactly its own; Adam
is elementwise, so one Adam over the (B, D) parameter equals B independent Adams. Every image's timesteps and noise
come from its own seed, so a batch gives the same embeddings as the one-image loop (`embed_one_at_a_time`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from harness.cache import Cache
from harness.config import content_hash
from harness.diffusion.backend import ClassToken, DiffusionBackend
from harness.diffusion.stage import check_template
from harness.distributed import ShardedStage
from harness.errors import HarnessError

STAGE = "ncis-embeddings"
DIFFUSION_EMBEDDING_VERSION = 1  # eq. 1's optimisation of each training embedding (cache stage `ncis-embeddings`)


@dataclass(frozen=True)
class EmbeddingConfig:
    """Settings of the embedding optimisation (defaults: paper Sec. 4 and the official script).

    `prompt_template`: the paper does not give the embedding prompt; the official script uses "An image of a <class>"
    (its generation prompt differs). `images_per_call`: images per UNet call (x `timesteps_per_image` rows); the
    official script uses 1. `max_per_class`: embed at most this many training images per class, the first N of a
    seeded permutation (Fig. 5d). `precision`: "bfloat16" autocasts text encoder and UNet (GPUs only); e and Adam stay
    float32. `image_size`: None = the model's native resolution (512 for SD v1.4, as the official Resize+CenterCrop).
    """

    prompt_template: str = "An image of a {}"
    iterations: int = 3
    lr: float = 1e-2
    timesteps_per_image: int = 32
    timestep_grid: int = 50
    images_per_call: int = 8
    max_per_class: int | None = None
    precision: Literal["float32", "bfloat16"] = "float32"
    image_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("iterations", "timesteps_per_image", "timestep_grid", "images_per_call"):
            if getattr(self, name) < 1:
                raise HarnessError(f"embedding {name} must be >= 1 (got {getattr(self, name)})")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise HarnessError(f"embedding max_per_class must be >= 1 or none for every image (got "
                               f"{self.max_per_class})")
        if not np.isfinite(self.lr) or self.lr <= 0:
            raise HarnessError(f"embedding lr must be a finite number > 0 (got {self.lr})")
        if self.precision not in ("float32", "bfloat16"):
            raise HarnessError(f"embedding precision {self.precision!r} is not supported; use float32 or bfloat16")
        if self.image_size is not None and self.image_size < 8:
            raise HarnessError(f"embedding image_size must be >= 8 pixels or none (got {self.image_size})")
        check_template(self.prompt_template)


@dataclass
class DiffusionEmbeddings:
    """The stage's output, one row per embedded training image (in training-set order).

    `initial_loss` / `final_loss`: the image's eq. 1 loss (mean over its `timesteps_per_image` noised copies of the
    per-element squared noise-prediction error) on the timesteps and noise of the first Adam step, at e = e_y and at
    the final e respectively; a paired comparison of how much the optimisation fitted the image.
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    initial_loss: torch.Tensor
    final_loss: torch.Tensor
    tokens: dict[str, str]


def class_tokens(backend: DiffusionBackend, prompt_names: Sequence[str]) -> list[ClassToken]:
    """Each class prompt name's token (first BPE piece is optimised); a name with no token is a HarnessError."""
    return [backend.class_token(name) for name in prompt_names]


def check_vae_encoder(model: DiffusionBackend | Path) -> None:
    """The model directory (or a loaded backend's) must ship the VAE encoder's weights (some SD exports keep only
    the decoder); cheap: reads only the weight files' key lists, so plugins call it before any work."""
    vae_dir = (model if isinstance(model, Path) else model.directory) / "vae"
    weights = sorted(vae_dir.glob("*.safetensors")) or sorted(vae_dir.glob("*.bin"))
    if not weights:
        raise HarnessError(f"no VAE weights in {vae_dir}; the embedding stage needs the VAE encoder: use a complete "
                           "diffusers SD v1.x directory")
    keys: list[str] = []
    for file in weights:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                keys += list(handle.keys())
        else:
            keys += list(torch.load(file, map_location="meta", weights_only=True))
    if not any(key.startswith("encoder.") for key in keys):
        raise HarnessError(f"the VAE in {vae_dir} has no encoder weights (decoder only); the embedding stage "
                           "VAE-encodes the training images: use a diffusers SD v1.x directory with the full VAE")


def _autocast(backend: DiffusionBackend, precision: str) -> contextlib.AbstractContextManager:
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(backend.device.type, dtype=torch.bfloat16)


def _check_precision(backend: DiffusionBackend, precision: str) -> None:
    if precision == "bfloat16" and backend.device.type == "cpu":
        raise HarnessError("embedding precision bfloat16 is for GPUs; use precision=float32 on the CPU")


def encode_latents(backend: DiffusionBackend, images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) at any size -> VAE latents (mode x scaling factor), float32: the shorter side resized to
    `size` (bilinear, antialiased), centre-cropped, scaled to [-1, 1], grey images repeated to RGB."""
    x = images.to(backend.device).float() / 127.5 - 1.0
    channels = backend.vae.config.in_channels
    if x.shape[1] != channels:
        if x.shape[1] != 1:
            raise HarnessError(f"images with {x.shape[1]} channels do not fit the VAE's {channels} input channels")
        x = x.expand(-1, channels, -1, -1)
    h, w = x.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        x = F.interpolate(x, size=(max(size, int(h * scale)), max(size, int(w * scale))), mode="bilinear",
                          align_corners=False, antialias=True)
    top, left = int(round((x.shape[-2] - size) / 2)), int(round((x.shape[-1] - size) / 2))
    x = x[..., top:top + size, left:left + size]
    with torch.no_grad():
        mode = backend.vae.encode(x.to(backend.dtype)).latent_dist.mode()
    return mode.float() * backend.vae.config.scaling_factor


def _timestep_grid(backend: DiffusionBackend, grid: int) -> tuple[int, int]:
    """(stride, offset) of the DDIM grid: t = k * stride + offset, k in [0, grid) (SD: 1000 // 50 = 20, + 1)."""
    train_steps = int(backend.scheduler_config.num_train_timesteps)
    if grid > train_steps:
        raise HarnessError(f"embedding timestep_grid {grid} exceeds the model's {train_steps} training timesteps")
    return train_steps // grid, int(backend.scheduler_config.get("steps_offset", 0))


def _draws(seed: int, config: EmbeddingConfig, latent_shape: tuple[int, ...], stride: int,
           offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's timesteps (iterations, T) and noise (iterations, T, c, h, w), drawn on the CPU from its seed."""
    generator = torch.Generator().manual_seed(int(seed))
    steps, noise = [], []
    for _ in range(config.iterations):
        steps.append(torch.randint(0, config.timestep_grid, (config.timesteps_per_image,), generator=generator))
        noise.append(torch.randn((config.timesteps_per_image, *latent_shape), generator=generator))
    return torch.stack(steps) * stride + offset, torch.stack(noise)


def _alphas_cumprod(backend: DiffusionBackend) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(backend.scheduler_config).alphas_cumprod.to(backend.device, torch.float32)


def _optimise(backend: DiffusionBackend, images: torch.Tensor, labels: list[int], prompt_names: Sequence[str],
              tokens: list[ClassToken], config: EmbeddingConfig, seeds: Sequence[int],
              indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alg. 1 for one UNet batch of images, each with its own e, Adam state and draws."""
    device = backend.device
    z0 = encode_latents(backend, images, config.image_size or backend.native_size)
    stride, offset = _timestep_grid(backend, config.timestep_grid)
    draws = [_draws(seed, config, tuple(z0.shape[1:]), stride, offset) for seed in seeds]
    timesteps = torch.stack([d[0] for d in draws], 1).to(device)  # (iterations, B, T)
    noise = torch.stack([d[1] for d in draws], 1).to(device)  # (iterations, B, T, c, h, w)
    abar = _alphas_cumprod(backend)
    n, copies = len(labels), config.timesteps_per_image
    prompts = [config.prompt_template.format(prompt_names[c]) for c in labels]
    token_ids = [tokens[c].token_id for c in labels]
    e = torch.stack([backend.token_embedding(t) for t in token_ids]).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([e], lr=config.lr)
    latents = z0.repeat_interleave(copies, 0)

    def losses(step: int) -> torch.Tensor:
        """Per-image eq. 1 loss (B,) on draw `step`."""
        t = timesteps[step].flatten()
        eps = noise[step].flatten(0, 1)
        a = abar[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * eps
        with _autocast(backend, config.precision):
            context = backend.encode(prompts, token_ids, e).repeat_interleave(copies, 0)
            pred = backend.unet(noisy.to(backend.dtype), t, encoder_hidden_states=context.to(backend.dtype)).sample
        return (pred.float() - eps).pow(2).flatten(1).mean(1).view(n, copies).mean(1)

    initial = None
    for step in range(config.iterations):
        loss = losses(step)
        if initial is None:
            initial = loss.detach()
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # sum of per-image means: each e gets exactly its own image's gradient
        optimizer.step()
        bad = (~torch.isfinite(e.detach()).all(1)).nonzero().flatten().tolist()
        if bad:
            raise HarnessError(f"the embedding of training image {indices[bad[0]]} (class "
                               f"{prompt_names[labels[bad[0]]]!r}) became non-finite at Adam step {step + 1}; "
                               "lower the embedding lr or use precision=float32")
    with torch.no_grad():
        final = losses(0)
    return e.detach().float().cpu(), initial.float().cpu(), final.float().cpu()


def embed_batch(backend: DiffusionBackend, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                prompt_names: Sequence[str], config: EmbeddingConfig, seeds: Sequence[int], *,
                indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings (N, D), initial and final losses (N,) of uint8 images (N, C, H, W) with class indices `labels`
    into `prompt_names`, image i drawing its timesteps and noise from seeds[i]; `config.images_per_call` images
    share a UNet call. `indices` (default 0..N-1) name the images in error messages."""
    labels = [int(c) for c in torch.as_tensor(labels).flatten()]
    seeds = [int(s) for s in seeds]
    indices = list(range(len(labels))) if indices is None else [int(i) for i in indices]
    if len(images) == 0:
        raise HarnessError("no images to embed; give a non-empty training set")
    if not len(images) == len(labels) == len(seeds) == len(indices):
        raise HarnessError(f"{len(images)} images, {len(labels)} labels, {len(seeds)} seeds and {len(indices)} "
                           "indices; give one of each per image")
    if min(labels) < 0 or max(labels) >= len(prompt_names):
        raise HarnessError(f"labels must be class indices in [0, {len(prompt_names)})")
    _check_precision(backend, config.precision)
    tokens = class_tokens(backend, prompt_names)
    outputs = []
    for start in range(0, len(labels), config.images_per_call):
        part = slice(start, start + config.images_per_call)
        outputs.append(_optimise(backend, images[part], labels[part], prompt_names, tokens, config, seeds[part],
                                 indices[part]))
    return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))  # type: ignore[return-value]


def embed_one_at_a_time(backend: DiffusionBackend, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                        prompt_names: Sequence[str], config: EmbeddingConfig, seeds: Sequence[int], *,
                        indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official pattern: one image per call (its `timesteps_per_image` copies in one UNet batch), the same
    per-seed timesteps and noise as `embed_batch`; the reference of the equality test and the benchmark."""
    return embed_batch(backend, images, labels, prompt_names, replace(config, images_per_call=1), seeds,
                       indices=indices)


def select_images(labels: torch.Tensor, max_per_class: int | None, seed: int) -> torch.Tensor:
    """Training indices to embed, ascending: all, or per class the first `max_per_class` of a seeded permutation."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if max_per_class is None:
        return torch.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels.numpy() == c))[:max_per_class]
              for c in sorted(set(labels.tolist()))]
    return torch.from_numpy(np.sort(np.concatenate(chosen))).long()


def image_seed(seed: int, index: int) -> int:
    """The seed of training image `index`'s timesteps and noise (independent of batching and ranks)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def diffusion_embeddings(backend: DiffusionBackend, cache: Cache, train_set, prompt_names: Sequence[str],
                         config: EmbeddingConfig, seed: int, desc: str = "ncis embeddings") -> DiffusionEmbeddings:
    """Sec. 3.1 over a labelled training set (`harness.data` image set): one stored file per embedded image under a
    key of (model fingerprint, dtype, config, prompt names, training-set fingerprint, seed). Fixed batches of
    `images_per_call` images are split round-robin over torchrun ranks; each finished image is written atomically,
    and a rerun (after kill -9) computes only the batches with missing images, ending with identical files."""
    if len(train_set) == 0:
        raise HarnessError(f"training set {train_set.name!r} is empty; there is nothing to embed")
    if train_set.labels is None:
        raise HarnessError(f"training set {train_set.name!r} has no labels; the embedding needs each image's class")
    labels = torch.as_tensor(train_set.labels, dtype=torch.long)
    if labels.min() < 0 or labels.max() >= len(prompt_names):
        raise HarnessError(f"training labels must be class indices in [0, {len(prompt_names)}) "
                           f"({len(prompt_names)} prompt names given)")
    _check_precision(backend, config.precision)
    tokens = class_tokens(backend, prompt_names)
    check_vae_encoder(backend)
    _timestep_grid(backend, config.timestep_grid)
    key = content_hash(STAGE, backend.fingerprint, str(backend.dtype), config, list(prompt_names),
                       train_set.fingerprint, seed, DIFFUSION_EMBEDDING_VERSION)
    stage = ShardedStage(cache, STAGE, key, tally="images_embedded")
    chosen = select_images(labels, config.max_per_class, seed).tolist()

    def compute(batch: list[int]) -> list[dict[str, torch.Tensor]]:
        images = train_set.gather(torch.tensor(batch))
        batch_labels = labels[batch]
        e, initial, final = embed_batch(backend, images, batch_labels, prompt_names, config,
                                        [image_seed(seed, i) for i in batch], indices=batch)
        return [{"embedding": e[j].clone(), "label": batch_labels[j].clone(), "index": torch.tensor(i),
                 "initial_loss": initial[j].clone(), "final_loss": final[j].clone()}
                for j, i in enumerate(batch)]

    stage.run_batches({f"{i:07d}": i for i in chosen}, compute, config.images_per_call,
                      progress=lambda todo: tqdm(todo, desc=desc, unit="batch", leave=False))
    items = [stage.load(f"{i:07d}") for i in chosen]
    return DiffusionEmbeddings(
        embeddings=torch.stack([item["embedding"] for item in items]),
        labels=torch.stack([item["label"] for item in items]),
        indices=torch.stack([item["index"] for item in items]),
        initial_loss=torch.stack([item["initial_loss"] for item in items]),
        final_loss=torch.stack([item["final_loss"] for item in items]),
        tokens={name: token.token for name, token in zip(prompt_names, tokens, strict=True)})
