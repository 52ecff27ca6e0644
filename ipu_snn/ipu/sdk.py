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
    try:
        import poptorch
    except ImportError as exc:
        # The wheel can be installed while the SDK's libraries are not on the
        # paths: PopTorch then fails at import and asks for `source enable`.
        raise DeviceError(f"PopTorch cannot be imported ({exc}). {POPLAR_SDK_HINT}") from None
    return poptorch


def import_popdist() -> ModuleType | None:
    """PopDist, which PopRun's instances use to learn their share; None for a single process without it."""
    try:
        import popdist
        import popdist.poptorch  # noqa: F401  (popdist.poptorch.Options)
    except ImportError as exc:
        # PopRun starts its instances through MPI; without PopDist each would
        # train alone on all the data, which is never what was launched.
        if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
            raise DeviceError(f"this process is one of several MPI/PopRun instances, but PopDist cannot be "
                              f"imported ({exc}). {POPLAR_SDK_HINT}") from None
        return None
    return popdist
