"""The kernel table: backend name -> the fused neuron kernels that run `spec`'s update.

Each backend gives a step forward and a step backward with the signatures of
`reference.kernel_forward` / `reference.kernel_backward`; a backend may also
give a whole-window loop (`window.py`'s contract) that runs every step of a
window in one call, which the CPU extension does so that no Python runs per
time step. Backends load lazily, so importing ipu_snn neither compiles the C++
extension nor imports Triton; one that cannot run is an error, never a quiet
fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..core.backends import BackendTable
from ..errors import DeviceError
from . import reference
from .params import neuron_params


@dataclass(frozen=True)
class NeuronKernels:
    name: str
    device_types: frozenset[str]
    #: (current, v, a | None, beta, rho | None, spec, saved_dtype, threshold=None) -> (v_new, a_new | None, z, d,
    #: zbits); threshold [N]: a learned per-neuron threshold in place of the spec's
    forward: Callable
    #: (grad_z, grad_v, grad_a | None, zbits, d, spec) -> (gv, ga | None)
    backward: Callable
    #: the raw whole-window ops of the CPU extension (ipu_snn_cpu::window_fwd / window_bwd), or None
    window_forward: Callable | None = None
    window_backward: Callable | None = None
    #: the leaky-integrator readout's window (ipu_snn_cpu::leaky_fwd / leaky_bwd), or None
    leaky_forward: Callable | None = None
    leaky_backward: Callable | None = None


#: neuron-kernel backend name -> its kernels; the default per device is the device table's (ipu_snn.devices)
BACKENDS: BackendTable[NeuronKernels] = BackendTable("neuron-kernel", "neurons")
register = BACKENDS.register
names = BACKENDS.names
load = BACKENDS.load


def resolve(name: str | None, device: torch.device) -> NeuronKernels:
    """The kernels of ``name`` (None: the default for ``device``), checked against the device."""
    return load(BACKENDS.resolve(name, device))


def _reference() -> NeuronKernels:
    return NeuronKernels("reference", frozenset({"cpu", "cuda"}), reference.kernel_forward, reference.kernel_backward)


def _cpu() -> NeuronKernels:
    from ..ops.cpu_ext import load_cpu_ops

    ops = load_cpu_ops()

    def forward(current, v, a, beta, rho, spec, saved_dtype, threshold=None):
        v_new, a_new, z, d, bits = ops.neuron_fwd(current, v, a, beta, rho, neuron_params(spec), saved_dtype,
                                                  threshold)
        return v_new, (a_new if spec.neuron.n_state > 1 else None), z, d, bits

    def backward(grad_z, grad_v, grad_a, zbits, d, spec):
        gv, ga = ops.neuron_bwd(grad_z, grad_v, grad_a, zbits, d, neuron_params(spec))
        return gv, (ga if spec.neuron.n_state > 1 else None)

    return NeuronKernels("cpu", frozenset({"cpu"}), forward, backward, ops.window_fwd, ops.window_bwd,
                         ops.leaky_fwd, ops.leaky_bwd)


def _triton() -> NeuronKernels:
    try:
        from . import triton_kernels
    except ImportError as error:
        raise DeviceError(f"the triton neuron kernels need Triton (pip install 'ipu_snn[gpu]'): {error}") from error
    # under TRITON_INTERPRET=1 the kernels run on CPU tensors (and only those), which is how CI tests them
    devices = frozenset({"cpu"} if triton_kernels.INTERPRETED else {"cuda"})
    return NeuronKernels("triton", devices, triton_kernels.forward, triton_kernels.backward)


register("reference", _reference)
register("cpu", _cpu)
register("triton", _triton)
