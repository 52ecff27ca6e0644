"""Plain-torch kernels of the fused LIF/ALIF step: the ground truth for the others.

Same contract as custom_ops/include/neuron_core.h (the math is at the top of
ipu_snn/ops/neuron_ops.py). It reuses the surrogate derivatives of
ipu_snn/neurons.py, so it cannot drift from them, and runs on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ipu_snn.neurons import SURROGATE_GRADS

#: Bit k of a packed byte holds neuron 8 * i + k.
_BIT_SHIFTS = tuple(range(8))


def packed_row_bytes(n: int) -> int:
    return (n + 7) // 8


def pack_spikes(z: Tensor) -> Tensor:
    """[..., N] (nonzero = spike) to uint8 [..., ceil(N / 8)], little-endian bit order."""
    *lead, n = z.shape
    padded = torch.zeros(*lead, packed_row_bytes(n) * 8, dtype=torch.uint8, device=z.device)
    padded[..., :n] = z != 0
    shifts = torch.tensor(_BIT_SHIFTS, dtype=torch.uint8, device=z.device)
    # Distinct bits, so the sum is an OR and never carries.
    return (padded.unflatten(-1, (-1, 8)) << shifts).sum(-1, dtype=torch.uint8)


def unpack_spikes(zbits: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """uint8 [..., ceil(n / 8)] to the [..., n] 0/1 spikes in ``dtype``."""
    shifts = torch.tensor(_BIT_SHIFTS, dtype=torch.uint8, device=zbits.device)
    bits = (zbits.unsqueeze(-1) >> shifts) & 1
    return bits.flatten(-2)[..., :n].to(dtype)


def neuron_forward(
    current: Tensor, v: Tensor, a: Tensor | None, beta: Tensor, rho: Tensor | None,
    threshold: float, adapt_strength: float, reset: str, surrogate: str, scale: float,
    saved_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    v = beta * v + current
    if a is not None:
        a = rho * a
        theta = threshold + adapt_strength * a
    else:
        theta = threshold
    x = v - theta
    fired = x > 0
    z = fired.to(v.dtype)
    d = SURROGATE_GRADS[surrogate](x, scale).to(saved_dtype)
    v_new = v - z * theta if reset == "subtract" else v * (1.0 - z)
    a_new = a + z if a is not None else v.new_empty(0)
    return v_new, a_new, z, d, pack_spikes(fired)


def neuron_backward(
    grad_z: Tensor, grad_v: Tensor, grad_a: Tensor | None, zbits: Tensor, d: Tensor,
    beta: Tensor, rho: Tensor | None, adapt_strength: float, reset: str,
) -> tuple[Tensor, Tensor, Tensor]:
    z = unpack_spikes(zbits, grad_v.shape[1], grad_v.dtype)
    adaptive = rho is not None
    grad_a = grad_a if grad_a is not None and adaptive else None
    gz = grad_z + grad_a if grad_a is not None else grad_z
    gx = gz * d.to(grad_v.dtype)
    subtract = reset == "subtract"
    gv = (grad_v if subtract else grad_v * (1.0 - z)) + gx
    if adaptive:
        through_theta = gx + grad_v * z if subtract else gx
        ga = -adapt_strength * through_theta
        if grad_a is not None:
            ga = grad_a + ga
        grad_a_prev = rho * ga
    else:
        grad_a_prev = grad_v.new_empty(0)
    return gv, beta * gv, grad_a_prev
