"""Products on packed bits, composed from a backend's spike-list kernels.

The time loop multiplies spikes given as packed bits (ipu_snn/core/bits.py).
The CPU extension has kernels that read the bits directly; any other backend
(reference, Triton, the IPU emulator) gets these compositions: compact the bits
to spike lists, then run its list kernels. Same contract as the CPU's
``bits_forward`` / ``bits_grad_weight`` / ``bits_grad_input`` / ``count_bits``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .reference import scatter_listed

_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def count_bits(bits: Tensor) -> Tensor:
    """Spikes per row of packed bits [R, nb] (int32 [R])."""
    return _POPCOUNT.to(bits.device)[bits.long()].sum(-1, dtype=torch.int32)


def bits_products(compact_bits: Callable, forward: Callable, grad_weight: Callable, grad_input: Callable):
    """(bits_forward, bits_grad_weight, bits_grad_input) from a backend's list kernels."""
    def bits_forward(bits: Tensor, n_in: int, weight: Tensor, bias: Tensor | None,
                     capacity: int) -> tuple[Tensor, Tensor]:
        ids, counts, _, dropped, _ = compact_bits(bits, None, n_in, capacity)
        out = forward(ids, counts, weight)
        return (out if bias is None else out + bias), dropped

    def bits_grad_weight(bits: Tensor, n_in: int, grad_out: Tensor, capacity: int) -> Tensor:
        ids, counts, *_ = compact_bits(bits, None, n_in, capacity)
        return grad_weight(ids, counts, grad_out, n_in)

    def bits_grad_input(bits: Tensor, near: Tensor | None, n_in: int, weight: Tensor, grad_out: Tensor,
                        capacity: int) -> Tensor:
        ids, counts, near_counts, *_ = compact_bits(bits, near, n_in, capacity)
        listed = counts + near_counts
        return scatter_listed(grad_input(ids, listed, weight, grad_out), ids, listed, n_in).to(weight.dtype)

    return bits_forward, bits_grad_weight, bits_grad_input
