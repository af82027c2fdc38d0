"""A tiny copy of the mnist5k spec (256 training images, 2 epochs, 100 images per OOD set) for regression tests."""

import json
from pathlib import Path

from harness.paths import DATASETS_DIR

TINY_PRESET = "tiny"


def write_tiny_spec(directory: Path, name: str = "tiny5k", epochs: int = 2) -> Path:
    spec = json.loads((DATASETS_DIR / "mnist5k.json").read_text())
    spec["name"] = name
    spec["presets"] = {TINY_PRESET: {"max_train": 256, "max_test": 200, "max_ood": 100}}
    spec["classifier"]["epochs"] = epochs
    path = Path(directory) / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path
