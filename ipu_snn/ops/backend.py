"""What a spike-matmul backend is: the kernels it provides, with their signatures (``SpikeKernels``).

The registry (registry.py) maps names to these; each backend's module builds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ipu_snn.ops.list_products import bits_products, count_bits


@dataclass(frozen=True)
class SpikeKernels:
    """The kernels of one backend. Shapes: ids [B, K] int32, counts [B] int32."""

    name: str
    #: torch device types whose tensors these kernels accept.
    device_types: frozenset[str]
    #: (ids, counts, weight[n_in, n_out]) -> out [B, n_out]
    forward: Callable[[Tensor, Tensor, Tensor], Tensor]
    #: (ids, counts, grad_out[B, n_out], n_in) -> grad_weight [n_in, n_out]
    grad_weight: Callable[[Tensor, Tensor, Tensor, int], Tensor]
    #: (ids, counts, weight, grad_out) -> values [B, K], 0 past each count
    grad_input: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    #: (z[B, N], near[B, N] bool | None, capacity) -> (ids, counts, near_counts, dropped, near_dropped)
    compact: Callable[[Tensor, Tensor | None, int], tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]
    #: the same from packed bits (ipu_snn/core/bits.py): (bits[R, ceil(n/8)], near bits | None, n, capacity)
    compact_bits: Callable[[Tensor, Tensor | None, int, int], tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]
    #: Products on packed bits over a window's rows (ops/product.py). Each counts only a row's first
    #: `capacity` spikes. (bits, n_in, weight, bias | None, capacity) -> (out [R, n_out], dropped int32 [R])
    bits_forward: Callable[[Tensor, int, Tensor, Tensor | None, int], tuple[Tensor, Tensor]]
    #: (bits, n_in, grad_out, capacity) -> grad_weight [n_in, n_out]
    bits_grad_weight: Callable[[Tensor, int, Tensor, int], Tensor]
    #: (bits, near bits | None, n_in, weight, grad_out, capacity) -> grad_in [R, n_in], 0 at unlisted neurons
    bits_grad_input: Callable[[Tensor, Tensor | None, int, Tensor, Tensor, int], Tensor]
    #: bits [R, nb] -> spikes per row, int32 [R]
    count_bits: Callable[[Tensor], Tensor]

    @classmethod
    def from_lists(cls, name: str, device_types: frozenset[str], forward, grad_weight, grad_input, compact,
                   compact_bits) -> "SpikeKernels":
        """A backend of list kernels, with its products on bits composed from them."""
        return cls(name, device_types, forward, grad_weight, grad_input, compact, compact_bits,
                   *bits_products(compact_bits, forward, grad_weight, grad_input), count_bits)
