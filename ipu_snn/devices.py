"""Which device a run uses, checked before anything is built.

A device that is asked for but missing is an error, never a quiet fallback to
the CPU: a researcher who wrote ``device: cuda`` wants to know the GPU is not
being used.
"""

from __future__ import annotations

import importlib.util

import torch

from .errors import DeviceError

POPLAR_SDK_HINT = (
    "PopTorch comes with the Graphcore Poplar SDK (3.x), which no public package registry serves: "
    "download the SDK from Graphcore, source its enable.sh, and pip install the poptorch wheel it ships"
)


def poptorch_available() -> bool:
    return importlib.util.find_spec("poptorch") is not None


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device: cuda was requested, but torch sees no CUDA GPU on this machine "
                              f"(torch {torch.__version__}); use device: cpu or run where a GPU is visible")
        return torch.device("cuda")
    if name in ("ipu", "ipu-model"):
        if not poptorch_available():
            raise DeviceError(f"device: {name} needs PopTorch, which is not installed. {POPLAR_SDK_HINT}")
        raise DeviceError(f"device: {name}: PopTorch is installed, but this version of ipu_snn has no IPU "
                          "trainer yet; train with device: cpu or cuda")
    raise DeviceError(f"device: unknown device '{name}'")
