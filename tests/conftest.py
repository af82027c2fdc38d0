import pytest


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
