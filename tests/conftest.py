import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Synthetic datasets go to a per-session cache, never the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("IPU_SNN_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
