"""`resolve_device`: the torch device a run asks for (`auto`, `cpu`, `cuda`, `cuda:N`), with a one-line error when it
is not there."""

from __future__ import annotations

import torch

from harness.errors import HarnessError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise HarnessError(f"--device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    return torch.device(name)
