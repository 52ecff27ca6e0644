import importlib.util
import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported, and importing torch's
# custom-op machinery (any test that touches ipu_snn.ops) can import it. Setting
# it here, before any test module is collected, makes the Triton kernels run on
# CPU tensors through the interpreter for the whole session when there is no GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Synthetic datasets go to a per-session cache, never the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("IPU_SNN_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def _poptorch_importable() -> bool:
    if importlib.util.find_spec("poptorch") is None:
        return False
    try:  # installed but the SDK not enabled (`source enable`) fails here
        import poptorch  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    """Tests marked ``ipu`` run only where the Poplar SDK's PopTorch imports."""
    marked = [item for item in items if item.get_closest_marker("ipu") is not None]
    if marked and not _poptorch_importable():
        skip = pytest.mark.skip(reason="needs the Graphcore Poplar SDK (PopTorch)")
        for item in marked:
            item.add_marker(skip)
