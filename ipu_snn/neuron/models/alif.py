"""ALIF: the adaptive LIF neuron of Bellec et al. 2018, whose threshold rises with each spike.

Per step, elementwise over [B, N], with a second decay ``rho`` [N]::

    v = beta * v_prev + current;  a = rho * a_prev;  theta = threshold + adapt_strength * a
    z = H(v - theta);  v_new = v - z * theta  (or v * (1 - z));  a_new = a + z
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...core.bits import pack_spikes, unpack_spikes
from ..model import Decay, NeuronModel, NirMapping, Param
from ..surrogates import SpikeFn, spike
from .lif import derivative, fire, heaviside, threshold_of


def step(spec, beta: Tensor, rho: Tensor, v_prev: Tensor, a_prev: Tensor, current: Tensor,
         spike_fn: SpikeFn = spike, threshold: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One ALIF step through autograd: ``(v_new, a_new, z)``; ``threshold`` [N]: a learned base threshold."""
    a = rho * a_prev
    v_new, z = fire(spec, beta * v_prev + current, threshold_of(spec, threshold) + spec.adapt_strength * a, spike_fn)
    return v_new, a + z, z


@torch.no_grad()
def kernel_forward(current, v, a, beta, rho, spec, saved_dtype, threshold=None):
    """The alif kernel's forward: ``(v_new, a_new, z, d, zbits)``."""
    theta = threshold_of(spec, threshold) + spec.adapt_strength * (rho * a)
    d = derivative(spec, beta * v + current - theta, saved_dtype)
    v_new, a_new, z = step(spec, beta, rho, v, a, current, heaviside, threshold)
    return v_new, a_new, z, d, pack_spikes(z)


def kernel_backward(grad_z, grad_v, grad_a, zbits, d, spec):
    """The alif kernel's backward of fire-and-reset: ``(gv, ga)``, ga w.r.t. a after the decay."""
    z = unpack_spikes(zbits, grad_v.shape[-1], grad_v.dtype)
    subtract = spec.reset == "subtract"
    gx = (grad_z + grad_a if grad_a is not None else grad_z) * d.to(grad_v.dtype)
    gv = (grad_v if subtract else grad_v * (1.0 - z)) + gx
    ga = -spec.adapt_strength * (gx + grad_v * z if subtract else gx)
    return gv, (ga + grad_a if grad_a is not None else ga)


NIR = NirMapping(None, refusal="NIR has no adaptive-threshold neuron, and no composition of NIR nodes reproduces a "
                               "threshold that rises with each spike and a reset by that moving threshold")

ALIF = NeuronModel(name="alif", kernel="alif", kernel_code=1, state=("v", "a"),
                   decays=(Decay("rho", "tau_adapt", 0.98),), params=(Param("adapt_strength", 1.8),),
                   recurrent=None, step=step, kernel_forward=kernel_forward, kernel_backward=kernel_backward,
                   nir=NIR, doc="adaptive LIF (Bellec et al. 2018)")
