"""Reference implementations of `spec`'s neuron update: the autograd step and the fused-kernel contract.

`step` is the ground truth: plain torch ops that autograd differentiates, used
by the plain loop (``model.fused: false``, and an attached reset), traced by
PopTorch with the straight-through spike, and held against every kernel in the
tests. `kernel_forward` / `kernel_backward` are the `reference` backend of the
fused kernels: the same update plus its derivative in plain torch, on any
device, each model's own (its file in `models`); `kernels` serves them with
the compiled ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .spec import NeuronSpec
from .surrogates import SpikeFn, spike


def step(spec: NeuronSpec, beta: Tensor, rho: Tensor | None, v_prev: Tensor, a_prev: Tensor | None,
         current: Tensor, spike_fn: SpikeFn = spike, threshold: Tensor | None = None
         ) -> tuple[Tensor, Tensor | None, Tensor]:
    """One step of ``spec``'s model through autograd (the model's own pure step): ``(v_new, a_new or None, z)``.

    ``spike_fn(x, name, scale)`` makes the spikes (`surrogates.spike`: an autograd Function). ``threshold`` [N]: a
    learned per-neuron threshold in place of ``spec.threshold`` (ALIF: its base threshold)."""
    if threshold is None:
        return spec.neuron.step(spec, beta, rho, v_prev, a_prev, current, spike_fn)
    return spec.neuron.step(spec, beta, rho, v_prev, a_prev, current, spike_fn, threshold)


def li_step(beta: Tensor, v_prev: Tensor, current: Tensor) -> Tensor:
    """The leaky-integrator readout: no spikes, its membrane is its output."""
    return beta * v_prev + current


def kernel_forward(current: Tensor, v: Tensor, a: Tensor | None, beta: Tensor, rho: Tensor | None,
                   spec: NeuronSpec, saved_dtype: torch.dtype, threshold: Tensor | None = None):
    """The fused forward of ``spec``'s model (its kernel in Python, `NeuronModel.kernel_forward`):
    ``(v_new, a_new or None, z, d, zbits)`` with d = sg'(v - theta) in ``saved_dtype``; ``threshold`` [N]:
    a learned threshold."""
    if threshold is None:
        return spec.neuron.kernel_forward(current, v, a, beta, rho, spec, saved_dtype)
    return spec.neuron.kernel_forward(current, v, a, beta, rho, spec, saved_dtype, threshold)


def kernel_backward(grad_z: Tensor, grad_v: Tensor, grad_a: Tensor | None, zbits: Tensor, d: Tensor,
                    spec: NeuronSpec) -> tuple[Tensor, Tensor | None]:
    """The fused backward of fire-and-reset of ``spec``'s model (`NeuronModel.kernel_backward`):
    ``(gv, ga or None)`` (see `spec`)."""
    return spec.neuron.kernel_backward(grad_z, grad_v, grad_a, zbits, d, spec)
