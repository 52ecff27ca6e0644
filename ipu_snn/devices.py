"""Which device a run uses, checked before anything is built.

A device that is asked for but missing is an error, never a quiet fallback to
the CPU: a researcher who wrote ``device: cuda`` wants to know the GPU is not
being used.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from .errors import DeviceError

POPLAR_SDK_HINT = (
    "PopTorch comes with the Graphcore Poplar SDK (3.x), which no public package registry serves: "
    "download the SDK from Graphcore, source its enable.sh, and pip install the poptorch wheel it ships"
)


#: Config devices that PopTorch compiles for (ipu_snn.ipu.trainer trains on them); the model stays on the host.
POPTORCH_DEVICES = ("ipu", "ipu-model")


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
    if name in POPTORCH_DEVICES:
        if not poptorch_available():
            raise DeviceError(f"device: {name} needs PopTorch, which is not installed. {POPLAR_SDK_HINT}")
        # The model stays on the host; PopTorch compiles it for the IPUs (or the IPU Model).
        return torch.device("ipu")
    if name == "ipu-emulator":
        # The model runs on the CPU; its spike matmuls go tile by tile through the emulator (spike_backend).
        return torch.device("cpu")
    raise DeviceError(f"device: unknown device '{name}'")


#: Config devices whose spike matmuls run on a backend other than their tensors' default.
SPIKE_BACKENDS = {"ipu-emulator": "ipu_emulator"}


def spike_backend(name: str) -> str | None:
    """The spike-matmul backend a config device runs (None: the default for its tensors)."""
    return SPIKE_BACKENDS.get(name)


# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DeviceSpec:
    """What the planner needs to know about a device.

    ``local``: the fast memory that holds the working set (GPU HBM, IPU tile
    SRAM); ``offchip``: the large slow tier for coarse checkpoints (host RAM for
    a GPU, streaming memory for an IPU). ``step_floor_s`` is the least time one
    time step of a per-step loop takes however small the step (kernel launches
    on a GPU, a BSP superstep on an IPU).
    """

    name: str
    local_bytes: int
    offchip_bytes: int
    local_bandwidth: float  # bytes/s
    offchip_bandwidth: float  # bytes/s between the tiers
    fp32_flops: float  # FLOP/s
    step_floor_s: float
    source: str
    # model.fused runs here (the fused time loop, forward-AD steps); not on an IPU, where PopART
    # differentiates the traced loop, so its plan counts what the plain step keeps
    fused: bool = True


GiB = 2**30
# Vendor data-sheet figures; the GPU step floor is from a measured plain loop (docs/workloads.md)
# (W1, H100: 745 ms for T=1000, i.e. about 0.25 ms per step forward, two per step backward).
SPECS: dict[str, DeviceSpec] = {
    spec.name: spec
    for spec in [
        DeviceSpec("h100", 80 * GiB, 512 * GiB, 3.35e12, 50e9, 67e12, 2.5e-4,
                   "H100 SXM: 80 GB HBM3 at 3.35 TB/s, 67 TFLOP/s fp32, PCIe Gen5 x16 to host RAM"),
        DeviceSpec("h200", 141 * 10**9, 512 * GiB, 4.8e12, 50e9, 67e12, 2.5e-4,
                   "H200 SXM: 141 GB HBM3e at 4.8 TB/s, 67 TFLOP/s fp32, PCIe Gen5 x16 to host RAM"),
        DeviceSpec("a100", 80 * GiB, 512 * GiB, 2.0e12, 25e9, 19.5e12, 2.5e-4,
                   "A100 SXM 80GB: HBM2e at 2.0 TB/s, 19.5 TFLOP/s fp32, PCIe Gen4 x16 to host RAM"),
        # streaming memory: the IPU-M2000's DRAM, reached over the IPU's PCIe Gen4 x16 link at 32 GB/s each
        # way (a peak; the sources are in ipu_snn/ipu/README.md, "Streaming memory")
        DeviceSpec("ipu-mk2", 1472 * 624 * 1024, 256 * GiB, 47.5e12, 32e9, 62.5e12, 5e-6,
                   "IPU Mk2 GC200: 1472 tiles x 624 KiB SRAM, 62.5 TFLOP/s fp32, streaming memory over PCIe Gen4 x16",
                   fused=False),
        DeviceSpec("ipu-mk1", 1216 * 256 * 1024, 256 * GiB, 45e12, 16e9, 31.1e12, 5e-6,
                   "IPU Mk1 GC2: 1216 tiles x 256 KiB SRAM, 31.1 TFLOP/s fp32, PCIe Gen4 to the host", fused=False),
    ]
}


def cpu_spec() -> DeviceSpec:
    """This machine's CPU: RAM is both tiers (the off-chip store is host RAM too)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DeviceSpec("cpu", ram, ram, 10e9, 10e9, 5e10 * (os.cpu_count() or 1), 2e-5,
                      f"this CPU: {ram / GiB:.0f} GiB RAM, {os.cpu_count()} cores (rough fp32 rate)")


def device_spec(name: str) -> DeviceSpec:
    """A spec by planner name (h100, h200, a100, cpu, ipu-mk2, ipu-mk1) or by config device."""
    name = {"ipu": "ipu-mk2", "ipu-model": "ipu-mk2", "ipu-emulator": "ipu-mk2"}.get(name, name)
    if name == "cuda":
        gpu = torch.cuda.get_device_name().lower() if torch.cuda.is_available() else "h100"
        name = next((k for k in ("h200", "h100", "a100") if k in gpu), "h100")
    if name == "cpu":
        return cpu_spec()
    if name not in SPECS:
        raise DeviceError(f"unknown device '{name}' for planning; known: cpu, {', '.join(SPECS)}")
    return SPECS[name]
