"""oodbench: a benchmark harness for OOD detection with outlier synthesis. See README "Architecture" for the layers."""

from harness.version import __version__

__all__ = ["__version__", "evaluate"]


def __getattr__(name: str):
    """`harness.evaluate` (`harness.evaluation.evaluate`) loads on first use: it imports torch, and importing
    `harness` must not, as the kernels (`harness.numerics`) are chosen before torch loads."""
    if name == "evaluate":
        from harness.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
