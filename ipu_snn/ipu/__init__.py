"""The IPU path: PopTorch options and trainer, the PopART custom ops, the tile model and emulator (see README.md).

PopTorch and PopDist ship with the Graphcore Poplar SDK and are imported lazily,
only when an IPU run starts.
"""


def register_backends(device: str) -> None:
    """Register the spike-matmul backend a config device needs from this package (the registry in
    ipu_snn.ops sits below it and does not import it): ``ipu-emulator`` runs every product on the emulator."""
    if device == "ipu-emulator":
        from .emulator_backend import register

        register()
