import pytest


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """One stage cache for the whole session: the mnist5k data and tiny classifiers are built once."""
    from harness.cache import Cache

    return Cache(tmp_path_factory.mktemp("cache"))
