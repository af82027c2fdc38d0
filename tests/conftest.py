"""The suite computes with the portable kernels (`harness.numerics`), chosen here before anything loads torch, as
`python -m harness` does: the committed expectations then hold on any x86-64 CPU with AVX2. OODBENCH_KERNELS=native
runs it with each library's own dispatch instead."""

import os

import pytest

from harness.numerics import DEFAULT_MODE, MODE_ENV, select_kernels

select_kernels(os.environ.get(MODE_ENV) or DEFAULT_MODE)


def pytest_collection_modifyitems(config, items):
    """`heavy` tests (also marked `slow`) run when the run selects them by marker, as `publish`'s slow checks do
    (`-m slow`), and are skipped, with the reason shown, by the default suite, which must stay within 12 minutes."""
    chosen = config.option.markexpr or ""
    if "slow" in chosen or "heavy" in chosen:
        return
    skip = pytest.mark.skip(reason="heavy: runs with -m slow (publish's checks) or -m heavy")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """One stage cache for the whole session: the mnist5k data and tiny classifiers are built once."""
    from harness.cache import Cache

    return Cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a module's tests, restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random SD-layout pipeline written to disk (tests/diffusion_helpers.py), one per test module."""
    from tests.diffusion_helpers import write_tiny_random_pipeline

    return write_tiny_random_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def backend(model_dir):
    """The diffusion backend loaded from `model_dir` by path, as for SD v1.4."""
    from harness.diffusion.backend import load_backend

    return load_backend(model_dir)
