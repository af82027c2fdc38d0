"""Where a record came from: the numerics-relevant environment of a run (thread counts, the kernels in use and the
CPU they run on, GPU, CUDA/cuDNN, deterministic flags), the run settings that pin it (`--threads`,
`--deterministic`, the kernel mode of `harness.numerics`), and a comparison of two environments that names what
differs. Nothing personal is stored (no host name, user or path).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from typing import Any

import torch

from harness.errors import HarnessError
from harness.numerics import cpu_identity, kernel_facts

# Facts that change a run's numbers, in the order a difference is reported.
NUMERIC_FACTS = ("code_version", "torch", "torch_threads", "device", "kernels", "cpu", "cpu_id", "gpu", "cuda",
                 "cudnn", "deterministic")
# The facts a portable kernel mode makes irrelevant: which x86 CPU ran the pinned kernels.
CPU_FACTS = ("cpu", "cpu_id")


def portable(facts: dict[str, Any]) -> bool:
    """Whether `facts` (a record's environment or `numeric_facts`) come from a portable kernel mode on the CPU."""
    kernels = facts.get("kernels")
    return isinstance(kernels, dict) and kernels.get("mode", "native") != "native" and facts.get("device") == "cpu"


def decisive(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts that decide whether identical code must reproduce a number exactly: all but the commit, and, under
    a portable kernel mode, all but the CPU's identity (its kernels are pinned; `harness.numerics`)."""
    dropped = ("code_version", *(CPU_FACTS if portable(facts) else ()))
    return {k: v for k, v in facts.items() if k not in dropped}


def apply_run_settings(threads: int | None, deterministic: bool) -> None:
    """Pin torch's intra-op thread count (None keeps the current one) and, with `deterministic`, make torch use
    deterministic algorithms (cuDNN deterministic, no autotuning, cuBLAS workspace pinned)."""
    if threads is not None:
        if threads < 1:
            raise HarnessError(f"--threads {threads} must be >= 1, e.g. --threads 1")
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def run_settings(threads: int | None, deterministic: bool) -> Iterator[None]:
    """`apply_run_settings` for the duration of a run; the previous thread count and flags are restored after."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        apply_run_settings(threads, deterministic)
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def environment(device: torch.device) -> dict[str, Any]:
    """The run's environment as stored in each record (see `NUMERIC_FACTS`)."""
    cuda = device.type == "cuda"
    cpu = cpu_identity()
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": device.type,
        "cpu": cpu.get("name") or platform.processor() or platform.machine(),  # the model name
        "cpu_id": cpu,
        "kernels": kernel_facts(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "os": f"{platform.system()} {platform.machine()}",
    }


def numerics_scope(device: torch.device) -> dict[str, Any]:
    """What every cached stage of a run is keyed by beyond its inputs: the decisive environment (thread count,
    kernel mode and instruction sets, device; the CPU's identity unless the kernels are pinned) and torch's
    version, so that no stage computed under other numerics is ever reused."""
    return {"torch": torch.__version__, **decisive(environment(device))}


def numeric_facts(code_version: str, libraries: dict[str, str], env: dict[str, Any]) -> dict[str, Any]:
    """The facts of `NUMERIC_FACTS` for one record ("unrecorded" where an older record lacks them)."""
    known = {"code_version": code_version, "torch": libraries.get("torch"), **env}
    return {fact: known.get(fact, "unrecorded") for fact in NUMERIC_FACTS}


def differences(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """`fact: expected -> got` for every numerics-relevant fact that differs (both as from `numeric_facts`), then
    the facts only one side recorded."""
    def value(facts: dict[str, Any], fact: str) -> Any:
        return facts.get(fact, "unrecorded")

    both = [f for f in NUMERIC_FACTS if "unrecorded" not in (value(expected, f), value(got, f))]
    lines = []
    for fact in (f for f in both if value(expected, f) != value(got, f)):
        old, new = value(expected, fact), value(got, fact)
        if isinstance(old, dict) and isinstance(new, dict):  # name the parts that differ, e.g. kernels.aten
            lines += [f"{fact}.{k}: {old.get(k, 'unrecorded')} -> {new.get(k, 'unrecorded')}"
                      for k in sorted(set(old) | set(new), key=str) if old.get(k) != new.get(k)]
        else:
            lines.append(f"{fact}: {old} -> {new}")
    missing = [f for f in NUMERIC_FACTS if f not in both and value(expected, f) != value(got, f)]
    return lines + ([f"unrecorded on one side: {', '.join(missing)}"] if missing else [])
