"""One registry from backend name to spike-matmul kernels.

A backend is a set of four kernels with fixed signatures (see ``SpikeKernels``);
the public ``ipu_snn::`` ops look them up here by name. Backends load lazily, so
importing ipu_snn neither compiles the C++ extension nor imports Triton.

The backend follows the tensor device unless one is named, and a backend that
cannot run is an error: nothing falls back quietly to a different
implementation, because a silent 50x slowdown (or a different rounding) is worse
than a clear message.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ipu_snn.errors import DeviceError, UserError


@dataclass(frozen=True)
class SpikeKernels:
    """The kernels of one backend. Shapes: ids [B, K] int32, counts [B] int32."""

    name: str
    #: torch device types whose tensors these kernels accept.
    device_types: frozenset[str]
    #: (ids, counts, weight[n_in, n_out]) -> out [B, n_out]
    forward: Callable[[Tensor, Tensor, Tensor], Tensor]
    #: (ids, counts, grad_out[B, n_out], n_in) -> grad_weight [n_in, n_out]
    grad_weight: Callable[[Tensor, Tensor, Tensor, int], Tensor]
    #: (ids, counts, weight, grad_out) -> values [B, K], 0 past each count
    grad_input: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    #: (z[B, N], near[B, N] bool | None, capacity) -> (ids, counts, near_counts, dropped, near_dropped)
    compact: Callable[[Tensor, Tensor | None, int], tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]
    #: Fused LIF/ALIF step (optional; see ipu_snn/ops/neuron_ops.py for the contract):
    #: (current, v, a | None, beta, rho | None, threshold, adapt_strength, reset, surrogate,
    #:  scale, saved_dtype) -> (v_new, a_new | empty, z, d, zbits)
    neuron_forward: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] | None = None
    #: (grad_z, grad_v, grad_a | None, zbits, d, beta, rho | None, adapt_strength, reset)
    #: -> (grad_current, grad_v_prev, grad_a_prev | empty)
    neuron_backward: Callable[..., tuple[Tensor, Tensor, Tensor]] | None = None

    def require(self, kernel: str) -> Callable:
        """The named optional kernel; a DeviceError if this backend does not provide it."""
        found = getattr(self, kernel)
        if found is None:
            raise DeviceError(
                f"Backend {self.name!r} has no {kernel} kernel. Pick a backend that provides it "
                "(the built-in reference, cpu, triton and triton_sorted backends all do)."
            )
        return found


_LOADERS: dict[str, Callable[[], SpikeKernels]] = {}

#: Backend used when none is named, by tensor device type.
# "ipu": the device of a model's tensors while PopTorch 3.x traces it for the IPU.
DEFAULT_BACKEND_FOR_DEVICE: dict[str, str] = {"cpu": "cpu", "cuda": "triton", "ipu": "ipu"}


def register_backend(name: str, loader: Callable[[], SpikeKernels]) -> None:
    """Add a backend. ``loader`` runs on first use and may raise DeviceError."""
    _LOADERS[name] = loader
    get_kernels.cache_clear()


def backend_names() -> list[str]:
    return sorted(_LOADERS)


@functools.cache
def get_kernels(name: str) -> SpikeKernels:
    """Load a backend by name; raises if it is unknown or cannot run here."""
    if name not in _LOADERS:
        raise UserError(
            f"Unknown spike-matmul backend {name!r}; known backends: {', '.join(backend_names())}"
        )
    return _LOADERS[name]()


# torch.compile evaluates this once while tracing and keeps the name: it loads
# backends (file system, compiler), which is no part of a graph.
@torch.compiler.assume_constant_result
def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend to use for tensors on ``device``: the named one, checked, or the default."""
    if backend is None:
        backend = DEFAULT_BACKEND_FOR_DEVICE.get(device.type)
        if backend is None:
            raise DeviceError(
                f"No spike-matmul backend runs on device type {device.type!r}; "
                f"defaults exist for {sorted(DEFAULT_BACKEND_FOR_DEVICE)}."
            )
    kernels = get_kernels(backend)
    if device.type not in kernels.device_types:
        raise DeviceError(
            f"Spike-matmul backend {backend!r} runs on {sorted(kernels.device_types)} tensors, "
            f"but got tensors on {device.type!r}. Move the tensors or pick another backend."
        )
    return backend


def _load_reference() -> SpikeKernels:
    from ipu_snn.ops import neuron_reference, reference

    return SpikeKernels(
        name="reference",
        device_types=frozenset({"cpu", "cuda"}),
        forward=reference.forward,
        grad_weight=reference.grad_weight,
        grad_input=reference.grad_input,
        compact=reference.compact,
        neuron_forward=neuron_reference.neuron_forward,
        neuron_backward=neuron_reference.neuron_backward,
    )


def _load_cpu() -> SpikeKernels:
    from ipu_snn.ops.cpu_ext import load_cpu_ops

    ops = load_cpu_ops()
    return SpikeKernels(
        name="cpu",
        device_types=frozenset({"cpu"}),
        forward=ops.forward,
        grad_weight=ops.grad_weight,
        grad_input=ops.grad_input,
        compact=ops.compact,
        neuron_forward=ops.neuron_fwd,
        neuron_backward=ops.neuron_bwd,
    )


def _triton_loader(weight_grad: str) -> Callable[[], SpikeKernels]:
    def load() -> SpikeKernels:
        try:
            from ipu_snn.ops import triton_kernels
        except ImportError as error:
            raise DeviceError(
                "The triton spike-matmul backends need Triton (pip install 'ipu_snn[gpu]'): "
                f"{error}"
            ) from error
        return triton_kernels.kernels(weight_grad)

    return load


register_backend("reference", _load_reference)
register_backend("cpu", _load_cpu)
# Two weight-gradient strategies on the same forward: atomics scatter each
# sample's gradient row into the rows it fired (fast when few samples share a
# neuron); the sorted-segment variant sorts the spike list by neuron and sums
# each neuron's samples in one program (no atomics, deterministic).
register_backend("triton", _triton_loader("atomic"))
register_backend("triton_sorted", _triton_loader("sorted"))


def _load_ipu() -> SpikeKernels:
    from ipu_snn.ipu.custom_ops import load_ipu_kernels  # imports PopTorch, loads the PopART op library

    return load_ipu_kernels()


register_backend("ipu", _load_ipu)


def _load_ipu_emulator() -> SpikeKernels:
    from ipu_snn.ipu.emulator_backend import load  # every call runs tile by tile through the cpu backend

    return load()


register_backend("ipu_emulator", _load_ipu_emulator)
