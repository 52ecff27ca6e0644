"""``z @ W + b`` for binary spikes z given as packed bits, dense or sparse as a `SparsePolicy` says: the
product of the time loop between populations, over a window's rows. docs/spike_products.md gives the design.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..core.bits import unpack_spikes
from .policy import SparsePolicy
from .registry import get_kernels, resolve_backend
from .spikes import SpikeOverflowError, raise_on_overflow


class _SpikeProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, policy: SparsePolicy, where: str, z: Tensor | None, bits: Tensor, near: Tensor | None,
                weight: Tensor, bias: Tensor | None):
        n_in, n_out = weight.shape
        lead = bits.shape[:-1]
        flat = bits.reshape(-1, bits.shape[-1])
        kernels = get_kernels(resolve_backend(policy.backend, weight.device))
        counts = kernels.count_bits(flat) if policy.mode == "auto" else None
        capacity = policy.list_length(counts, n_in)
        if capacity is not None:
            out, dropped = kernels.bits_forward(flat, n_in, weight, bias, capacity)
            if policy.overflow == "error" and bool(dropped.any()):
                raise_on_overflow(torch.full_like(dropped, capacity), dropped, capacity, where)
        else:
            dropped = torch.zeros(flat.shape[0], dtype=torch.int32, device=bits.device)
            x = z.reshape(-1, n_in) if z is not None else unpack_spikes(flat, n_in, weight.dtype)
            out = x @ weight if bias is None else torch.addmm(bias, x, weight)
        ctx.policy, ctx.capacity, ctx.n_in = policy, capacity, n_in
        ctx.has_bias, ctx.z_dtype = bias is not None, None if z is None else z.dtype
        ctx.save_for_backward(flat, near, weight)
        ctx.mark_non_differentiable(dropped)
        return out.reshape(*lead, n_out), dropped.reshape(lead)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor, _dropped):
        flat, near, weight = ctx.saved_tensors
        policy, n_in, capacity = ctx.policy, ctx.n_in, ctx.capacity
        lead = grad_out.shape[:-1]
        g = grad_out.reshape(-1, grad_out.shape[-1]).contiguous()
        kernels = get_kernels(resolve_backend(policy.backend, weight.device))
        grad_z = grad_w = grad_b = None
        if ctx.needs_input_grad[5]:
            if capacity is not None:
                grad_w = kernels.bits_grad_weight(flat, n_in, g, capacity)
            else:
                grad_w = unpack_spikes(flat, n_in, g.dtype).t() @ g
        if ctx.needs_input_grad[2]:
            near_flat = None if near is None else near.reshape(flat.shape)
            listed = 0
            if policy.listed_grad and (policy.exact_lists or policy.visits is not None):
                listed = int(kernels.count_bits(flat).sum())
                if near_flat is not None:
                    listed += int(kernels.count_bits(near_flat).sum())
            list_capacity = policy.grad_capacity(listed, flat.shape[0], n_in)
            policy.count_visits(list_capacity, listed, flat.shape[0] * n_in)
            if list_capacity is not None:
                grad_z = kernels.bits_grad_input(flat, near_flat, n_in, weight, g, list_capacity)
            else:
                grad_z = g @ weight.t()
            grad_z = grad_z.reshape(*lead, n_in).to(ctx.z_dtype)
        if ctx.has_bias and ctx.needs_input_grad[6]:
            grad_b = g.sum(0)
        return None, None, grad_z, None, None, grad_w, grad_b


def spike_product(bits: Tensor, weight: Tensor, bias: Tensor | None, policy: SparsePolicy, *,
                  z: Tensor | None = None, near: Tensor | None = None,
                  where: str = "a spike product") -> tuple[Tensor, Tensor]:
    """``z @ weight + bias`` of the spikes in ``bits`` [..., ceil(n_in / 8)]: (out [..., n_out], dropped [...]).

    ``z``: the dense 0/1 spikes the bits were packed from, when their gradient is
    wanted; ``near``: near-threshold bits of the same shape, listed after the
    spikes for the input gradient under ``policy.listed_grad``. ``dropped``
    counts the spikes per row left out over the capacity (``sparse`` with
    ``drop_and_count`` only); with ``overflow="error"`` they raise a
    SpikeOverflowError that names ``where``."""
    return _SpikeProduct.apply(policy, where, z, bits, near, weight, bias)


__all__ = ["SpikeOverflowError", "spike_product"]
