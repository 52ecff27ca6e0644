"""Reference implementations of `spec`'s neuron update: the autograd step and the fused-kernel contract.

`step` is the ground truth: plain torch ops that autograd differentiates, used
by the plain loop (``model.fused: false``, and an attached reset), traced by
PopTorch with the straight-through spike, and held against every kernel in the
tests. `kernel_forward` / `kernel_backward` are the `reference` backend of the
fused kernels: the same update plus its derivative in plain torch, on any
device; `kernels` serves them with the compiled ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bits import pack_spikes, unpack_spikes
from .spec import NeuronSpec
from .surrogates import SpikeFn, spike, surrogate


def step(spec: NeuronSpec, beta: Tensor, rho: Tensor | None, v_prev: Tensor, a_prev: Tensor | None,
         current: Tensor, spike_fn: SpikeFn = spike) -> tuple[Tensor, Tensor | None, Tensor]:
    """One step of ``spec``'s model through autograd (the model's own pure step): ``(v_new, a_new or None, z)``.

    ``spike_fn(x, name, scale)`` makes the spikes: `surrogates.spike` (an autograd
    Function) or `surrogates.straight_through_spike` (for tracers)."""
    return spec.neuron.step(spec, beta, rho, v_prev, a_prev, current, spike_fn)


def li_step(beta: Tensor, v_prev: Tensor, current: Tensor) -> Tensor:
    """The leaky-integrator readout: no spikes, its membrane is its output."""
    return beta * v_prev + current


@torch.no_grad()
def kernel_forward(current: Tensor, v: Tensor, a: Tensor | None, beta: Tensor, rho: Tensor | None,
                   spec: NeuronSpec, saved_dtype: torch.dtype):
    """The fused forward: ``(v_new, a_new or None, z, d, zbits)`` with d = sg'(v - theta) in ``saved_dtype``."""
    adaptive, cuba = spec.neuron.kernel == "alif", spec.neuron.kernel == "cuba"
    v_lin = beta * v + (rho * a + current if cuba else current)
    a_dec = rho * a if adaptive else None
    theta = spec.threshold + spec.adapt_strength * a_dec if adaptive else spec.threshold
    x = v_lin - theta
    d = surrogate(spec.surrogate).grad(x, spec.scale).to(saved_dtype)
    v_new, a_new, z = step(spec, beta, rho, v, a, current, lambda x, name, scale: (x > 0).to(x.dtype))
    return v_new, a_new, z, d, pack_spikes(z)


def kernel_backward(grad_z: Tensor, grad_v: Tensor, grad_a: Tensor | None, zbits: Tensor, d: Tensor,
                    spec: NeuronSpec) -> tuple[Tensor, Tensor | None]:
    """The fused backward of fire-and-reset: ``(gv, ga or None)`` (see `spec`); for cuba ga is w.r.t. the
    synaptic current i, the input current's gradient."""
    z = unpack_spikes(zbits, grad_v.shape[-1], grad_v.dtype)
    subtract, adaptive = spec.reset == "subtract", spec.neuron.kernel == "alif"
    if spec.neuron.kernel == "cuba":
        gv = (grad_v if subtract else grad_v * (1.0 - z)) + grad_z * d.to(grad_v.dtype)
        return gv, (gv + grad_a if grad_a is not None else gv)
    gz = grad_z + grad_a if adaptive and grad_a is not None else grad_z
    gx = gz * d.to(grad_v.dtype)
    gv = (grad_v if subtract else grad_v * (1.0 - z)) + gx
    if not adaptive:
        return gv, None
    ga = -spec.adapt_strength * (gx + grad_v * z if subtract else gx)
    return gv, (ga + grad_a if grad_a is not None else ga)
