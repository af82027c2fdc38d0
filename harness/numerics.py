"""Which kernels compute a run's numbers, and the portable mode that pins them.

On x86 every numeric library picks its code path from the CPU it runs on: ATen's vectorised kernels (AVX2 or
AVX-512), oneDNN's JIT convolutions (ISA *and* the cache sizes it detects), MKL's BLAS (its own dispatch, which
differs between Intel and AMD CPUs), OpenBLAS in numpy and scipy (a per-core-type kernel and blocking) and faiss
(AVX2 or AVX-512 builds). A classifier trained for thousands of steps turns the last-bit differences of these paths
into visible metric differences, so records from two CPUs of different kinds differ.

The portable mode (`--kernels avx2`, the default) fixes every one of them before torch loads:

- ATen: `ATEN_CPU_CAPABILITY` (compiled kernels, the same on every CPU that has the instruction set);
- oneDNN: capped by `ONEDNN_MAX_CPU_ISA` (its JIT kernels also size their blocks by the detected caches; keeping
  oneDNN on is 2.7x faster for the mnist5k classifier than ATen's im2col convolution, and the AVX2-capped kernels
  reproduced records across AMD CPUs with different caches, but across CPU vendors this is the least proven pin);
- MKL: conditional numerical reproducibility `MKL_CBWR=COMPATIBLE`, the one branch Intel documents as giving the
  same results on Intel and non-Intel processors (the AVX2 branch exists only on Intel CPUs; elsewhere MKL ignores
  it and dispatches natively);
- OpenBLAS: `OPENBLAS_CORETYPE` (kernels and blocking fixed at build time per core type);
- faiss: `FAISS_SIMD_LEVEL`.

`--kernels native` (`--native-kernels`) leaves every library to its own dispatch: faster on a large CPU, reproducible
only on the same kind of CPU. `kernel_facts` reads back what is in use, for the records and the cache keys.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import os
import platform
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

MODE_ENV = "OODBENCH_KERNELS"
NATIVE = "native"
DEFAULT_MODE = "avx2"

# Per portable instruction set: the environment that pins each library to it.
PORTABLE: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE",
             "OPENBLAS_CORETYPE": "Haswell", "FAISS_SIMD_LEVEL": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_CBWR": "COMPATIBLE",
               "OPENBLAS_CORETYPE": "SkylakeX", "FAISS_SIMD_LEVEL": "AVX512"},
}
# The CPU flags each portable set needs (Linux /proc/cpuinfo names).
REQUIRED_FLAGS = {"avx2": ("avx2", "fma"), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq")}
# CPU flags that decide which native code path a library takes: recorded with the CPU.
DECISIVE_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                  "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "avx_vnni")
# mkl_cbwr.h's branch codes.
MKL_BRANCHES = {0: "OFF", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2",
                9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}
MODES = (*PORTABLE, NATIVE)


def check_mode(mode: str, option: str = "--kernels") -> str:
    """`mode` when it names a kernel mode, else a one-line error listing them."""
    if mode not in MODES:
        raise HarnessError(f"{option} {mode!r} is not a kernel mode: choose one of {', '.join(MODES)} "
                           f"({DEFAULT_MODE} reproduces on any x86-64 CPU that has it; {NATIVE} is each library's "
                           "own, CPU-specific dispatch)")
    return mode


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def cpu_identity() -> dict[str, Any]:
    """Vendor, family, model, model name and the decisive instruction-set flags of the CPU (Linux); the machine
    type elsewhere."""
    found: dict[str, Any] = {"arch": platform.machine()}
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return found
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if not line.strip():
            break  # the first processor describes them all
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    flags = set(fields.get("flags", fields.get("features", "")).split())
    found.update({"vendor": fields.get("vendor_id"), "family": fields.get("cpu family"), "model": fields.get("model"),
                  "name": fields.get("model name"), "flags": [f for f in DECISIVE_FLAGS if f in flags]})
    return found


def unsupported(mode: str, cpu: dict[str, Any]) -> str | None:
    """Why `mode` cannot run on `cpu` (None when it can)."""
    if mode == NATIVE:
        return None
    if not is_x86():
        return f"the portable kernels are x86-64 instruction sets and this is {cpu['arch']}"
    missing = [f for f in REQUIRED_FLAGS[mode] if f not in cpu.get("flags", REQUIRED_FLAGS[mode])]
    return f"this CPU lacks {', '.join(missing)}" if missing else None


def select_kernels(mode: str) -> str:
    """Make `mode` this process's kernel mode: for a portable set, export its pinning environment (inherited by every
    worker process), which takes effect only if torch has not computed anything yet; the pins a parent process
    exported for another mode (`OODBENCH_KERNELS`) are removed first. Returns the mode in force:
    `native` where the portable set cannot run (ARM, a CPU without it), after one line on stderr saying so. Raises a
    one-line error when torch already runs with other kernels in this process."""
    check_mode(mode)
    inherited = os.environ.get(MODE_ENV)
    if inherited in PORTABLE and mode != inherited:  # a parent process's pins are not this process's choice
        for name, value in PORTABLE[inherited].items():
            if os.environ.get(name) == value:
                del os.environ[name]
    reason = unsupported(mode, cpu_identity())
    if reason:
        print(f"note: --kernels {mode} cannot apply ({reason}); running with native kernels, so records compare "
              "with others only within measured-drift tolerances", file=sys.stderr)
        mode = NATIVE
    os.environ[MODE_ENV] = mode
    if mode == NATIVE:
        return mode
    os.environ.update(PORTABLE[mode])
    if "torch" in sys.modules:
        active = sys.modules["torch"].backends.cpu.get_cpu_capability().lower()
        if active != PORTABLE[mode]["ATEN_CPU_CAPABILITY"]:
            raise HarnessError(f"--kernels {mode} must be chosen before torch loads, but this process already "
                               f"computes with {active}: set {MODE_ENV}={mode} in the environment of the process "
                               "(the test suite's conftest does) or run through python -m harness")
    return mode


def current_mode() -> str:
    """The kernel mode this process was started in (`OODBENCH_KERNELS`; native when unset)."""
    return os.environ.get(MODE_ENV, NATIVE)


def _mkl_branch() -> str | None:
    """MKL's reproducibility branch in use (`mkl_serv_cbwr_get` of the MKL linked into torch), or None."""
    import torch

    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        get = library.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return os.environ.get("MKL_CBWR")
    get.restype = ctypes.c_int
    code = get(1)
    return MKL_BRANCHES.get(code, str(code))


def _onednn_isa() -> str | None:
    """The instruction set oneDNN dispatches to, from the banner its verbose mode prints on the first primitive
    (read through a temporary file behind file descriptor 1)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        enabled = torch.backends.mkldnn.enabled
        try:
            torch.backends.mkldnn.enabled = True
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.nn.functional.conv2d(torch.ones(2, 16, 32, 32), torch.ones(16, 16, 3, 3))
            ctypes.CDLL(None).fflush(None)
        finally:
            torch.backends.mkldnn.enabled = enabled
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        banner = sink.read().decode(errors="replace")
    match = re.search(r"cpu,isa:([^\n]+)", banner)
    return match.group(1).strip() if match else None


def _blas_paths() -> dict[str, str]:
    """Each loaded BLAS (threadpoolctl) with the code path it runs: OpenBLAS's core type, MKL's branch."""
    from threadpoolctl import threadpool_info

    paths = {}
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        owner = Path(lib["filepath"]).parent.name.removesuffix(".libs").split("_")[0] or lib["prefix"]
        paths[f"{owner}:{lib['internal_api']}"] = str(lib.get("architecture") or lib.get("version"))
    return dict(sorted(paths.items()))


def _faiss_level() -> str | None:
    try:
        import faiss
    except ImportError:
        return None
    config = getattr(faiss, "SIMDConfig", None)
    return config.get_level_name() if config is not None else os.environ.get("FAISS_SIMD_LEVEL", "unknown")


@functools.lru_cache(maxsize=1)
def _library_kernels() -> dict[str, Any]:
    """What each library reports it dispatches to: fixed once the libraries are loaded, so read once per process
    (every record and every run's cache scope ask for it)."""
    import torch

    faiss_level = _faiss_level()  # loaded first, so that its BLAS is listed with numpy's and scipy's
    import scipy.linalg  # noqa: F401
    return {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "onednn": _onednn_isa(),
        "mkl_cbwr": _mkl_branch() if torch.backends.mkl.is_available() else None,
        "blas": {"torch": "mkl" if torch.backends.mkl.is_available() else "other", **_blas_paths()},
        "faiss": faiss_level,
    }


def kernel_facts() -> dict[str, Any]:
    """The kernels this process computes with, read back from each library: the mode, ATen's CPU capability,
    oneDNN's ISA and whether float32 work uses it, MKL's branch, every BLAS's code path, faiss's SIMD level."""
    import torch

    return {"mode": current_mode(), "onednn_float32": bool(torch.backends.mkldnn.enabled),
            **copy.deepcopy(_library_kernels())}
