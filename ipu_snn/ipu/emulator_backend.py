"""The ``ipu_emulator`` spike-matmul backend: every kernel call runs tile by tile on the emulator.

``device: ipu-emulator`` trains on the CPU with this backend (ipu_snn.devices
names it), so a small model runs through the same per-tile decomposition an IPU
would, with the shared C++ core (the ``cpu`` backend) doing each tile's sums:

* a matmul's ``n_out`` output columns are split evenly over
  ``min(n_out, 1472)`` tiles, one Mk2 tile per column up to the IPU's tile
  count: the mapping ipu_snn.ipu.tiles gives every population of a model
  smaller than one IPU (it never puts fewer than one neuron on a tile);
* forward and weight gradient: each tile works on its own columns, with the
  spike list broadcast to it; input gradient: each tile's partial values at the
  listed slots, reduce-scattered over the tiles (emulator.reduce_scatter);
* compaction (spike select): sample b is compacted on selecting tile
  ``b mod tiles`` of the population's ``min(n, 1472)`` tiles.

Every buffer of a call is charged to its tile, and a tile past its 624 KiB of
SRAM raises TileOverflowError. A call sees only its own op's buffers, not the
rest of what the plan puts on the tile (state, history, optimizer): the whole
account is ``ipu-snn plan --device ipu-mk2``'s. Results equal the ``cpu`` backend's up to the
order of float sums.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ipu_snn.ipu.emulator import Tile, hold_list, one_thread, reduce_scatter
from ipu_snn.ipu.tiles import TILE_GEOMETRY, packed_bytes, split_even
from ipu_snn.core.bits import unpack_spikes
from ipu_snn.ops.backend import SpikeKernels

NAME = "ipu_emulator"
DEVICE = "ipu-mk2"
TILES, TILE_BYTES = TILE_GEOMETRY[DEVICE]
#: The per-tile kernels: the shared C++ core.
CORE = "cpu"


def column_slices(n_out: int) -> list[tuple[int, int, int]]:
    """(tile, col_begin, col_end): n_out columns evenly over min(n_out, tiles) tiles."""
    return [(t, b, e) for t, (b, e) in enumerate(split_even(n_out, max(1, min(n_out, TILES))))]


def _tiles(slices) -> dict[int, Tile]:
    return {t: Tile(t, TILE_BYTES) for t, _, _ in slices}


def _on_column_tiles(out: Tensor, ids: Tensor, counts: Tensor, work) -> Tensor:
    """``out`` with each column slice computed on its own tile, the spike list broadcast to it:
    ``work(tile, col_begin, col_end, ids, counts)`` gives the slice."""
    for t, b, e in column_slices(out.shape[1]):
        tile = Tile(t, TILE_BYTES)
        out[:, b:e] = work(tile, b, e, *hold_list(tile, "spike", ids, counts))
    return out


@one_thread()
def forward(ids: Tensor, counts: Tensor, weight: Tensor) -> Tensor:
    def on_tile(tile, b, e, ids_t, counts_t):
        w = tile.hold_tensor("weights", "weights", weight[:, b:e].contiguous())
        return tile.hold_tensor("activations", "activations",
                                torch.ops.ipu_snn.spike_matmul_fwd(ids_t, counts_t, w, CORE))

    return _on_column_tiles(weight.new_empty(ids.shape[0], weight.shape[1]), ids, counts, on_tile)


@one_thread()
def grad_weight(ids: Tensor, counts: Tensor, grad_out: Tensor, n_in: int) -> Tensor:
    def on_tile(tile, b, e, ids_t, counts_t):
        g = tile.hold_tensor("grad_out", "activations", grad_out[:, b:e].contiguous())
        return tile.hold_tensor("weight_grads", "weight_grads",
                                torch.ops.ipu_snn.spike_matmul_grad_weight(ids_t, counts_t, g, n_in, CORE))

    return _on_column_tiles(grad_out.new_empty(n_in, grad_out.shape[1]), ids, counts, on_tile)


@one_thread()
def grad_input(ids: Tensor, counts: Tensor, weight: Tensor, grad_out: Tensor) -> Tensor:
    n_out = weight.shape[1]
    batch, capacity = ids.shape
    slices = column_slices(n_out)
    tiles = _tiles(slices)
    partials = {}
    for t, b, e in slices:
        tile = tiles[t]
        w = tile.hold_tensor("weights", "weights", weight[:, b:e].contiguous())
        ids_t, counts_t = hold_list(tile, "spike", ids, counts)
        g = tile.hold_tensor("grad_out", "activations", grad_out[:, b:e].contiguous())
        partials[t] = tile.hold_tensor("partial", "grad_partials",
                                       torch.ops.ipu_snn.spike_matmul_grad_input(ids_t, counts_t, w, g, CORE))
    summed, _ = reduce_scatter(tiles, [t for t, _, _ in slices], partials, batch * capacity)
    return summed.view(batch, capacity)


@one_thread()
def compact(z: Tensor, near: Tensor | None, capacity: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    batch, n = z.shape
    selectors = max(1, min(batch, n, TILES))
    ids = torch.zeros(batch, capacity, dtype=torch.int32)
    per_sample = [torch.zeros(batch, dtype=torch.int32) for _ in range(4)]
    for j in range(selectors):
        rows = slice(j, batch, selectors)
        tile = Tile(j, TILE_BYTES)
        samples = len(range(j, batch, selectors))
        # The sample's spike (and near-threshold) bits arrive from the owners; its list row leaves.
        tile.hold("select_bits", "select", samples * packed_bytes(n) * (1 if near is None else 2))
        found = torch.ops.ipu_snn.compact_spikes(z[rows].contiguous(), None if near is None else near[rows].contiguous(),
                                                 capacity, CORE)
        tile.hold("select_rows", "select", samples * (capacity + 1) * 4)
        ids[rows] = found[0]
        for total, part in zip(per_sample, found[1:]):
            total[rows] = part
    return (ids, *per_sample)


def compact_bits(bits: Tensor, near: Tensor | None, n: int, capacity: int):
    """`compact` of spikes given as packed bits: each selecting tile receives the owners' bits."""
    return compact(unpack_spikes(bits, n, torch.uint8), None if near is None else unpack_spikes(near, n, torch.bool),
                   capacity)


def load() -> SpikeKernels:
    """The registry's loader for ``ipu_emulator`` (registered by ipu_snn.ipu)."""
    return SpikeKernels.from_lists(NAME, frozenset({"cpu"}), forward, grad_weight, grad_input, compact, compact_bits)


__all__ = ["column_slices", "compact", "compact_bits", "forward", "grad_input", "grad_weight", "load"]
