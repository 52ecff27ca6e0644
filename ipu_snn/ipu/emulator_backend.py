"""The ``ipu_emulator`` spike-matmul backend: every kernel call runs tile by tile on the emulator.

The device table names it for ``device: ipu-emulator``. Training there runs the spiking layers and the
readout as the network op's graph on the host interpreter (ipu_snn.ipu.interpreted), so no product
reaches this backend; a network built for ipu-emulator and not handed to the interpreter
(``build_network(..., device="ipu-emulator")``, ``ipu-snn eval --device ipu-emulator``) runs its
products here, tile by tile, with the shared C++ core (the ``cpu`` backend) doing each tile's sums:

* a matmul's ``n_out`` output columns are split evenly over
  ``min(n_out, 1472)`` tiles, one Mk2 tile per column up to the IPU's tile
  count, as the network op splits a population smaller than one IPU;
* forward and weight gradient: each tile works on its own columns, with the
  spike list broadcast to it; input gradient: each tile's partial values at the
  listed slots, reduce-scattered over the tiles (`reduce_scatter`);
* compaction (spike select): sample b is compacted on selecting tile
  ``b mod tiles`` of the population's ``min(n, 1472)`` tiles.

Every buffer of a call is charged to its tile, and a tile past its 624 KiB of
SRAM raises TileOverflowError. A call sees only its own op's buffers, not the
rest of what the plan puts on the tile (state, history, optimizer): the whole
account is ``ipu-snn plan --device ipu-mk2``'s. Results equal the ``cpu`` backend's up to the
order of float sums.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ipu_snn.core.bits import unpack_spikes
from ipu_snn.errors import UserError
from ipu_snn.ipu.interpreter import MK2_TILE_BYTES, MK2_TILES
from ipu_snn.ops.backend import SpikeKernels

NAME = "ipu_emulator"
TILES, TILE_BYTES = MK2_TILES, MK2_TILE_BYTES
#: The per-tile kernels: the shared C++ core.
CORE = "cpu"


class TileOverflowError(UserError):
    """A tile's buffers exceed its SRAM."""


@contextmanager
def one_thread():
    """Run the per-tile kernel calls on one CPU thread (a tile's share is a few columns: waking OpenMP's
    thread team for each call cost about 15 ms a call on a busy 2-core machine, 10x the work)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Tile:
    """One tile's SRAM: what a call holds on it, by name."""

    index: int
    capacity: int
    held: dict[str, int] = field(default_factory=dict)

    def hold(self, name: str, kind: str, nbytes: int) -> None:
        total = sum(self.held.values()) + nbytes
        if total > self.capacity:
            raise TileOverflowError(f"tile {self.index} overflows its SRAM: holding {name} ({kind}, {nbytes} B) "
                                    f"brings it to {total} B of {self.capacity} B; held: "
                                    + ", ".join(f"{n} {b} B" for n, b in self.held.items()))
        self.held[name] = nbytes

    def hold_tensor(self, name: str, kind: str, t: Tensor) -> Tensor:
        self.hold(name, kind, t.numel() * t.element_size())
        return t


def hold_list(tile: Tile, name: str, ids: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """The broadcast copy of a spike list this tile receives."""
    return (tile.hold_tensor(f"{name}_ids", "spike_lists", ids.clone()),
            tile.hold_tensor(f"{name}_counts", "spike_lists", counts.clone()))


def reduce_scatter(tiles: dict[int, Tile], order: list[int], partials: dict[int, Tensor], slots: int) -> Tensor:
    """Sum the tiles' [B, K] partials: tile j receives chunk j of every other tile's partial (chunks padded
    to one static size, as an IPU exchange needs); the summed flat values [B*K]."""
    n = len(order)
    chunk = math.ceil(slots / n)
    padded = {t: torch.nn.functional.pad(partials[t].reshape(-1), (0, chunk * n - slots)) for t in order}
    summed = []
    for j, t in enumerate(order):
        others = [padded[s][j * chunk:(j + 1) * chunk] for s in order if s != t]
        own = padded[t][j * chunk:(j + 1) * chunk]
        if others:
            own = own + tiles[t].hold_tensor("reduce_receive", "reduce_receive", torch.stack(others)).sum(0)
        summed.append(own)
    return torch.cat(summed)[:slots]


def split_even(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [begin, end) ranges of n items over parts, sizes differing by at most one (the op's
    ``tiling::splitEven``)."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for j in range(parts):
        end = start + base + (1 if j < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


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
    summed = reduce_scatter(tiles, [t for t, _, _ in slices], partials, batch * capacity)
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
        tile.hold("select_bits", "select", samples * ((n + 7) // 8) * (1 if near is None else 2))
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
