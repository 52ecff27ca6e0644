"""A table of kernel backends by name, loaded lazily, resolved against a tensor's device.

The spike products (ipu_snn.ops.registry) and the neuron kernels (ipu_snn.neuron.kernels)
each keep one. A backend that cannot run is an error, never a quiet fallback to another
implementation: a silent 50x slowdown (or a different rounding) is worse than a clear message.
Which backend a device gets when none is named is the device table's (ipu_snn.devices).
"""

from __future__ import annotations

import functools
from typing import Callable, Generic, TypeVar

import torch

from ..devices import TENSOR_DEFAULTS, default_backend
from ..errors import DeviceError

K = TypeVar("K")


class BackendTable(Generic[K]):
    """Backends of one kind of kernels, by name.

    Parameters
    ----------
    what : str
        The kernels' name in messages ("spike-product", "neuron-kernel").
    column : str
        Their column of the device table (``"spikes"`` or ``"neurons"``): the default per device type.
    """

    def __init__(self, what: str, column: str):
        self.what, self.column = what, column
        self._loaders: dict[str, Callable[[], K]] = {}
        self.load = functools.cache(self._load)

    def register(self, name: str, loader: Callable[[], K]) -> None:
        """Add a backend; ``loader`` runs on first use and may raise DeviceError."""
        self._loaders[name] = loader
        self.load.cache_clear()

    def names(self) -> list[str]:
        return sorted(self._loaders)

    def _load(self, name: str) -> K:
        if name not in self._loaders:
            raise ValueError(f"unknown {self.what} backend {name!r}; known: {', '.join(self.names())}")
        return self._loaders[name]()

    def resolve(self, name: str | None, device: torch.device) -> str:
        """The backend for tensors on ``device``: ``name``, checked, or the device type's default."""
        if name is None:
            name = default_backend(self.column, device.type)
            if name is None:
                raise DeviceError(f"no {self.what} backend runs on device type {device.type!r} by default; "
                                  f"defaults exist for {sorted(TENSOR_DEFAULTS)}")
        kernels = self.load(name)
        if device.type not in kernels.device_types:
            raise DeviceError(f"{self.what} backend {name!r} runs on {sorted(kernels.device_types)} tensors, "
                              f"not on {device.type!r}: move the tensors or pick another backend")
        return name
