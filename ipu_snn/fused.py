"""The fused time loop: whole spiking layers as single autograd Functions.

The plain loop (``SpikingLayer.forward``) records about ten autograd nodes per
time step and keeps each node's inputs: membrane, threshold distance, spikes,
about 8-12 bytes per neuron-step, and a per-step Python cost in both passes.
Here one Function runs the whole layer over T steps:

* the input projection is one matrix product over all T (outside, as before);
* each step runs the recurrent product and one fused neuron kernel
  (``ipu_snn::neuron_step_fwd``: leak, integrate, threshold, reset and the
  surrogate derivative in one pass, C++ on CPU, Triton on CUDA);
* following Guo et al. (nested forward-mode AD), the kernel computes the
  element-wise chain's derivative in the forward pass, so a step keeps only
  its spikes as bits and the surrogate derivative d (float32 by default,
  float16/bfloat16 on request), plus the pre-step state when a decay is
  learned (d v / d beta = v_prev);
* backward walks the steps in reverse with the matching fused kernel, and the
  weight gradients of the recurrent and input products are single matrix
  products over all T afterwards.

Spikes that feed the next layer or the readout are multiplied by
``binary_linear``, which keeps its input as bits too, and the leaky-integrator
readout is a scan that keeps nothing but its output trace.

Gradients equal autograd through ``neurons.lif_step`` / ``alif_step`` with a
detached reset (tested); ``network.fused_obstacles`` says which models qualify.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .errors import UserError
from .ops.neuron_ops import neuron_step_kernels, pack_spikes, packed_row_bytes, unpack_spikes

#: model.fused_saved_dtype -> the dtype derivatives are kept in; None keeps them in the state's own dtype
#: (exact: float32 for float32 training, float64 for the float64 gradient tests)
SAVED_DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FusedSpec(NamedTuple):
    """The scalars of one layer's neuron update, as the fused kernels take them."""

    alif: bool
    threshold: float
    adapt_strength: float
    reset: str  # "subtract" | "zero"
    surrogate: str
    scale: float


class FusedLoop(NamedTuple):
    """How a network runs its fused time loop: the dtype of what it keeps, and which kernels."""

    saved_dtype: torch.dtype | None = None  # None: the state's dtype (exact)
    backend: str | None = None  # None: the default kernels for the tensors' device


class _SpikingScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, currents: Tensor, w_rec: Tensor | None, beta: Tensor, rho: Tensor | None,
                spec: FusedSpec, loop: FusedLoop) -> Tensor:
        steps, batch, n = currents.shape
        # the raw kernels, looked up once: the custom op's dispatch costs as much as a CPU kernel call
        kernels = neuron_step_kernels(loop.backend, currents.device)
        keep_v, keep_a = beta.requires_grad, rho is not None and rho.requires_grad
        saved_dtype = loop.saved_dtype or currents.dtype
        v = currents.new_zeros(batch, n)
        a = currents.new_zeros(batch, n) if spec.alif else None
        z = currents.new_zeros(batch, n)
        # everything kept is written into preallocated [T, ...] buffers: stacking per-step lists at the
        # end would hold it all twice for a moment
        spikes = currents.new_empty(steps, batch, n)
        derivs = currents.new_empty(steps, batch, n, dtype=saved_dtype)
        bits = currents.new_empty(steps, batch, packed_row_bytes(n), dtype=torch.uint8)
        v_prev = currents.new_empty(steps, batch, n, dtype=saved_dtype) if keep_v else None
        a_prev = currents.new_empty(steps, batch, n, dtype=saved_dtype) if keep_a else None
        for t in range(steps):
            current = currents[t] if w_rec is None else torch.addmm(currents[t], z, w_rec)
            if keep_v:
                v_prev[t] = v
            if keep_a:
                a_prev[t] = a
            v, a_new, z, d, zbits = kernels.forward(current, v, a, beta, rho, spec.threshold, spec.adapt_strength,
                                                    spec.reset, spec.surrogate, spec.scale, saved_dtype)
            a = a_new if spec.alif else None
            spikes[t], derivs[t], bits[t] = z, d, zbits
        ctx.spec, ctx.kernels, ctx.n = spec, kernels, n
        ctx.keep_v, ctx.keep_a = keep_v, keep_a
        kept = [t for t in (v_prev, a_prev) if t is not None]
        ctx.save_for_backward(w_rec, beta, rho, derivs, bits, *kept)
        return spikes

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spikes: Tensor):
        w_rec, beta, rho, derivs, bits, *kept = ctx.saved_tensors
        spec, kernels, n = ctx.spec, ctx.kernels, ctx.n
        v_prev = kept.pop(0) if ctx.keep_v else None
        a_prev = kept.pop(0) if ctx.keep_a else None
        grad_spikes = grad_spikes.contiguous()  # a sum's gradient arrives as a stride-0 expansion
        steps, batch, _ = grad_spikes.shape
        grad_currents = torch.empty_like(grad_spikes)
        grad_v = grad_spikes.new_zeros(batch, n)
        grad_a = grad_spikes.new_zeros(batch, n) if spec.alif else None
        grad_rho = torch.zeros_like(rho) if ctx.keep_a else None
        grad_z = grad_spikes[steps - 1]  # d loss / d z_t: from the outputs, and from step t + 1's recurrent product
        for t in range(steps - 1, -1, -1):
            if grad_rho is not None:
                # d loss / d a_t before the decay (a_t = rho * a_prev): the kernel returns it already
                # multiplied by rho, so form it here from the same terms (brief: ga).
                z = unpack_spikes(bits[t], n, grad_z.dtype)
                gx = (grad_z + grad_a) * derivs[t].to(grad_z.dtype)
                ga = grad_a - spec.adapt_strength * (gx + (grad_v * z if spec.reset == "subtract" else 0.0))
                grad_rho += (ga * a_prev[t].to(ga.dtype)).sum(0)
            grad_current, grad_v, grad_a_new = kernels.backward(grad_z, grad_v, grad_a, bits[t], derivs[t], beta, rho,
                                                                spec.adapt_strength, spec.reset)
            grad_a = grad_a_new if spec.alif else None
            grad_currents[t] = grad_current
            if t > 0:
                grad_z = grad_spikes[t - 1] if w_rec is None else torch.addmm(grad_spikes[t - 1], grad_current, w_rec.t())
        grad_w = None
        if w_rec is not None and ctx.needs_input_grad[1]:
            # z_{t-1} for t >= 1 feeds step t: one product over all steps instead of one per step
            z_prev = unpack_spikes(bits[:-1], n, grad_currents.dtype).reshape(-1, n)
            grad_w = z_prev.t() @ grad_currents[1:].reshape(-1, n)
        grad_beta = None
        if ctx.keep_v:
            grad_beta = (grad_currents * v_prev.to(grad_currents.dtype)).sum((0, 1))
        return grad_currents, grad_w, grad_beta, grad_rho, None, None


def spiking_scan(currents: Tensor, w_rec: Tensor | None, beta: Tensor, rho: Tensor | None,
                 spec: FusedSpec, loop: FusedLoop = FusedLoop()) -> Tensor:
    """Spikes [T, B, N] of a LIF/ALIF layer from its input currents [T, B, N].

    ``w_rec`` [N, N] (stored [from, to]) adds ``z_{t-1} @ w_rec`` to step t;
    ``beta`` [N] and ``rho`` [N] (ALIF) are the per-step decays.
    """
    if currents.dim() != 3:
        raise UserError(f"spiking_scan: currents must be [T, B, N], got {tuple(currents.shape)}")
    n = currents.shape[-1]
    expected = {"w_rec": (w_rec, (n, n)), "beta": (beta, (n,)), "rho": (rho, (n,))}
    for name, (t, shape) in expected.items():
        if t is not None and (tuple(t.shape) != shape or t.dtype != currents.dtype or t.device != currents.device):
            raise UserError(f"spiking_scan: {name} must be {currents.dtype} {shape} on {currents.device} for "
                            f"currents {tuple(currents.shape)}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    if spec.alif != (rho is not None):
        raise UserError(f"spiking_scan: an {'ALIF' if spec.alif else 'LIF'} layer takes rho "
                        f"{'[N]' if spec.alif else 'None'}")
    return _SpikingScan.apply(currents.contiguous(), w_rec, beta, rho, spec, loop)


class _BinaryLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out = z @ weight
        if bias is not None:
            out = out + bias
        ctx.n = z.shape[-1]
        ctx.save_for_backward(pack_spikes(z), weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        bits, weight = ctx.saved_tensors
        grad_z = grad_out @ weight.t() if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            z = unpack_spikes(bits, ctx.n, grad_out.dtype)
            grad_w = z.reshape(-1, ctx.n).t() @ grad_out.reshape(-1, grad_out.shape[-1])
        grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.has_bias else None
        return grad_z, grad_w, grad_b


def binary_linear(z: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``z @ weight + bias`` for 0/1 spikes ``z`` [..., n_in], keeping z for backward as bits."""
    return _BinaryLinear.apply(z, weight, bias)


class _LeakyIntegrate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, currents: Tensor, beta: Tensor) -> Tensor:
        trace = torch.empty_like(currents)
        v = torch.zeros_like(currents[0])
        for t in range(currents.shape[0]):
            v = torch.addcmul(currents[t], beta, v)
            trace[t] = v
        if beta.requires_grad:
            ctx.save_for_backward(beta, trace)
        else:
            ctx.save_for_backward(beta)
        return trace

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_trace: Tensor):
        beta, *kept = ctx.saved_tensors
        grad_currents = torch.empty_like(grad_trace)
        g = torch.zeros_like(grad_trace[0])
        for t in range(grad_trace.shape[0] - 1, -1, -1):
            g = torch.addcmul(grad_trace[t], beta, g)
            grad_currents[t] = g
        grad_beta = None
        if kept:
            # v_t = beta * v_{t-1} + I_t: d v_t / d beta = v_{t-1}
            trace = kept[0]
            grad_beta = (grad_currents[1:] * trace[:-1]).sum((0, 1))
        return grad_currents, grad_beta


def leaky_integrate(currents: Tensor, beta: Tensor) -> Tensor:
    """The leaky-integrator trace ``v_t = beta * v_{t-1} + I_t`` over [T, B, C], from v = 0."""
    return _LeakyIntegrate.apply(currents, beta)


__all__ = ["FusedLoop", "FusedSpec", "SAVED_DTYPES", "binary_linear", "leaky_integrate", "spiking_scan"]
