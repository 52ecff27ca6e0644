"""LIF: the leaky integrate-and-fire neuron, feed-forward (its recurrent twin is `rlif`).

Per step, elementwise over [B, N] (`ipu_snn.neuron.spec` states the whole contract)::

    v = beta * v_prev + current;  z = H(v - threshold);  v_new = v - z * threshold  (or v * (1 - z))
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...core.bits import pack_spikes, unpack_spikes
from ..model import NeuronModel, NirMapping
from ..surrogates import SpikeFn, spike, surrogate


def fire(spec, v: Tensor, theta, spike_fn: SpikeFn) -> tuple[Tensor, Tensor]:
    """Fire at ``theta`` and reset: ``(v_new, z)``; the reset's z is detached when ``spec.detach_reset``."""
    z = spike_fn(v - theta, spec.surrogate, spec.scale)
    zr = z.detach() if spec.detach_reset else z
    return (v - zr * theta if spec.reset == "subtract" else v * (1.0 - zr)), z


def threshold_of(spec, threshold: Tensor | None):
    """The threshold a step fires at: the layer's learned one [N] where it has one, else the spec's scalar."""
    return spec.threshold if threshold is None else threshold


def step(spec, beta: Tensor, rho: None, v_prev: Tensor, a_prev: None, current: Tensor,
         spike_fn: SpikeFn = spike, threshold: Tensor | None = None) -> tuple[Tensor, None, Tensor]:
    """One LIF step through autograd: ``(v_new, None, z)``; ``threshold`` [N]: a learned threshold."""
    v_new, z = fire(spec, beta * v_prev + current, threshold_of(spec, threshold), spike_fn)
    return v_new, None, z


def heaviside(x: Tensor, name: str, scale: float) -> Tensor:
    """The spikes of a kernel's forward (no autograd): a `SpikeFn`."""
    return (x > 0).to(x.dtype)


def derivative(spec, x: Tensor, saved_dtype: torch.dtype) -> Tensor:
    """d = sg'(x), the surrogate derivative a kernel keeps, in ``saved_dtype``."""
    return surrogate(spec.surrogate).grad(x, spec.scale).to(saved_dtype)


def through_reset(spec, grad_z: Tensor, grad_v: Tensor, z: Tensor, d: Tensor) -> Tensor:
    """gv, the gradient w.r.t. v before the reset, from grad_z (here with anything else that reaches z
    through d) and grad_v (w.r.t. v_new), for a fixed threshold."""
    gv = grad_v if spec.reset == "subtract" else grad_v * (1.0 - z)
    return gv + grad_z * d.to(grad_v.dtype)


@torch.no_grad()
def kernel_forward(current, v, a, beta, rho, spec, saved_dtype, threshold=None):
    """The lif kernel's forward: ``(v_new, None, z, d, zbits)``."""
    d = derivative(spec, beta * v + current - threshold_of(spec, threshold), saved_dtype)
    v_new, _, z = step(spec, beta, rho, v, a, current, heaviside, threshold)
    return v_new, None, z, d, pack_spikes(z)


def kernel_backward(grad_z, grad_v, grad_a, zbits, d, spec):
    """The lif kernel's backward of fire-and-reset: ``(gv, None)``."""
    return through_reset(spec, grad_z, grad_v, unpack_spikes(zbits, grad_v.shape[-1], grad_v.dtype), d), None


NIR = NirMapping("LIF", (("tau", "beta"), ("r", "beta"), ("v_threshold", "threshold"), ("v_leak", "0"),
                         ("v_reset", "0")))

LIF = NeuronModel(name="lif", kernel="lif", kernel_code=0, state=("v",), decays=(), params=(), recurrent=False,
                  step=step, kernel_forward=kernel_forward, kernel_backward=kernel_backward, nir=NIR, doc="leaky integrate-and-fire, feed-forward")
