"""One layer's time loop over a window of L steps, as autograd Functions: the fused loop.

A spiking layer's window (`spiking_window`) takes the input currents of L
steps ([L, B, N], one product over the window, done by the caller) and the
layer state at the window's start, and runs per step the recurrent product and
the fused neuron update of `spec`. Following Guo et al.'s nested forward-mode
AD, the update computes its own derivative in the forward pass, so a step keeps
for backward only

* its spikes as bits (1 bit per neuron),
* the surrogate derivative d, in ``saved_dtype`` (float32 exact; float16 or
  bfloat16 halve it at a bounded error),
* the pre-step state, only for a learned decay (d v / d beta = v_prev),
* near-threshold bits, only for the listed backward (``near_min_d``).

Backward walks the steps in reverse: the adjoint of the window's final state
comes in (grad_vL, grad_aL, and the last spikes' gradient), the adjoint of its
initial state goes out (grad_v0, grad_a0, grad_z0), so windows chain under any
checkpoint schedule (ipu_snn/executor.py). The recurrent product is dense or a
gather-add over the spike list of the previous step, as the recurrent
`SparsePolicy` says, per step; its weight gradient is one product over the
window afterwards, dense or row-sparse over the presynaptic spikes.

Where the kernel backend has a whole-window loop (the CPU extension's
``window_fwd`` / ``window_bwd``) the window runs in one call; otherwise
`_generic_forward` / `_generic_backward` call the backend's step kernels from
Python. Both compute the same thing, tested against each other and against
autograd through `reference.step`.

The leaky-integrator readout's window is `leaky_integrate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..ops.policy import PRODUCT_MODE_CODES, SparsePolicy
from ..ops.registry import get_kernels, resolve_backend
from ..core.bits import pack_spikes, unpack_spikes
from .kernels import NeuronKernels, resolve
from .params import neuron_params
from .spec import NeuronSpec

#: model.fused_saved_dtype -> the dtype d is kept in; None keeps the state's dtype
#: (exact: float32 for float32 training, float64 for the float64 gradient tests)
SAVED_DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SpikeTrain(NamedTuple):
    """A layer's spikes over a window."""

    z: Tensor  # [L, B, N] float 0/1: the autograd link back to the layer
    bits: Tensor  # [L, B, ceil(N / 8)] uint8: the same spikes, what products compact and keep
    near: Tensor | None  # near-threshold bits of the same shape (listed backward), else None


class LayerState(NamedTuple):
    """A spiking layer's state between windows."""

    v: Tensor  # [B, N] membrane
    a: Tensor | None  # [B, N] adaptation (ALIF)
    z: Tensor  # [B, N] the last step's spikes (the recurrent input of the next step)
    near: Tensor | None  # [B, ceil(N / 8)] uint8: the last step's near-threshold bits (listed backward)


@dataclass(frozen=True)
class WindowSettings:
    """A spiking layer's window, fixed when the network is built."""

    spec: NeuronSpec
    saved_dtype: torch.dtype | None = None  # None: the state's dtype
    recurrent: SparsePolicy | None = None  # None: a feed-forward layer
    near_min_d: float | None = None  # listed backward: also list non-firing neurons with d above this
    kernels: str | None = None  # neuron-kernel backend; None: the tensors' device default
    where: str = "a layer"  # for error messages: which layer, as the config numbers it

    @property
    def listed_rec_grad(self) -> bool:
        return self.recurrent is not None and self.recurrent.listed_grad


def _near_bits(z: Tensor, d: Tensor, near_min_d: float) -> Tensor:
    return pack_spikes((z == 0) & (d != 0) & (d.to(torch.float64) > near_min_d))


class _Forward(NamedTuple):
    z: Tensor
    bits: Tensor
    d: Tensor
    v_prev: Tensor | None
    a_prev: Tensor | None
    near: Tensor | None
    v: Tensor
    a: Tensor | None
    dropped: Tensor


def _generic_forward(k: NeuronKernels, s: WindowSettings, currents, v, a, z0, w_rec, beta, rho, saved, keep_v,
                     keep_a, threshold=None) -> _Forward:
    learned = {} if threshold is None else {"threshold": threshold}
    steps, batch, n = currents.shape
    z = currents.new_empty(steps, batch, n)
    bits = currents.new_empty(steps, batch, (n + 7) // 8, dtype=torch.uint8)
    d = currents.new_empty(steps, batch, n, dtype=saved)
    v_prev = currents.new_empty(steps, batch, n, dtype=saved) if keep_v else None
    a_prev = currents.new_empty(steps, batch, n, dtype=saved) if keep_a else None
    near = bits.new_empty(bits.shape) if s.near_min_d is not None else None
    dropped = torch.zeros(batch, dtype=torch.int64, device=currents.device)
    policy, prev = s.recurrent, z0
    for t in range(steps):
        current = currents[t]
        if w_rec is not None:
            spikes = get_kernels(resolve_backend(policy.backend, w_rec.device))
            prev_bits = pack_spikes(prev)
            counts = spikes.count_bits(prev_bits)
            if policy.list_length(counts, n, fixed_lists=True) is not None:
                out, lost = spikes.bits_forward(prev_bits, n, w_rec, None, policy.capacity)
                current = current + out
                dropped += lost.to(torch.int64)
            else:
                current = torch.addmm(current, prev, w_rec)
        if keep_v:
            v_prev[t] = v
        if keep_a:
            a_prev[t] = a
        v, a, z[t], d[t], bits[t] = k.forward(current, v, a, beta, rho, s.spec, saved, **learned)
        if near is not None:
            near[t] = _near_bits(z[t], d[t], s.near_min_d)
        prev = z[t]
    return _Forward(z, bits, d, v_prev, a_prev, near, v, a, dropped)


def _generic_backward(k: NeuronKernels, s: WindowSettings, grad_z, grad_v, grad_a, bits, d, z0_bits, near, near0,
                      w_rec, beta, rho, keep_ga, keep_gv, list_capacity):
    steps, batch, n = d.shape
    into_a = s.spec.neuron.current_into == 1  # cuba: the current's gradient is the kernel's ga
    grad_currents = grad_v.new_empty(steps, batch, n)
    ga_all = grad_v.new_empty(steps, batch, n) if keep_ga and not into_a else None
    gv_all = grad_v.new_empty(steps, batch, n) if keep_gv and into_a else None
    rec = None
    for t in range(steps - 1, -1, -1):
        gz = grad_z[t] if grad_z is not None else torch.zeros_like(grad_v)
        if rec is not None:
            gz = gz + rec
        gv, ga = k.backward(gz, grad_v, grad_a, bits[t], d[t], s.spec)
        grad_currents[t] = ga if into_a else gv
        if gv_all is not None:
            gv_all[t] = gv
        grad_v = beta * gv
        if ga is not None:
            grad_a = rho * ga
            if ga_all is not None:
                ga_all[t] = ga
        gc = grad_currents[t]
        if w_rec is None:
            continue
        if list_capacity is not None:
            prev, prev_near = (z0_bits, near0) if t == 0 else (bits[t - 1], None if near is None else near[t - 1])
            spikes = get_kernels(resolve_backend(s.recurrent.backend, w_rec.device))
            rec = spikes.bits_grad_input(prev, prev_near, n, w_rec, gc, list_capacity).to(gc.dtype)
        else:
            rec = gc @ w_rec.t()
    return grad_currents, ga_all, gv_all, grad_v, grad_a, rec


def _threshold_grad(gv: Tensor, bits: Tensor, grad_v_last: Tensor, beta: Tensor) -> Tensor:
    """dL/dthreshold [N] of a window from gv [L, B, N] (w.r.t. v before each step's reset), its spikes and the
    adjoint of its last v: with x = v - theta and v_new = v - z theta (or v (1 - z)), z detached in the reset,
    dL/dtheta_t = -gx_t - [subtract] z_t grad_v_t = (1 - z_t) grad_v_t - gv_t for both resets, where grad_v_t
    (w.r.t. v_new of step t) is beta gv_{t+1}, and the adjoint of the last v for the last step. ALIF's
    theta = threshold + adapt_strength a takes the same; `ipu_snn.neuron.spec` states it."""
    z = unpack_spikes(bits, gv.shape[-1], gv.dtype)
    grad_v_after = torch.cat([beta * gv[1:], grad_v_last.unsqueeze(0)])
    return ((1.0 - z) * grad_v_after - gv).sum((0, 1))


def _rec_list_capacity(policy: SparsePolicy, bits: Tensor, z0_bits: Tensor, near: Tensor | None,
                       near0: Tensor | None, n: int) -> int | None:
    """The list length of the window's listed recurrent adjoint, or None for the dense one; counted in the
    policy's visits. Step t's adjoint lists step t-1's spikes (and near-threshold neurons)."""
    steps, batch, row_bytes = bits.shape
    listed = 0
    if policy.listed_grad and (policy.exact_lists or policy.visits is not None):
        spikes = get_kernels(resolve_backend(policy.backend, bits.device))
        planes = [z0_bits.unsqueeze(0), bits[:-1]]
        if near is not None:
            planes += [near0.unsqueeze(0), near[:-1]]
        listed = sum(int(spikes.count_bits(p.reshape(-1, row_bytes)).sum()) for p in planes if p.numel())
    capacity = policy.grad_capacity(listed, steps * batch, n)
    policy.count_visits(capacity, listed, steps * batch * n)
    return capacity


def _rec_weight_grad(policy: SparsePolicy, prev_bits: Tensor, grad_currents: Tensor, n: int) -> Tensor:
    """sum_t z_{t-1}^T grad_current_t over the window: dense, or row-sparse over the presynaptic spikes."""
    flat = prev_bits.reshape(-1, prev_bits.shape[-1])
    g = grad_currents.reshape(-1, n)
    spikes = get_kernels(resolve_backend(policy.backend, g.device))
    length = policy.list_length(spikes.count_bits(flat) if policy.mode == "auto" else None, n)
    if length is not None:
        return spikes.bits_grad_weight(flat, n, g, length)
    return unpack_spikes(flat, n, g.dtype).t() @ g


class _SpikingWindow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: WindowSettings, grad_enabled: bool, currents, v0, a0, z0, near0, w_rec, beta, rho,
                threshold):
        k = resolve(s.kernels, currents.device)
        saved = s.saved_dtype or currents.dtype
        # a forward that backward will not read keeps nothing: inference, and a schedule's untaped windows
        # (needs_input_grad holds under no_grad as well, and forward always runs with grad disabled)
        keep = grad_enabled and any(ctx.needs_input_grad)
        keep_v, keep_a = keep and beta.requires_grad, keep and rho is not None and rho.requires_grad
        recurrent, policy = w_rec is not None, s.recurrent
        two_states = s.spec.neuron.n_state > 1
        if k.window_forward is not None:
            params = {**neuron_params(s.spec), "keep_d": float(keep), "keep_v": float(keep_v),
                      "keep_a": float(keep_a), "recurrent_product": float(PRODUCT_MODE_CODES[policy.mode if recurrent else "dense"]),
                      "capacity": float(policy.capacity if recurrent else 0),
                      "max_density": float(policy.max_density if recurrent else 0.0),
                      "near_min_d": -1.0 if s.near_min_d is None else float(s.near_min_d)}
            (z, bits, d, v_prev, a_prev, near, v, a, dropped, _sparse_steps) = k.window_forward(
                currents.contiguous(), v0, a0, z0 if recurrent else None, w_rec, beta, rho, params, saved,
                threshold)
            f = _Forward(z, bits, d, v_prev if keep_v else None, a_prev if keep_a else None,
                         near if s.near_min_d is not None else None, v, a if two_states else None, dropped)
        else:
            f = _generic_forward(k, s, currents, v0, a0, z0, w_rec, beta, rho, saved, keep_v, keep_a, threshold)
        if recurrent and policy.mode == "sparse" and policy.overflow == "error" and bool(f.dropped.any()):
            from ..ops.spikes import raise_on_overflow  # the custom ops (torch >= 2.4): only where lists are

            raise_on_overflow(torch.full_like(f.dropped, policy.capacity), f.dropped, policy.capacity,
                              f"{s.where}'s recurrent spikes")
        ctx.s, ctx.k, ctx.keep_v, ctx.keep_a = s, k, keep_v, keep_a
        ctx.learn_threshold = keep and threshold is not None and threshold.requires_grad
        ctx.has_grad_a = a0 is not None
        if keep:
            z0_bits = pack_spikes(z0) if recurrent else None
            ctx.save_for_backward(f.bits, f.d, f.v_prev, f.a_prev, f.near, z0_bits, near0, w_rec, beta, rho)
        z_last = f.z[-1].clone()  # a state must not hold on to the whole window
        near_last = f.near[-1].clone() if f.near is not None else None
        ctx.mark_non_differentiable(*[t for t in (f.bits, f.near, near_last, f.dropped) if t is not None])
        return f.z, f.bits, f.near, f.v, f.a, z_last, near_last, f.dropped

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z, _bits, _near, grad_v, grad_a, grad_z_last, _near_last, _dropped):
        bits, d, v_prev, a_prev, near, z0_bits, near0, w_rec, beta, rho = ctx.saved_tensors
        s, k = ctx.s, ctx.k
        two_states = s.spec.neuron.n_state > 1
        steps, batch, n = d.shape
        if grad_v is None:
            grad_v = torch.zeros(batch, n, dtype=beta.dtype, device=beta.device)
        recurrent = w_rec is not None
        list_capacity = _rec_list_capacity(s.recurrent, bits, z0_bits, near, near0, n) if recurrent else None
        listed = list_capacity is not None
        # where the current enters the second state (cuba), the current's gradient is the state's, and
        # a learned beta needs the one w.r.t. v apart
        into_a = s.spec.neuron.current_into == 1
        keep_ga, keep_gv = ctx.keep_a and not into_a, (ctx.keep_v or ctx.learn_threshold) and into_a
        grad_v_last = grad_v
        if k.window_backward is not None:
            params = {**neuron_params(s.spec), "keep_ga": float(keep_ga), "keep_gv": float(keep_gv),
                      "listed_grad": float(listed), "capacity": float(list_capacity if listed else 0)}
            grad_currents, ga_all, gv_all, grad_v0, grad_a0, rec = k.window_backward(
                None if grad_z is None else grad_z.contiguous(), grad_z_last, grad_v.contiguous(),
                None if grad_a is None else grad_a.contiguous(), bits, d, z0_bits, near, near0, w_rec, beta, rho,
                params)
        else:
            if grad_z_last is not None:
                grad_z = torch.zeros(steps, batch, n, dtype=grad_z_last.dtype, device=grad_z_last.device) \
                    if grad_z is None else grad_z.clone()
                grad_z[-1] += grad_z_last
            if two_states and grad_a is None:
                grad_a = torch.zeros_like(grad_v)
            grad_currents, ga_all, gv_all, grad_v0, grad_a0, rec = _generic_backward(
                k, s, grad_z, grad_v, grad_a, bits, d, z0_bits, near, near0, w_rec, beta, rho, keep_ga, keep_gv,
                list_capacity)
        grad_w = grad_beta = grad_rho = grad_threshold = None
        if recurrent and ctx.needs_input_grad[7]:
            prev_bits = torch.cat([z0_bits.unsqueeze(0), bits[:-1]])  # z_{t-1} feeds step t
            grad_w = _rec_weight_grad(s.recurrent, prev_bits, grad_currents, n)
        if ctx.keep_v:
            gv = gv_all if into_a else grad_currents
            grad_beta = (gv * v_prev.to(gv.dtype)).sum((0, 1))
        if ctx.keep_a:
            ga = grad_currents if into_a else ga_all
            grad_rho = (ga * a_prev.to(ga.dtype)).sum((0, 1))
        if ctx.learn_threshold:
            grad_threshold = _threshold_grad(gv_all if into_a else grad_currents, bits, grad_v_last, beta)
        return (None, None, grad_currents, grad_v0, grad_a0 if two_states else None,
                rec if recurrent else None, None, grad_w, grad_beta, grad_rho, grad_threshold)


def spiking_window(currents: Tensor, state: LayerState, w_rec: Tensor | None, beta: Tensor, rho: Tensor | None,
                   settings: WindowSettings, threshold: Tensor | None = None) -> tuple[SpikeTrain, LayerState, Tensor]:
    """A spiking layer of any registered model over one window: (its spikes, its state after the window, spikes dropped per sample).

    ``currents`` [L, B, N]: the input currents of the window's steps; ``w_rec`` [N, N]
    (stored [from, to]) adds ``z_{t-1} @ w_rec`` to step t; ``beta`` [N] and ``rho``
    [N] (ALIF) are the per-step decays, already clamped to [0, 1]; ``threshold`` [N]: a learned
    per-neuron threshold (``learn_threshold``) in place of the spec's, whose gradient comes from the
    window's own adjoints (`_threshold_grad`), nothing more kept."""
    model = settings.spec.neuron
    if (rho is None) == (len(model.decays) > 0):
        raise ValueError(f"spiking_window: a {model.name} layer takes "
                         f"{', '.join(d.name + ' [N]' for d in model.decays) or 'no rho'}")
    if (w_rec is None) != (settings.recurrent is None):
        raise ValueError("spiking_window: w_rec and settings.recurrent go together")
    z, bits, near, v, a, z_last, near_last, dropped = _SpikingWindow.apply(
        settings, torch.is_grad_enabled(), currents, state.v, state.a, state.z, state.near, w_rec, beta, rho,
        threshold)
    return SpikeTrain(z, bits, near), LayerState(v, a, z_last, near_last), dropped


class _LeakyIntegrate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k: NeuronKernels, currents: Tensor, beta: Tensor, v0: Tensor):
        if k.leaky_forward is not None:
            trace = k.leaky_forward(currents, beta, v0)
        else:
            trace = torch.empty_like(currents)
            v = v0
            for t in range(currents.shape[0]):
                v = torch.addcmul(currents[t], beta, v)
                trace[t] = v
        if beta.requires_grad:
            ctx.save_for_backward(beta, trace, v0)
        else:
            ctx.save_for_backward(beta)
        ctx.k, ctx.steps = k, currents.shape[0]
        return trace, trace[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_trace: Tensor | None, grad_last: Tensor | None):
        beta, *kept = ctx.saved_tensors
        if ctx.k.leaky_backward is not None:
            grad_currents, grad_v0 = ctx.k.leaky_backward(grad_trace, grad_last, beta, ctx.steps)
        else:
            if grad_trace is None:
                grad_trace = grad_last.new_zeros((ctx.steps,) + tuple(grad_last.shape))
            grad_currents = torch.empty_like(grad_trace)
            g = grad_last if grad_last is not None else torch.zeros_like(grad_trace[0])
            for t in range(grad_trace.shape[0] - 1, -1, -1):
                g = grad_trace[t] + g if t == grad_trace.shape[0] - 1 else torch.addcmul(grad_trace[t], beta, g)
                grad_currents[t] = g
            grad_v0 = beta * g
        grad_beta = None
        if kept:
            # v_t = beta * v_{t-1} + I_t: d v_t / d beta = v_{t-1}, with v_{-1} = v0
            trace, v0 = kept
            prev = torch.cat([v0.unsqueeze(0), trace[:-1]])
            grad_beta = (grad_currents * prev).sum((0, 1))
        return None, grad_currents, grad_beta, grad_v0


def leaky_integrate(currents: Tensor, beta: Tensor, v0: Tensor, kernels: str | None = None) -> tuple[Tensor, Tensor]:
    """The leaky-integrator trace ``v_t = beta * v_{t-1} + I_t`` over a window [L, B, C], from v0 [B, C]:
    (the trace, the last v). Keeps nothing but the trace, and that only for a learned beta. ``kernels``:
    the neuron-kernel backend (None: the device's default), whose window loop runs it where it has one."""
    return _LeakyIntegrate.apply(resolve(kernels, currents.device), currents.contiguous(), beta, v0)
