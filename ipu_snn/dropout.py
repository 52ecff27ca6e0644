"""Dropout on spikes that keeps them binary, so that packed-bit sparse products still apply.

A layer's output spikes (to the next layer and the readout; not its own
recurrent input) are masked in training, and the population they feed scales
its input currents (less bias) by 1 / (1 - p), which is the same as inverted
dropout's scaled spikes without making them non-binary. The mask of neuron n of
sample b at step t is a hash of (seed, layer, t, b, n): the same whatever the
windows, so that a window recomputed under a BPTT schedule drops the same
spikes, and the plain loop is its ground truth.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core.bits import pack_spikes
from .neuron.window import SpikeTrain

_M = 0xFFFFFFFF
_MULTIPLIERS = (0x5BD1E995, 0x2C1B3C6D, 0x297A2D39)  # below 2^31: products of 32-bit values fit int64


def keep_mask(seed: int, layer: int, t0: int, shape: tuple[int, int, int], p: float, device) -> Tensor:
    """[L, B, N] bool: which spikes of steps t0.. pass, each with probability 1 - p."""
    steps, batch, n = shape
    x = _mix(torch.arange(t0, t0 + steps, device=device, dtype=torch.int64)[:, None, None]
             ^ _mix(torch.tensor(seed * 0x27D4EB2F + layer * 0x165667B1, device=device) & _M))
    x = _mix(x ^ torch.arange(batch, device=device, dtype=torch.int64)[None, :, None])
    x = _mix(x ^ torch.arange(n, device=device, dtype=torch.int64)[None, None, :])
    return x.to(torch.float64) / 2.0 ** 32 >= p


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) of each element of ``x``."""
    x = x & _M
    for m in _MULTIPLIERS:
        x = ((x ^ (x >> 15)) * m) & _M
    return x ^ (x >> 16)


def drop(train: SpikeTrain, keep: Tensor) -> SpikeTrain:
    """The train with the spikes outside ``keep`` removed (their gradient is 0; near bits cleared too)."""
    z = train.z.masked_fill(~keep, 0.0)  # keeps only the bool mask for backward
    near = None if train.near is None else train.near & pack_spikes(keep)
    return SpikeTrain(z, pack_spikes(z.detach()), near)


def rescale(currents: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """Input currents from dropped spikes, scaled as inverted dropout scales the spikes: bias excluded."""
    if bias is None:
        return currents * scale
    return (currents - bias) * scale + bias
