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


@dataclass(frozen=True)
class Device:
    """A config device: where its tensors live, what runs its kernels, what the planner plans for.

    Parameters
    ----------
    tensors : str
        The torch device type of the model's tensors (an IPU's model stays on the host).
    spikes, neurons : str or None
        The spike-product backend (ipu_snn.ops.registry) and the neuron-kernel backend
        (ipu_snn.neuron.kernels) it runs; None: the default for its tensors (`TENSOR_DEFAULTS`).
    spec : str
        Its `DeviceSpec` for the planner (``cuda``: the GPU torch sees).
    poptorch : bool
        PopTorch compiles the model for it (ipu_snn.ipu.trainer trains it).
    registered_by : str or None
        The package above the registries whose import registers its backends (and its memory model
        with the planner).
    """

    tensors: str
    spikes: str | None = None
    neurons: str | None = None
    spec: str = "cpu"
    poptorch: bool = False
    registered_by: str | None = None


#: The one device table: config device -> what runs it.
DEVICES: dict[str, Device] = {
    "cpu": Device("cpu"),
    "cuda": Device("cuda", spec="cuda"),
    # the model runs on the CPU; its spike products go tile by tile through the emulator (ipu_snn.ipu
    # registers that backend), its neurons through the CPU kernels the tiles share
    "ipu-emulator": Device("cpu", spikes="ipu_emulator", neurons="cpu", spec="ipu-mk2",
                           registered_by="ipu_snn.ipu"),
    "ipu": Device("cpu", spec="ipu-mk2", poptorch=True, registered_by="ipu_snn.ipu"),
    "ipu-model": Device("cpu", spec="ipu-mk2", poptorch=True, registered_by="ipu_snn.ipu"),
}
#: torch device type -> (spike-product backend, neuron-kernel backend) its tensors get when none is named
TENSOR_DEFAULTS: dict[str, dict[str, str]] = {"cpu": {"spikes": "cpu", "neurons": "cpu"},
                                              "cuda": {"spikes": "triton", "neurons": "triton"}}
#: Config devices that PopTorch compiles for; the model stays on the host.
POPTORCH_DEVICES = tuple(name for name, device in DEVICES.items() if device.poptorch)


def device(name: str) -> Device:
    """The table's row of a config device."""
    if name not in DEVICES:
        raise DeviceError(f"device: unknown device '{name}'; known: {', '.join(DEVICES)}")
    return DEVICES[name]


def default_backend(column: str, device_type: str) -> str | None:
    """The backend of ``column`` (``spikes`` or ``neurons``) that tensors of ``device_type`` get by default
    (None: there is none)."""
    return TENSOR_DEFAULTS.get(device_type, {}).get(column)


def host_device(name: str) -> str:
    """The config device a run's copy on the host CPU (its plots; ``eval`` of an IPU run) is built for: a
    PopTorch device's own (its model's tensors are the host's, and its products as the IPU network op
    leaves them, ``ipu_snn.network.products_mode``), else ``cpu``."""
    return name if device(name).poptorch else "cpu"


def poptorch_available() -> bool:
    return importlib.util.find_spec("poptorch") is not None


def resolve_device(name: str) -> torch.device:
    """The torch device of a config device, checked: one asked for but missing is a DeviceError."""
    row = device(name)
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device: cuda was requested, but torch sees no CUDA GPU on this machine "
                          f"(torch {torch.__version__}); use device: cpu or run where a GPU is visible")
    if row.poptorch:
        if not poptorch_available():
            raise DeviceError(f"device: {name} needs PopTorch, which is not installed. {POPLAR_SDK_HINT}")
        # The model stays on the host; PopTorch compiles it for the IPUs (or the IPU Model).
        return torch.device("ipu")
    return torch.device(row.tensors)


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
    # a run here is planned on the device's tiles, by the memory model its package registers with the planner
    tiles: bool = False


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
        # streaming memory: the IPU-M2000's DRAM, up to about 260 GB for its four IPUs (65 GB each), reached
        # over the IPU's PCIe Gen4 x16 link at 32 GB/s each way (a peak; the sources are in
        # ipu_snn/ipu/README.md, "Streaming memory"). No step floor: the network op's graph counts a
        # step's syncs and exchange itself (ipu_snn/ipu/graph_plan.py); no public figure gives a floor.
        DeviceSpec("ipu-mk2", 1472 * 624 * 1024, 260 * 10**9 // 4, 47.5e12, 32e9, 62.5e12, 0.0,
                   "IPU Mk2 GC200: 1472 tiles x 624 KiB SRAM, 62.5 TFLOP/s fp32, streaming memory over PCIe Gen4 x16",
                   fused=False, tiles=True),
        # No Mk1 (GC2): the IPU plan is the network op's graph, counted for the GC200's tiles
        # (ipu_snn/ipu/graph_plan.py), and its time model's constants are the GC200's.
    ]
}


def cpu_spec() -> DeviceSpec:
    """This machine's CPU: RAM is both tiers (the off-chip store is host RAM too)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DeviceSpec("cpu", ram, ram, 10e9, 10e9, 5e10 * (os.cpu_count() or 1), 2e-5,
                      f"this CPU: {ram / GiB:.0f} GiB RAM, {os.cpu_count()} cores (rough fp32 rate)")


def device_spec(name: str) -> DeviceSpec:
    """A spec by planner name (h100, h200, a100, cpu, ipu-mk2) or by config device."""
    name = DEVICES[name].spec if name in DEVICES else name
    if name == "cuda":
        gpu = torch.cuda.get_device_name().lower() if torch.cuda.is_available() else "h100"
        name = next((k for k in ("h200", "h100", "a100") if k in gpu), "h100")
    if name == "cpu":
        return cpu_spec()
    if name not in SPECS:
        raise DeviceError(f"unknown device '{name}' for planning; known: cpu, {', '.join(SPECS)}")
    return SPECS[name]
