"""oodbench: a benchmark harness for OOD detection with outlier synthesis. See README "Architecture" for the layers."""

__version__ = "0.1.0"
