"""CUBA: the current-based LIF neuron, a synaptic current ``i`` that decays and a membrane ``v`` it charges
(NIR's CubaLIF; snnTorch's ``Synaptic``).

Per step, elementwise over [B, N], with a second decay ``alpha`` [N] (the synaptic current's)::

    i = alpha * i_prev + current;  v = beta * v_prev + i
    z = H(v - threshold);  v_new = v - z * threshold  (or v * (1 - z));  i_new = i
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...core.bits import pack_spikes, unpack_spikes
from ..model import Decay, NeuronModel, NirMapping
from ..surrogates import SpikeFn, spike
from .lif import derivative, fire, heaviside, threshold_of, through_reset


def step(spec, beta: Tensor, alpha: Tensor, v_prev: Tensor, i_prev: Tensor, current: Tensor,
         spike_fn: SpikeFn = spike, threshold: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One CUBA step through autograd: ``(v_new, i_new, z)``; ``threshold`` [N]: a learned threshold."""
    i = alpha * i_prev + current
    v_new, z = fire(spec, beta * v_prev + i, threshold_of(spec, threshold), spike_fn)
    return v_new, i, z


@torch.no_grad()
def kernel_forward(current, v, i, beta, alpha, spec, saved_dtype, threshold=None):
    """The cuba kernel's forward: ``(v_new, i_new, z, d, zbits)``."""
    d = derivative(spec, beta * v + (alpha * i + current) - threshold_of(spec, threshold), saved_dtype)
    v_new, i_new, z = step(spec, beta, alpha, v, i, current, heaviside, threshold)
    return v_new, i_new, z, d, pack_spikes(z)


def kernel_backward(grad_z, grad_v, grad_i, zbits, d, spec):
    """The cuba kernel's backward: ``(gv, gi)``, gi w.r.t. the synaptic current (the input current's)."""
    gv = through_reset(spec, grad_z, grad_v, unpack_spikes(zbits, grad_v.shape[-1], grad_v.dtype), d)
    return gv, (gv + grad_i if grad_i is not None else gv)


NIR = NirMapping("CubaLIF", (("tau_mem", "beta"), ("r", "beta"), ("tau_syn", "alpha"), ("w_in", "alpha"),
                             ("v_threshold", "threshold"), ("v_leak", "0"), ("v_reset", "0")))

CUBA = NeuronModel(name="cuba", kernel="cuba", kernel_code=2, state=("v", "i"),
                   decays=(Decay("alpha", "tau_syn", 0.8),), params=(), recurrent=None, step=step,
                   kernel_forward=kernel_forward, kernel_backward=kernel_backward, nir=NIR,
                   doc="current-based LIF (a synaptic current and a membrane)", recurrent_default=False,
                   current_into=1)
