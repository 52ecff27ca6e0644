"""Dense-torch kernels: the ground truth every other backend is tested against.

Each kernel materialises the dense 0/1 spike matrix and uses plain matmuls, so
it is obviously right and slow. The compaction (dense spikes to a capacity-K id
list) is also used by the Triton backends: cumsum and scatter are already fast,
static-shape GPU kernels, so a hand-written one would add nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ipu_snn.core.bits import unpack_spikes


def listed_mask(counts: Tensor, capacity: int) -> Tensor:
    """[B, K] bool: True where list slot k is below the sample's count."""
    slots = torch.arange(capacity, device=counts.device, dtype=counts.dtype)
    return slots.unsqueeze(0) < counts.unsqueeze(1)


def dense_spikes(ids: Tensor, counts: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """The [B, n] 0/1 matrix with a 1 at the first counts[b] ids of each sample."""
    batch, capacity = ids.shape
    live = listed_mask(counts, capacity)
    # Unlisted slots write into a spare column n, which is cut off afterwards.
    column = torch.where(live, ids, n).long()
    dense = torch.zeros(batch, n + 1, dtype=dtype, device=ids.device)
    dense.scatter_(1, column, 1)
    return dense[:, :n].contiguous()


def forward(ids: Tensor, counts: Tensor, weight: Tensor) -> Tensor:
    return dense_spikes(ids, counts, weight.shape[0], weight.dtype) @ weight


def grad_weight(ids: Tensor, counts: Tensor, grad_out: Tensor, n_in: int) -> Tensor:
    return dense_spikes(ids, counts, n_in, grad_out.dtype).T @ grad_out


def grad_input(ids: Tensor, counts: Tensor, weight: Tensor, grad_out: Tensor) -> Tensor:
    full = grad_out.to(weight.dtype) @ weight.T  # [B, n_in]
    live = listed_mask(counts, ids.shape[1])
    values = full.gather(1, torch.where(live, ids, 0).long())
    return torch.where(live, values, torch.zeros((), dtype=values.dtype, device=values.device))


def compact(
    z: Tensor, near: Tensor | None, capacity: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Dense spikes (nonzero = spike) to (ids, counts, near_counts, dropped, near_dropped).

    Same contract as ``core::compact_row`` in custom_ops/include/spike_core.h:
    spike ids ascending, then near-threshold ids ascending, then padding id 0.
    """
    batch, n = z.shape
    spike = z != 0
    total = spike.sum(1, dtype=torch.int32)
    counts = total.clamp(max=capacity)
    # Position of each spike in its sample's list; those past capacity are dropped.
    position = spike.cumsum(1, dtype=torch.int32) - 1
    slot = torch.where(spike & (position < capacity), position, capacity)
    near_counts = torch.zeros_like(counts)
    near_dropped = torch.zeros_like(counts)
    if near is not None:
        candidate = near.bool() & ~spike
        near_position = counts.unsqueeze(1) + candidate.cumsum(1, dtype=torch.int32) - 1
        fits = candidate & (near_position < capacity)
        slot = torch.where(fits, near_position, slot)
        near_counts = fits.sum(1, dtype=torch.int32)
        near_dropped = candidate.sum(1, dtype=torch.int32) - near_counts
    # Slot `capacity` is a spare column collecting everything not listed.
    ids = torch.zeros(batch, capacity + 1, dtype=torch.int32, device=z.device)
    neuron = torch.arange(n, dtype=torch.int32, device=z.device).expand(batch, n)
    ids.scatter_(1, slot.long(), neuron)
    return ids[:, :capacity].contiguous(), counts, near_counts, total - counts, near_dropped


def compact_bits(bits: Tensor, near: Tensor | None, n: int, capacity: int
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`compact` for spikes given as packed bits (ipu_snn/core/bits.py)."""
    z = unpack_spikes(bits, n, torch.uint8)
    return compact(z, None if near is None else unpack_spikes(near, n, torch.bool), capacity)


def scatter_listed(values: Tensor, ids: Tensor, listed_counts: Tensor, n: int) -> Tensor:
    """[B, K] values at listed ids to a dense [B, n] gradient, 0 at unlisted neurons."""
    live = listed_mask(listed_counts, ids.shape[1])
    dense = torch.zeros(ids.shape[0], n, dtype=values.dtype, device=values.device)
    # Kernels return 0 in unlisted slots (the op's contract), and those slots
    # add it to column 0, so padding ids never need to be valid.
    return dense.scatter_add_(1, torch.where(live, ids, 0).long(), values)
