"""The Poplar SDK's Python modules (PopTorch, PopDist), imported only when an IPU run starts.

Without the SDK every IPU entry point fails here, with a message naming it, and
nothing falls back to another device.
"""

from __future__ import annotations

import os
from types import ModuleType

from ..devices import POPLAR_SDK_HINT
from ..errors import DeviceError


def import_poptorch() -> ModuleType:
    """PopTorch, or a DeviceError that names the SDK and the original failure.

    Importing PopTorch fails in more ways than ImportError: PopTorch 3.4 asserts that
    torch is the 2.0.1 it was built against (AssertionError), its native libraries
    fail to load while the SDK is not enabled (OSError, or ImportError), and a broken
    install can raise anything. Each is a setup problem, not a bug here.
    """
    try:
        import poptorch
    except Exception as exc:  # noqa: BLE001 (every import failure is the same user error)
        raise DeviceError(f"PopTorch cannot be imported ({type(exc).__name__}: {exc}). {POPLAR_SDK_HINT}") from exc
    return poptorch


def import_popdist() -> ModuleType | None:
    """PopDist, which PopRun's instances use to learn their share; None for a single process without it."""
    try:
        import popdist
        import popdist.poptorch  # noqa: F401  (popdist.poptorch.Options)
    except Exception as exc:  # noqa: BLE001 (as for PopTorch: any failure means no usable PopDist)
        # PopRun starts its instances through MPI; without PopDist each would
        # train alone on all the data, which is never what was launched.
        if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
            raise DeviceError(f"this process is one of several MPI/PopRun instances, but PopDist cannot be "
                              f"imported ({type(exc).__name__}: {exc}). {POPLAR_SDK_HINT}") from exc
        return None
    return popdist
