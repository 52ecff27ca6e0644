"""Spikes as bits: the one packing every kernel, the fused loop and the spike products share.

Bit k of byte i of a row holds neuron ``8 i + k`` (little-endian bit order); a
row of n neurons takes ``ceil(n / 8)`` bytes and its unused high bits are written 0 (and never read as
spikes: the list builders of custom_ops/include/spike_core.h mask them).
custom_ops/include/neuron_core.h (``pack_bits``) and the Triton kernels write
the same layout.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_SHIFTS = tuple(range(8))


def packed_row_bytes(n: int) -> int:
    """Bytes of one packed row of n neurons."""
    return (n + 7) // 8


def pack_spikes(z: Tensor) -> Tensor:
    """[..., n] spikes (nonzero = spike) to uint8 [..., ceil(n / 8)]."""
    if z.device.type == "cpu":
        # numpy packs in one pass: about 80x faster than the shifts and sum of _pack_on_device, which
        # made packing a long sample cost more than binning it
        return torch.from_numpy(np.packbits((z != 0).numpy(), axis=-1, bitorder="little"))
    return _pack_on_device(z)


def _pack_on_device(z: Tensor) -> Tensor:
    """pack_spikes with torch ops alone, on the tensor's device (a GPU's)."""
    *lead, n = z.shape
    padded = torch.zeros(*lead, packed_row_bytes(n) * 8, dtype=torch.uint8, device=z.device)
    padded[..., :n] = z != 0
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=z.device)
    # distinct bits, so the sum is an OR and never carries
    return (padded.unflatten(-1, (-1, 8)) << shifts).sum(-1, dtype=torch.uint8)


def unpack_spikes(bits: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 [..., ceil(n / 8)] back to the [..., n] 0/1 spikes in ``dtype``."""
    if bits.dtype != torch.uint8 or bits.dim() < 1 or bits.shape[-1] != packed_row_bytes(n):
        raise ValueError(f"unpack_spikes: bits must be uint8 [..., {packed_row_bytes(n)}] for n = {n} "
                         f"neurons, got {bits.dtype} {tuple(bits.shape)}")
    if bits.device.type == "cpu":
        # numpy unpacks in one pass: about 6x faster than the shifts below for a window's input rows,
        # which the dense products unpack every window (forward and backward)
        return torch.from_numpy(np.unpackbits(bits.numpy(), axis=-1, count=n, bitorder="little")).to(dtype)
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=bits.device)
    return ((bits.unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., :n].to(dtype)


def count_spikes(bits: Tensor) -> Tensor:
    """Spikes per row of packed bits (int64 [...]): a population count over the last dimension."""
    table = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64, device=bits.device)
    return table[bits.long()].sum(-1)
