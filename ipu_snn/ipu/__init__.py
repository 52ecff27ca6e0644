"""The IPU path: PopTorch options and trainer, the PopART custom ops, the plan from the op's graph (see README.md).

PopTorch and PopDist ship with the Graphcore Poplar SDK and are imported lazily,
only when an IPU run starts.
"""

from ..ops.registry import register_backend


def _load_emulator():
    from .emulator_backend import load  # every product runs tile by tile on the emulator

    return load()


# The spike-matmul registry (ipu_snn.ops) sits below this package and does not import it: the IPU
# backends register themselves when the IPU path is imported (ipu_snn.torch_driver does for device: ipu-emulator).
register_backend("ipu_emulator", _load_emulator)

# The planner (below this package) does not import the graph's memory model either: importing the IPU path
# registers its tile planner (ipu_snn.planner.TILE_PLANNERS), so a CPU or GPU plan never loads it.
from . import tile_planning  # noqa: E402,F401
