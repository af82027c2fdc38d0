"""`python -m harness.diffusion train-tiny --out DIR` (retrain the shipped tiny model), `finetune-decoder --model
DIR` (its last stage alone, on a saved model), and
`python -m harness.diffusion generate ...` (class-prompt generation as a sharded stage) and
`python -m harness.diffusion embed ...` (NCIS diffusion embeddings of a benchmark's training images); run either
under torchrun to split the work across processes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import HarnessError, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness.diffusion")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train-tiny", help="train the tiny SD-architecture model on a benchmark's ID images")
    train.add_argument("--out", type=Path, required=True, help="output diffusers directory")
    train.add_argument("--benchmark", default="mnist5k")
    finetune = sub.add_parser("finetune-decoder",
                              help="run the recipe's decoder-only fine-tune on a saved tiny model, in place")
    finetune.add_argument("--model", type=Path, required=True, help="tiny model directory (diffusers layout)")
    gen = sub.add_parser("generate", help="generate class-prompt images as a sharded stage (torchrun-aware)")
    gen.add_argument("--model", default=None, help="local diffusers SD directory (default $OODBENCH_SD_MODEL)")
    gen.add_argument("--classes", required=True, help="comma-separated class names")
    gen.add_argument("--per-class", type=int, default=4)
    gen.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i")
    gen.add_argument("--embeddings", type=Path, default=None,
                     help="torch file with a (classes x per-class, D) tensor to substitute for the class token")
    gen.add_argument("--template", default="A high-quality image of a {}")
    gen.add_argument("--scheduler", choices=("pndm", "ddim"), default="pndm")
    gen.add_argument("--steps", type=int, default=50)
    gen.add_argument("--guidance", type=float, default=7.5)
    gen.add_argument("--batch-size", type=int, default=16)
    gen.add_argument("--output-size", type=int, default=None)
    gen.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    gen.add_argument("--device", default="auto")
    gen.add_argument("--cache-dir", type=Path, default=None)
    embed = sub.add_parser("embed", help="NCIS diffusion embeddings of a benchmark's training images as a sharded "
                                         "stage (torchrun-aware)")
    embed.add_argument("--model", default=None, help="local diffusers SD directory (default $OODBENCH_SD_MODEL)")
    embed.add_argument("--benchmark", default="mnist5k")
    embed.add_argument("--preset", default="paper")
    embed.add_argument("--data-root", type=Path, default=None)
    embed.add_argument("--seed", type=int, default=0)
    embed.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="an EmbeddingConfig field, e.g. --set embed.max_per_class=10 (repeatable)")
    embed.add_argument("--out", type=Path, default=None, help="also save the embeddings (a torch file) here")
    embed.add_argument("--dtype", default="float32", choices=("auto", "float32", "float16", "bfloat16"))
    embed.add_argument("--device", default="auto")
    embed.add_argument("--cache-dir", type=Path, default=None)
    return parser


def _device_for_rank(name: str):  # noqa: ANN202 (a torch.device)
    """The device named by --device; under torchrun on CUDA, this rank's local GPU. Joins the process group."""
    import os

    import torch

    from harness.device import resolve_device
    from harness.distributed import dist_rank_world, init_distributed

    device = resolve_device(name)
    if device.type == "cuda" and dist_rank_world()[1] > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    init_distributed(device)
    return device


def cmd_generate(args: argparse.Namespace) -> None:
    import torch

    from harness.cache import Cache, load_tensors
    from harness.diffusion.backend import GenerationConfig, load_backend
    from harness.diffusion.stage import generate_images
    from harness.distributed import dist_rank_world

    try:
        config = GenerationConfig(scheduler=args.scheduler, steps=args.steps, guidance_scale=args.guidance,
                                  batch_size=args.batch_size, output_size=args.output_size)
    except ValueError as err:
        raise HarnessError(f"generate: {err}") from None
    device = _device_for_rank(args.device)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    labels = torch.arange(len(classes)).repeat_interleave(args.per_class)
    embeddings = load_tensors(args.embeddings) if args.embeddings else None
    backend = load_backend(args.model, device, args.dtype)
    paths = generate_images(backend, Cache(args.cache_dir) if args.cache_dir else Cache(), classes, labels,
                            args.seed + torch.arange(len(labels)), config, args.template, embeddings)
    if dist_rank_world()[0] == 0:
        print(paths[0].parent)


def cmd_embed(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from harness.cache import Cache, atomic_torch_save
    from harness.config import build_config, parse_set_options
    from harness.data.benchmarks import load_benchmark
    from harness.data.spec import load_spec
    from harness.diffusion.backend import load_backend
    from harness.diffusion.embeddings import EmbeddingConfig, diffusion_embeddings
    from harness.distributed import dist_rank_world

    scopes = parse_set_options(args.set)
    if set(scopes) - {"embed"}:
        raise HarnessError(f"--set {sorted(set(scopes) - {'embed'})[0]}.* is not an embedding setting; write "
                           "--set embed.FIELD=VALUE, e.g. --set embed.max_per_class=10")
    config = build_config(EmbeddingConfig, scopes.get("embed", {}), "embed")
    device = _device_for_rank(args.device)
    cache = Cache(args.cache_dir) if args.cache_dir else Cache()
    spec = load_spec(args.benchmark)
    backend = load_backend(args.model, device, args.dtype)
    train = load_benchmark(spec, cache, args.data_root, spec.preset(args.preset)).train
    result = diffusion_embeddings(backend, cache, train, spec.prompt_names, config, args.seed)
    if dist_rank_world()[0] == 0:
        if args.out:
            atomic_torch_save(asdict(result), args.out)
        print(json.dumps({"images": len(result.indices), "dim": result.embeddings.shape[1],
                          "initial_loss": result.initial_loss.mean().item(),
                          "final_loss": result.final_loss.mean().item(), "tokens": result.tokens}))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> None:
        if args.command == "train-tiny":
            from harness.diffusion.tiny import train_tiny

            print(json.dumps(train_tiny(args.out, args.benchmark), indent=2))
        elif args.command == "finetune-decoder":
            from harness.diffusion.tiny import finetune_saved_decoder

            print(json.dumps(finetune_saved_decoder(args.model), indent=2))
        elif args.command == "embed":
            cmd_embed(args)
        else:
            cmd_generate(args)

    return run_command(command, "interrupted; finished images are kept and a rerun generates only the missing ones")


if __name__ == "__main__":
    sys.exit(main())
