"""One registry from backend name to spike-matmul kernels.

A backend is a set of kernels with fixed signatures (``SpikeKernels``, backend.py);
the public ``ipu_snn::`` ops look them up here by name. Backends load lazily, so
importing ipu_snn neither compiles the C++ extension nor imports Triton.

The backend follows the tensor device unless one is named, and a backend that
cannot run is an error: nothing falls back quietly to a different
implementation, because a silent 50x slowdown (or a different rounding) is worse
than a clear message.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from ipu_snn.errors import DeviceError
from ipu_snn.ops.backend import SpikeKernels


_LOADERS: dict[str, Callable[[], SpikeKernels]] = {}

#: Backend used when none is named, by tensor device type.
DEFAULT_BACKEND_FOR_DEVICE: dict[str, str] = {"cpu": "cpu", "cuda": "triton"}


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
        raise ValueError(
            f"Unknown spike-matmul backend {name!r}; known backends: {', '.join(backend_names())}"
        )
    return _LOADERS[name]()


def _constant(fn):
    """torch.compile evaluates ``fn`` once while tracing and keeps the result: it loads backends (file
    system, compiler), which is no part of a graph. This is what torch.compiler.assume_constant_result
    does (torch/_dynamo/decorators.py), without importing torch._dynamo (and Triton with it, about 150 MiB)
    into every run that never compiles; tests/test_spike_ops.py traces through the ops to keep it true.
    (torch 2.0, which PopTorch 3.4 runs on, has no torch.compiler: the mark is ignored there.)"""
    fn._dynamo_marked_constant = True
    return fn


@_constant
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
    from ipu_snn.ops import reference

    return SpikeKernels.from_lists("reference", frozenset({"cpu", "cuda"}), reference.forward, reference.grad_weight,
                                   reference.grad_input, reference.compact, reference.compact_bits)


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
        compact_bits=ops.compact_bits,
        bits_forward=ops.bits_forward,
        bits_grad_weight=ops.bits_grad_weight,
        bits_grad_input=ops.bits_grad_input,
        count_bits=ops.count_bits,
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

# The IPU backends (ipu, ipu_emulator) are registered by ipu_snn.ipu, which sits above this layer.
