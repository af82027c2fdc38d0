"""The tiny Stable-Diffusion-architecture model of the embedded benchmark, and the command that trains it.

Same component classes as SD v1.4 (AutoencoderKL, CLIPTextModel, UNet2DConditionModel, CLIPTokenizer, a PNDM
scheduler with SD's scaled-linear beta schedule), shrunk for 32x32 digits and for training on a shared 2-core CPU:
the VAE maps 32x32x3 to 4x4x4 latents (SD's factor 8: 512x512x3 to 64x64x4), the text encoder is 2 layers of
width 64 over a word-level BPE vocabulary, the UNet has two resolution levels (32, 64 channels) with
cross-attention.

Training (`python -m harness.diffusion train-tiny --out models/tiny-sd-mnist5k`): first the VAE (reconstruction +
small KL), then the UNet and text encoder jointly on epsilon prediction (DDPM loss, SD's noise schedule) with the
prompt "A high-quality image of a <digit name>" and 10% empty prompts for classifier-free guidance.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from harness.cache import atomic_write_bytes
from harness.diffusion.tokenizer import EOS, write_word_tokenizer
from harness.errors import HarnessError

TEMPLATE = "A high-quality image of a {}"
TEMPLATE_WORDS = ("a", "high", "quality", "image", "of", "the")


@dataclass(frozen=True)
class TinySDConfig:
    """Architecture of a tiny SD-layout pipeline (defaults: the shipped mnist5k model)."""

    image_size: int = 32
    vae_channels: tuple[int, ...] = (8, 16, 32, 32)
    latent_channels: int = 4
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16
    unet_channels: tuple[int, ...] = (32, 64)
    unet_head_dim: int = 8
    norm_groups: int = 8


@dataclass(frozen=True)
class TinyTrainConfig:
    """Training recipe of the shipped model; `python -m harness.diffusion train-tiny` reproduces it."""

    seed: int = 0
    vae_epochs: int = 4
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    unet_steps: int = 4000
    unet_lr: float = 2e-3
    batch_size: int = 64
    unet_batch_size: int = 32
    uncond_prob: float = 0.1
    decoder_epochs: int = 4  # decoder-only fine-tune on the frozen encoder's latents, after the UNet (see train_tiny)
    decoder_lr: float = 1e-3
    threads: int = 1  # one thread: on a shared 2-core machine two OpenMP threads ran up to 30x slower


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_components(words: list[str], directory: Path, config: TinySDConfig = TinySDConfig()) -> dict:
    """Random-weight components of a tiny SD pipeline; the tokenizer files are written to `directory/tokenizer`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    write_word_tokenizer(list(TEMPLATE_WORDS) + list(words), Path(directory) / "tokenizer", config.max_length)
    tokenizer = CLIPTokenizer.from_pretrained(Path(directory) / "tokenizer")
    levels = len(config.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=config.vae_channels,
                        layers_per_block=1, latent_channels=config.latent_channels,
                        norm_num_groups=min(config.norm_groups, config.vae_channels[0]), sample_size=config.image_size)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_width, intermediate_size=2 * config.text_width,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_length, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
        pad_token_id=eos))
    n = len(config.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=config.image_size // 2 ** (levels - 1), in_channels=config.latent_channels,
        out_channels=config.latent_channels, block_out_channels=config.unet_channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=config.text_width, attention_head_dim=config.unet_head_dim,
        norm_num_groups=min(config.norm_groups, config.unet_channels[0]))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}


def save_pipeline(components: dict, directory: Path, extra: dict | None = None) -> None:
    """Save as a diffusers StableDiffusionPipeline directory (SD v1.4 layout, safetensors, PNDM scheduler)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    scheduler = PNDMScheduler.from_config(components["scheduler"].config, skip_prk_steps=True,
                                          set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=components["vae"], text_encoder=components["text_encoder"],
                                   tokenizer=components["tokenizer"], unet=components["unet"], scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(directory, safe_serialization=True)
    if extra:
        (Path(directory) / "training.json").write_text(json.dumps(extra, indent=2) + "\n")


def _to_rgb(images_u8: torch.Tensor) -> torch.Tensor:
    x = images_u8.float() / 127.5 - 1.0
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def train_vae(vae: torch.nn.Module, images: torch.Tensor, epochs: int, lr: float, batch_size: int,
              generator: torch.Generator, kl_weight: float = 0.0,
              posterior: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """Reconstruction MSE (+ kl_weight * KL), Adam with a one-cycle schedule; returns the last epoch's mean MSE.

    With `posterior` (the frozen encoder's per-image latent mean and std) only the decoder side is trained, on
    latents sampled from that posterior: the latent space the UNet was trained in stays exactly as it was (the
    decoder-only fine-tune Stability AI used for SD's ft-MSE VAE).
    """
    if posterior is not None:
        vae.requires_grad_(False)
        for module in (vae.decoder, vae.post_quant_conv):
            module.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    vae.train()
    bar = tqdm(total=steps, desc="fine-tune tiny VAE decoder" if posterior is not None else "train tiny VAE",
               unit="step")
    final = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = _to_rgb(images[idx])
            if posterior is None:
                dist = vae.encode(x).latent_dist
                mean, std = dist.mean, dist.std
            else:
                mean, std = posterior[0][idx], posterior[1][idx]
            z = mean + std * torch.randn(mean.shape, generator=generator)
            mse = F.mse_loss(vae.decode(z).sample, x)
            loss = mse + kl_weight * dist.kl().mean() if posterior is None else mse
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += mse.item() * len(x)
            bar.update(1)
            bar.set_postfix(mse=f"{mse.item():.4f}")
        final = total / len(images)
    bar.close()
    vae.eval()
    vae.requires_grad_(False)
    return final


def encode_posterior(vae: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image latent mean and std of the (eval-mode) VAE encoder."""
    with torch.no_grad():
        dists = [vae.encode(_to_rgb(images[i:i + 500])).latent_dist for i in range(0, len(images), 500)]
    return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])


def finetune_decoder(vae: torch.nn.Module, images: torch.Tensor, config: TinyTrainConfig) -> float:
    """The recipe's last stage: decoder-only fine-tune with its own generator (seed + 1), so it gives the same
    weights whether it runs at the end of `train_tiny` or on an already trained model (`finetune-decoder`)."""
    return train_vae(vae, images, config.decoder_epochs, config.decoder_lr, config.batch_size,
                     torch.Generator().manual_seed(config.seed + 1), posterior=encode_posterior(vae.eval(), images))


def train_unet(components: dict, latents: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
               class_names: list[str], config: TinyTrainConfig, generator: torch.Generator) -> float:
    """Epsilon-prediction loss on SD's noise schedule, UNet and text encoder trained together; returns the mean
    loss over the last 200 steps."""
    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    scheduler = components["scheduler"]
    prompts = [TEMPLATE.format(name) for name in class_names] + [""]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.unet_lr, total_steps=config.unet_steps,
                                                   pct_start=0.05)
    mean, std = latents
    unet.train()
    text_encoder.train()
    alphas = scheduler.alphas_cumprod
    recent: list[float] = []
    bar = tqdm(range(config.unet_steps), desc="train tiny UNet", unit="step")
    for _ in bar:
        idx = torch.randint(0, len(mean), (config.unet_batch_size,), generator=generator)
        z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)
        cond = torch.where(torch.rand(len(idx), generator=generator) < config.uncond_prob, len(class_names),
                           labels[idx])
        t = torch.randint(0, len(alphas), (len(idx),), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
        context = text_encoder(ids[cond]).last_hidden_state
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        recent = (recent + [loss.item()])[-200:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
    return sum(recent) / len(recent)


def train_tiny(out: Path, benchmark: str = "mnist5k", config: TinyTrainConfig = TinyTrainConfig(),
               arch: TinySDConfig = TinySDConfig()) -> dict:
    """Train the tiny model on the benchmark's ID training images and save it to `out` (diffusers layout)."""
    from harness.cache import Cache
    from harness.data.benchmarks import load_benchmark
    from harness.data.spec import load_spec

    with torch_threads(config.threads):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        spec = load_spec(benchmark)
        data = load_benchmark(spec, Cache())
        started = time.perf_counter()
        out = Path(out)
        components = build_components(list(spec.class_names), out, arch)
        images, labels = data.train.images, data.train.labels
        vae = components["vae"]
        vae_mse = train_vae(vae, images, config.vae_epochs, config.vae_lr, config.batch_size, generator,
                            kl_weight=config.kl_weight)
        mean, std = encode_posterior(vae, images)
        scaling = float(1.0 / mean.std())
        vae.register_to_config(scaling_factor=scaling)
        unet_loss = train_unet(components, (mean * scaling, std * scaling), labels, list(spec.class_names), config,
                               generator)
        components["unet"].eval()
        components["text_encoder"].eval()
        decoder_mse = finetune_decoder(vae, images, config)
        facts = {"benchmark": benchmark, "train_images": len(images), "train_fingerprint": data.train.fingerprint,
                 "prompt_template": TEMPLATE.replace("{}", "<class name>"), "train": asdict(config),
                 "architecture": asdict(arch), "vae_final_mse": round(vae_mse, 5),
                 "decoder_final_mse": round(decoder_mse, 5), "vae_scaling_factor": scaling,
                 "unet_final_loss": round(unet_loss, 5), "seconds": round(time.perf_counter() - started, 1),
                 "command": f"python -m harness.diffusion train-tiny --out {out}"}
        save_pipeline(components, out, facts)
        return facts


def finetune_saved_decoder(model: Path) -> dict:
    """Run the recipe's decoder fine-tune (`finetune_decoder`) on a saved tiny model whose `training.json` predates
    it, in place: the VAE weights are replaced by a rename, and training.json records the new recipe."""
    from diffusers import AutoencoderKL

    from harness.cache import Cache
    from harness.data.benchmarks import load_benchmark
    from harness.data.spec import load_spec

    model = Path(model)
    facts = json.loads((model / "training.json").read_text())
    if "decoder_final_mse" in facts:
        raise HarnessError(f"{model}: the decoder is already fine-tuned (training.json has decoder_final_mse)")
    config = TinyTrainConfig(**{**facts["train"], "decoder_epochs": TinyTrainConfig.decoder_epochs,
                                "decoder_lr": TinyTrainConfig.decoder_lr})
    data = load_benchmark(load_spec(facts["benchmark"]), Cache())
    if data.train.fingerprint != facts["train_fingerprint"]:
        raise HarnessError(f"{model} was trained on different {facts['benchmark']} images "
                           f"({facts['train_fingerprint']} vs {data.train.fingerprint}); retrain it with train-tiny")
    with torch_threads(config.threads):
        vae = AutoencoderKL.from_pretrained(model / "vae")
        started = time.perf_counter()
        decoder_mse = finetune_decoder(vae, data.train.images, config)
    staged = model / ".vae.tmp"
    shutil.rmtree(staged, ignore_errors=True)
    vae.save_pretrained(staged, safe_serialization=True)
    saved = json.loads((staged / "config.json").read_text())
    saved.pop("_name_or_path", None)  # a local path, not part of the model
    (staged / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    old = model / ".vae.old"
    (model / "vae").rename(old)
    staged.rename(model / "vae")
    shutil.rmtree(old)
    facts.update(train=asdict(config), decoder_final_mse=round(decoder_mse, 5),
                 decoder_seconds=round(time.perf_counter() - started, 1))
    atomic_write_bytes(model / "training.json", (json.dumps(facts, indent=2) + "\n").encode())
    return facts
