"""Stable Diffusion backend: load a local diffusers SD v1.x directory, encode prompts with a different substituted
token embedding per sample, and generate images in batches with per-sample seeds.

Dream-OOD (Sec. 3.2) and NCIS (Sec. 3.1/3.4) decode a vector `e` placed where the class word's
token embedding would be: prompt "A high-quality image of the <class>", the class word's (first BPE) token row
replaced by `e`, the CLIP text encoder run, the result fed to the UNet as cross-attention context. The official
code overwrites the shared embedding table row (one `e` per batch) and restores it; here the substitution happens
on the text encoder's token-embedding *output* through a forward hook, per sample, so one batch can carry many
embeddings, the weights are never touched, and the result is differentiable with respect to `e` (NCIS optimises
it). Outputs equal the table-overwrite of the reference code: every occurrence of the token in the prompt is
replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

from harness.errors import HarnessError
from harness.paths import DATA_HOME

MODEL_ENV = "OODBENCH_SD_MODEL"
COMPONENT_FILES = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                   "tokenizer": "vocab.json", "scheduler": "scheduler_config.json"}
Dtype = Literal["auto", "float32", "float16", "bfloat16"]
Interpolation = Literal["bilinear", "nearest", "bicubic", "area"]


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings (Dream-OOD/NCIS generation: PLMS = PNDM without Runge-Kutta steps, 50 steps, guidance 7.5,
    512x512, then bilinear resize to 256x256). `height`/`width` None = the model's native resolution;
    `output_size` None = no resize."""

    scheduler: Literal["pndm", "ddim"] = "pndm"
    steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    eta: float = 0.0
    output_size: int | None = None
    interpolation: Interpolation = "bilinear"
    antialias: bool = False
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1 (got {self.steps})")
        if not np.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0 (got {self.guidance_scale})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")
        for name in ("height", "width", "output_size"):
            value = getattr(self, name)
            if value is not None and value < 8:
                raise ValueError(f"{name} must be >= 8 pixels or none (got {value})")


@dataclass(frozen=True)
class ClassToken:
    """How a class name tokenizes: all its BPE ids and the one whose embedding row is substituted (the first)."""

    name: str
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]

    @property
    def token_id(self) -> int:
        return self.token_ids[0]

    @property
    def token(self) -> str:
        return self.tokens[0]


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """The SD directory: `path` (relative: also tried in the data home), else $OODBENCH_SD_MODEL."""
    raw = path if path not in (None, "") else os.environ.get(MODEL_ENV)
    if not raw:
        raise HarnessError(f"no Stable Diffusion directory given; set the method's model path or ${MODEL_ENV} to a "
                           "local diffusers SD v1.x directory")
    candidate = Path(raw).expanduser()
    if not candidate.is_absolute() and not candidate.exists() and (DATA_HOME / candidate).exists():
        candidate = DATA_HOME / candidate
    if not candidate.is_dir():
        raise HarnessError(f"Stable Diffusion directory {candidate} does not exist; pass a local diffusers SD v1.x "
                           "directory (unet, vae, text_encoder, tokenizer, scheduler)")
    for component, marker in COMPONENT_FILES.items():
        if not (candidate / component / marker).is_file():
            raise HarnessError(f"Stable Diffusion directory {candidate} lacks its {component} component "
                               f"({component}/{marker}); pass a complete diffusers SD v1.x directory")
    return candidate.resolve()


def model_fingerprint(directory: Path) -> str:
    """Content key of a model directory: every config file's bytes plus each weight file's name and size."""
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = str(file.relative_to(directory)).encode()
        if file.suffix in (".json", ".txt"):
            digest.update(rel + file.read_bytes())
        else:
            digest.update(rel + str(file.stat().st_size).encode())
    return digest.hexdigest()[:16]


def resolve_dtype(dtype: Dtype, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


class DiffusionBackend:
    """A loaded SD pipeline's components (see module docstring). Build with `load_backend`."""

    def __init__(self, directory: Path, components: dict, device: torch.device, dtype: torch.dtype) -> None:
        self.directory = directory
        self.fingerprint = model_fingerprint(directory)
        self.tokenizer = components["tokenizer"]
        self.text_encoder = components["text_encoder"]
        self.unet = components["unet"]
        self.vae = components["vae"]
        self.scheduler_config = components["scheduler"].config
        self.device, self.dtype = device, dtype
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._token_table = self.text_encoder.get_input_embeddings()
        self._uncond: torch.Tensor | None = None

    # --- tokens ---------------------------------------------------------------------------------------------------
    @property
    def token_dim(self) -> int:
        return self._token_table.embedding_dim

    @property
    def native_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale

    def class_token(self, name: str) -> ClassToken:
        """Token ids of a class name (without start/end tokens); raises if none is in the vocabulary."""
        ids = self.tokenizer(name, add_special_tokens=False).input_ids
        unk = self.tokenizer.unk_token_id
        if not ids or all(i == unk for i in ids):
            raise HarnessError(f"class name {name!r} has no token in the tokenizer's vocabulary "
                               f"({self.directory / 'tokenizer'}); rename the class or use a model that knows it")
        return ClassToken(name, tuple(ids), tuple(self.tokenizer.convert_ids_to_tokens(ids)))

    def token_embedding(self, token_id: int) -> torch.Tensor:
        """A copy of one row of the text encoder's token-embedding table (float32, CPU)."""
        return self._token_table.weight[token_id].detach().float().cpu().clone()

    def prompt_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    # --- prompt encoding --------------------------------------------------------------------------------------------
    def check_embeddings(self, vectors: torch.Tensor) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.token_dim:
            raise HarnessError(f"embeddings of shape {tuple(vectors.shape)} do not fit this text encoder: expected "
                               f"(N, {self.token_dim})")
        if not torch.isfinite(vectors).all():
            bad = int((~torch.isfinite(vectors)).any(1).sum())
            raise HarnessError(f"{bad} of {len(vectors)} embeddings contain NaN or infinite values; check the "
                               "sampler that produced them")

    @contextlib.contextmanager
    def _substituted(self, ids: torch.Tensor, token_ids: torch.Tensor, vectors: torch.Tensor) -> Iterator[None]:
        """While active, the token-embedding layer's output has row i's occurrences of token_ids[i] replaced by
        vectors[i]."""
        mask = (ids == token_ids[:, None]).to(self.device)
        missing = (~mask.any(1)).nonzero().flatten().tolist()
        if missing:
            raise HarnessError(f"the substituted token {token_ids[missing[0]].item()} does not occur in prompt "
                               f"{missing[0]}; the prompt must contain the class word")

        def hook(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return torch.where(mask[..., None], vectors[:, None, :].to(output.dtype), output)

        handle = self._token_table.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def encode(self, prompts: Sequence[str], token_ids: torch.Tensor | Sequence[int] | None = None,
               vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Text-encoder context (N, L, D) of `prompts`; with `token_ids`/`vectors`, prompt i has every occurrence of
        token_ids[i] embedded as vectors[i]. Gradients flow to `vectors`; call under no_grad when not needed."""
        ids = self.prompt_ids(prompts)
        if vectors is None:
            return self.text_encoder(ids.to(self.device)).last_hidden_state
        token_ids = torch.as_tensor(token_ids, dtype=torch.long)
        if len(token_ids) != len(ids) or len(vectors) != len(ids):
            raise HarnessError(f"{len(prompts)} prompts but {len(token_ids)} token ids and {len(vectors)} embeddings;"
                               " give one of each per prompt")
        self.check_embeddings(vectors.detach())
        with self._substituted(ids, token_ids, vectors.to(self.device)):
            return self.text_encoder(ids.to(self.device)).last_hidden_state

    def unconditional(self) -> torch.Tensor:
        if self._uncond is None:
            with torch.no_grad():
                self._uncond = self.encode([""])
        return self._uncond

    # --- sampling ---------------------------------------------------------------------------------------------------
    def new_scheduler(self, config: GenerationConfig):  # noqa: ANN201 (a diffusers scheduler)
        from diffusers import DDIMScheduler, PNDMScheduler

        if config.scheduler == "ddim":
            scheduler = DDIMScheduler.from_config(self.scheduler_config)
        else:
            scheduler = PNDMScheduler.from_config(self.scheduler_config, skip_prk_steps=True)
        scheduler.set_timesteps(config.steps, device=self.device)
        return scheduler

    def initial_noise(self, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
        """One latent per seed, drawn on the CPU so a seed gives the same image on any device and in any batch."""
        shape = (self.unet.config.in_channels, height // self.vae_scale, width // self.vae_scale)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(noise).to(self.device, self.dtype)

    @torch.no_grad()
    def sample(self, context: torch.Tensor, seeds: Sequence[int], config: GenerationConfig) -> torch.Tensor:
        """Images in [0, 1] (N, C, H, W), float32 on the CPU, from contexts (N, L, D) and one seed per image."""
        if len(seeds) != len(context):
            raise HarnessError(f"{len(context)} prompts but {len(seeds)} seeds; give one seed per image")
        height = config.height or self.native_size
        width = config.width or self.native_size
        if height % self.vae_scale or width % self.vae_scale:
            raise HarnessError(f"height and width must be multiples of {self.vae_scale} for this VAE "
                               f"(got {height}x{width})")
        scheduler = self.new_scheduler(config)
        latents = self.initial_noise(seeds, height, width) * scheduler.init_noise_sigma
        guided = config.guidance_scale != 1.0
        context = context.to(self.dtype)
        if guided:
            context = torch.cat([self.unconditional().to(self.dtype).expand(len(context), -1, -1), context])
        extra = {"eta": config.eta} if config.scheduler == "ddim" else {}
        for t in scheduler.timesteps:
            model_in = torch.cat([latents, latents]) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            eps = self.unet(model_in, t, encoder_hidden_states=context).sample
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + config.guidance_scale * (cond - uncond)
            latents = scheduler.step(eps, t, latents, **extra).prev_sample
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        if config.output_size is not None and images.shape[-1] != config.output_size:
            antialias = config.antialias and config.interpolation in ("bilinear", "bicubic")
            mode = "nearest-exact" if config.interpolation == "nearest" else config.interpolation  # PIL's NEAREST
            images = F.interpolate(images, size=(config.output_size, config.output_size), mode=mode,
                                   antialias=antialias,
                                   **({"align_corners": False} if mode in ("bilinear", "bicubic") else {}))
        return images.clamp(0, 1).cpu()

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], config: GenerationConfig,
                 token_ids: Sequence[int] | torch.Tensor | None = None,
                 vectors: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images (N, C, H, W): prompt i (with token_ids[i] embedded as vectors[i]) decoded from seed i, in
        batches of `config.batch_size`."""
        out = []
        for start in range(0, len(prompts), config.batch_size):
            part = slice(start, start + config.batch_size)
            with torch.no_grad():
                context = self.encode(prompts[part], None if vectors is None else token_ids[part],
                                      None if vectors is None else vectors[part])
            out.append(to_uint8(self.sample(context, seeds[part], config)))
        return torch.cat(out)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 by rounding (the reference code truncates; the difference is below one level)."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8)


def load_backend(path: str | os.PathLike | None, device: torch.device | str = "cpu", dtype: Dtype = "auto",
                 compile_unet: bool = False) -> DiffusionBackend:
    """Load a local SD v1.x diffusers directory (never downloads). On CUDA: half precision, SDPA attention,
    channels_last UNet/VAE and optionally `torch.compile` of the UNet."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    directory = resolve_model_path(path)
    device = torch.device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if torch_dtype != torch.float32 and device.type == "cpu":
        raise HarnessError(f"dtype {dtype} is for GPUs; use float32 on the CPU")
    loaders = {"tokenizer": lambda: CLIPTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True),
               "text_encoder": lambda: CLIPTextModel.from_pretrained(directory, subfolder="text_encoder",
                                                                     local_files_only=True, dtype=torch_dtype),
               "unet": lambda: UNet2DConditionModel.from_pretrained(directory, subfolder="unet",
                                                                    local_files_only=True, torch_dtype=torch_dtype,
                                                                    low_cpu_mem_usage=False),
               "vae": lambda: AutoencoderKL.from_pretrained(directory, subfolder="vae", local_files_only=True,
                                                            torch_dtype=torch_dtype, low_cpu_mem_usage=False),
               "scheduler": lambda: _scheduler_class(directory, diffusers).from_pretrained(
                   directory, subfolder="scheduler", local_files_only=True)}
    components = {}
    for name, load in loaders.items():
        try:
            components[name] = load()
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HarnessError(f"cannot load the {name} component of {directory} ({first}); check its files") \
                from None
    for name in ("text_encoder", "unet", "vae"):
        components[name].to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        from diffusers.models.attention_processor import AttnProcessor2_0

        components["unet"].set_attn_processor(AttnProcessor2_0())
        components["unet"].to(memory_format=torch.channels_last)
        components["vae"].to(memory_format=torch.channels_last)
        if compile_unet:
            components["unet"] = torch.compile(components["unet"])
    return DiffusionBackend(directory, components, device, torch_dtype)


def _scheduler_class(directory: Path, diffusers: object) -> type:
    name = json.loads((directory / "scheduler" / "scheduler_config.json").read_text()).get("_class_name", "")
    if not hasattr(diffusers, name):
        raise ValueError(f"scheduler class {name!r} is not a diffusers scheduler")
    return getattr(diffusers, name)


def png_bytes(image: torch.Tensor, metadata: dict[str, object]) -> bytes:
    """uint8 (C, H, W) -> PNG bytes with each metadata entry as a text chunk."""
    import io

    from PIL import Image, PngImagePlugin

    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(key, json.dumps(value) if not isinstance(value, str) else value)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """A PNG written by `png_bytes`: uint8 (C, H, W) and its text metadata."""
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img)
        meta = dict(img.text)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), meta
