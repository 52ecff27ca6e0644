"""Every way importing PopTorch (or PopDist) can fail becomes a DeviceError naming the Poplar SDK and
the original error, with fake SDK packages on sys.path that fail as the real ones do."""

from __future__ import annotations

import sys
import textwrap

import pytest

from ipu_snn.errors import DeviceError, UserError
from ipu_snn.ipu.sdk import import_popdist, import_poptorch

# What the package's __init__ runs, and what the error must then say.
FAILURES = {
    # PopTorch checks the torch it was built against at import time (python/__init__.py:
    # assert torch.__version__.startswith(...)); a torch no test runs with stands in for it
    "torch_version": ("import torch\nassert torch.__version__.startswith('0.0.1'), "
                      "'This version of PopTorch only works with torch==0.0.1 but the version installed is ' "
                      "+ torch.__version__",
                      "AssertionError", "only works with torch==0.0.1"),
    # the wheel is installed but the SDK's libraries are not on the paths
    "native_library": ("import ctypes\nctypes.CDLL('libpoptorch_missing_for_this_test.so')",
                       "OSError", "libpoptorch_missing_for_this_test.so"),
    "missing_module": ("from . import _poptorch_native_missing_for_this_test", "ImportError",
                       "_poptorch_native_missing_for_this_test"),
    "anything": ("raise RuntimeError('poplar: cannot find a license')", "RuntimeError", "cannot find a license"),
}


@pytest.fixture
def fake_sdk(tmp_path, monkeypatch):
    """Writes packages into a folder at the front of sys.path; removes them from sys.modules after."""

    def write(package: str, init: str, *, submodules: dict[str, str] | None = None) -> None:
        root = tmp_path / package
        root.mkdir()
        (root / "__init__.py").write_text(textwrap.dedent(init) + "\n")
        for name, text in (submodules or {}).items():
            (root / f"{name}.py").write_text(text + "\n")

    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("poptorch", "popdist", "popdist.poptorch"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield write
    for name in [m for m in sys.modules if m.split(".")[0] in ("poptorch", "popdist")]:
        del sys.modules[name]


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_any_poptorch_import_failure_names_the_sdk_and_the_cause(fake_sdk, failure):
    init, kind, detail = FAILURES[failure]
    fake_sdk("poptorch", init)
    with pytest.raises(DeviceError) as caught:
        import_poptorch()
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert "Poplar SDK" in message and "enable" in message
    assert kind in message and detail in message
    assert type(caught.value.__cause__).__name__ == kind  # kept for whoever debugs it


def test_an_importable_poptorch_is_returned(fake_sdk):
    fake_sdk("poptorch", "MARK = 'fake poptorch'")
    assert import_poptorch().MARK == "fake poptorch"


@pytest.mark.parametrize("failure", ["torch_version", "native_library"])
def test_popdist_failures_stop_a_poprun_instance_and_not_a_single_process(fake_sdk, monkeypatch, failure):
    init, kind, detail = FAILURES[failure]
    # popdist.poptorch imports PopTorch, so PopTorch's failures surface there
    fake_sdk("popdist", "", submodules={"poptorch": init})
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert import_popdist() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    with pytest.raises(DeviceError) as caught:
        import_popdist()
    assert "Poplar SDK" in str(caught.value) and kind in str(caught.value) and detail in str(caught.value)
