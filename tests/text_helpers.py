"""Shared helpers of the text tests: the text resources (fetched once by the set-up path), or a clean skip."""

import functools
from pathlib import Path

import pytest


@functools.lru_cache(maxsize=1)
def _setup() -> tuple[Path | None, str]:
    from harness.data.text_resources import default_resource_dir, setup_all
    from harness.errors import HarnessError

    try:
        setup_all()
    except HarnessError as err:
        return None, str(err)
    return default_resource_dir(), ""


def resource_root() -> Path:
    """The text-resource root after `setup_all()`; skips when a resource is absent and cannot be fetched."""
    root, why = _setup()
    if root is None:
        pytest.skip(f"text resources unavailable: {why}")
    return root
