"""The IPU path: PopTorch options and trainer, the PopART custom ops, the tile model and emulator (see README.md).

PopTorch and PopDist ship with the Graphcore Poplar SDK and are imported lazily,
only when an IPU run starts.
"""

from ..devices import SPECS
from ..ops.registry import register_backend
from ..planner import register_tile_planner


def _load_emulator():
    from .emulator_backend import load  # every product runs tile by tile on the emulator

    return load()


# The spike-matmul registry (ipu_snn.ops) sits below this package and does not import it: the IPU
# backends register themselves when the IPU path is imported (ipu_snn.torch_driver does for device: ipu-emulator).
register_backend("ipu_emulator", _load_emulator)


def _tile_planner(*args, **kwargs):
    from .plan import tile_planner  # the tile model loads when a run is planned on the tiles

    return tile_planner(*args, **kwargs)


# The planner sits below this package too: it plans a run on an IPU with the tile model registered here.
for _name, _spec in SPECS.items():
    if _spec.tiles:
        register_tile_planner(_name, _tile_planner)
