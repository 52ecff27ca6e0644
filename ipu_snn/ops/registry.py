"""The spike-product backends by name: each a set of kernels with fixed signatures (``SpikeKernels``, backend.py).

Backends load lazily, so importing ipu_snn neither compiles the C++ extension nor
imports Triton; the table's rules are ipu_snn.core.backends'.
"""

from __future__ import annotations

from typing import Callable

import torch

from ipu_snn.core.backends import BackendTable
from ipu_snn.errors import DeviceError
from ipu_snn.ops.backend import SpikeKernels

#: spike-product backend name -> its kernels; the default per device is the device table's (ipu_snn.devices)
BACKENDS: BackendTable[SpikeKernels] = BackendTable("spike-product", "spikes")
register_backend = BACKENDS.register
backend_names = BACKENDS.names
get_kernels = BACKENDS.load

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
    """The backend to use for tensors on ``device``: the named one, checked, or the device's default."""
    return BACKENDS.resolve(backend, device)


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
