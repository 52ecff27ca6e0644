"""A tile-by-tile CPU emulator of one spike matmul laid out as a TilePlan says.

It runs the decomposition of ipu_snn.ipu.tiles (each tile owns a range of
postsynaptic neurons, i.e. the weight columns ``W[:, own]``) in BSP supersteps:

forward    superstep 1  exchange: the spike list is broadcast to every tile;
                        compute:  each tile runs the shared C++ core (the ``cpu``
                                  backend of ``ipu_snn::spike_matmul_fwd``) on its
                                  own columns: out[:, own] stays on the tile.
backward   superstep 1  exchange: the spike list again; compute: grad-weight of the
                        own columns (local) and the tile's partial input gradient
                        at the listed slots, values [B, K];
           superstep 2  exchange + compute: reduce-scatter of the partials, tile j
                        sums chunk j (static, padded chunks as an IPU exchange needs);
           superstep 3  exchange: the summed values are all-gathered to every tile of the
                        presynaptic population (static routing: each owner picks its slots).

Every buffer a tile would hold is a real tensor here, and its bytes are charged
to that tile: the weight slice, its gradient, the spike list, the
output/gradient columns, the partials and the reduce receive buffer. (The CPU
kernels that do each tile's sums build a neuron index as scratch; the Poplar
vertices walk the lists sample by sample and build none, so none is charged.) A tile that
would exceed its SRAM raises TileOverflowError, as the Poplar compiler would
refuse the graph. Bytes that cross tiles are counted per phase.

The spiking layers over T steps run as the network op's Poplar graph on the host
interpreter (ipu_snn.ipu.interpreter); on ``device: ipu-emulator`` the readout's
products run through the ``ipu_emulator`` backend of ipu_snn.ipu.emulator_backend.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ipu_snn.errors import UserError
from ipu_snn.ipu.tiles import TilePlan
from ipu_snn.ops.reference import listed_mask
from ipu_snn.ops.spikes import SparseSpikes

#: Kinds the plan accounts for that a single matmul does not hold (reserved from the plan).
NOT_EMULATED = ("optimizer", "state", "history", "checkpoints", "code", "select", "grad_gather")


#: What the BPTT schedule keeps on a tile: taped windows and local checkpoints.
KEPT_KINDS = ("history", "checkpoints")


class TileOverflowError(UserError):
    """A tile's buffers exceed its SRAM."""


@contextmanager
def one_thread():
    """Run the per-tile kernel calls on one CPU thread.

    A tile's share is tiny (a few columns), and waking OpenMP's thread team for
    each call cost about 15 ms a call on a busy 2-core machine, 10x the work.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Tile:
    """One tile's SRAM: what it holds now, by name and kind, and its peak."""

    index: int
    capacity: int
    held: dict[str, tuple[str, int]] = field(default_factory=dict)
    peak: int = 0
    peak_by_kind: dict[str, int] = field(default_factory=dict)
    kept_peak: int = 0  # the most bytes of KEPT_KINDS held at once (not necessarily at the tile's peak)

    @property
    def used(self) -> int:
        return sum(nbytes for _, nbytes in self.held.values())

    def hold(self, name: str, kind: str, nbytes: int) -> None:
        total = self.used + nbytes
        if total > self.capacity:
            raise TileOverflowError(
                f"tile {self.index} overflows its SRAM: holding {name} ({kind}, {nbytes} B) brings it to "
                f"{total} B of {self.capacity} B; held: "
                + ", ".join(f"{n} {b} B" for n, (_, b) in self.held.items())
            )
        self.held[name] = (kind, nbytes)
        if kind in KEPT_KINDS:
            self.kept_peak = max(self.kept_peak, sum(b for k, b in self.held.values() if k in KEPT_KINDS))
        if total > self.peak:
            self.peak = total
            self.peak_by_kind = {}
            for k, b in self.held.values():
                self.peak_by_kind[k] = self.peak_by_kind.get(k, 0) + b

    def hold_tensor(self, name: str, kind: str, t: Tensor) -> Tensor:
        self.hold(name, kind, t.numel() * t.element_size())
        return t

    def release(self, *names: str) -> None:
        for name in names:
            self.held.pop(name, None)


@dataclass
class EmulationReport:
    out: Tensor  # [B, n_out]
    grad_weight: Tensor | None  # [n_in, n_out]
    grad_input: Tensor | None  # [B, n_in], nonzero only at listed neurons
    tiles_used: int
    peak_tile_bytes: int
    peak_by_kind: dict[str, int]  # of the fullest tile
    tile_peaks: list[int]
    exchange_bytes_forward: int
    exchange_bytes_backward: int
    supersteps: int


def hold_list(tile: Tile, name: str, ids: Tensor, counts: Tensor, kind: str = "spike_lists") -> tuple[Tensor, Tensor]:
    """The broadcast copy of a spike list this tile receives; its bytes are what the exchange moved."""
    return (tile.hold_tensor(f"{name}_ids", kind, ids.clone()),
            tile.hold_tensor(f"{name}_counts", kind, counts.clone()))


def release_list(tile: Tile, name: str) -> None:
    tile.release(f"{name}_ids", f"{name}_counts")


def _list_on_tile(tile: Tile, spikes: SparseSpikes, counts: Tensor) -> tuple[Tensor, Tensor]:
    return hold_list(tile, "spike", spikes.ids, counts)


@one_thread()
def emulate_spike_matmul(
    spikes: SparseSpikes,
    weight: Tensor,
    grad_out: Tensor | None,
    slices: Sequence[tuple[int, int, int]],
    tile_capacity_bytes: int,
    *,
    needs_grad_input: bool = True,
    reserved_bytes: dict[int, int] | None = None,
    source_tiles: int = 1,
    backend: str = "cpu",
) -> EmulationReport:
    """Run ``spikes @ weight`` (and its backward when grad_out is given) tile by tile.

    Args:
        slices: (tile, col_begin, col_end) per tile: the postsynaptic neurons it owns
            (``PopulationPlan.slices()``).
        reserved_bytes: per tile, bytes already taken by what this matmul does not hold
            (code, neuron state, optimizer); they count towards overflow.
        source_tiles: tiles of the presynaptic population, which receive the summed input gradient.
    """
    batch, capacity = spikes.ids.shape
    n_in, n_out = weight.shape
    if n_in != spikes.n:
        raise ValueError(f"emulate_spike_matmul: weight must have n_in = {spikes.n} rows, got {tuple(weight.shape)}")
    covered = sorted((b, e) for _, b, e in slices)
    if covered[0][0] != 0 or covered[-1][1] != n_out or any(a[1] != b[0] for a, b in zip(covered, covered[1:])):
        raise ValueError(f"emulate_spike_matmul: tile slices must cover columns 0..{n_out} once, got {covered}")
    reserved = reserved_bytes or {}
    tiles = {t: Tile(t, tile_capacity_bytes) for t, _, _ in slices}
    for t, tile in tiles.items():
        if reserved.get(t):
            tile.hold("reserved", "reserved", reserved[t])
    # Persistent: the tile's weight columns (its own copy, as in its SRAM) and their gradient.
    w_tile = {t: tiles[t].hold_tensor("weights", "weights", weight[:, b:e].contiguous()) for t, b, e in slices}
    gw_tile = {}
    if grad_out is not None:
        gw_tile = {t: tiles[t].hold_tensor("weight_grads", "weight_grads", torch.zeros_like(w_tile[t])) for t, _, _ in slices}
    list_bytes = spikes.ids.numel() * spikes.ids.element_size() + spikes.counts.numel() * spikes.counts.element_size()
    ops = torch.ops.ipu_snn

    # --- forward, superstep 1: broadcast the list; each tile sums its columns.
    exchange_fwd = len(slices) * list_bytes
    outs = []
    for t, b, e in slices:
        tile = tiles[t]
        ids, cnt = _list_on_tile(tile, spikes, spikes.counts)
        outs.append(tile.hold_tensor("activations", "activations", ops.spike_matmul_fwd(ids, cnt, w_tile[t], backend)))
        tile.release("spike_ids", "spike_counts", "activations")
    out = torch.cat(outs, dim=1)
    if grad_out is None:
        return _report(tiles, out, None, None, exchange_fwd, 0, supersteps=1)

    # --- backward, superstep 1: the list again; local grad-weight and partial grad-input.
    exchange_bwd = len(slices) * list_bytes
    listed = spikes.listed_counts
    partials = {}
    for t, b, e in slices:
        tile = tiles[t]
        ids, cnt = _list_on_tile(tile, spikes, listed)
        g = tile.hold_tensor("grad_out", "activations", grad_out[:, b:e].contiguous())
        gw_tile[t] += ops.spike_matmul_grad_weight(ids, spikes.counts, g, n_in, backend)
        if needs_grad_input:
            partials[t] = tile.hold_tensor("partial", "grad_partials", ops.spike_matmul_grad_input(ids, cnt, w_tile[t], g, backend))
    grad_weight = torch.cat([gw_tile[t] for t, _, _ in slices], dim=1)

    grad_input = None
    supersteps = 2
    if needs_grad_input:
        values, moved = reduce_scatter(tiles, [t for t, _, _ in slices], partials, batch * capacity)
        exchange_bwd += moved
        # Superstep 3: the summed values are all-gathered to every tile of the presynaptic population
        # (a static exchange cannot route them by id); each owner picks its own neurons' slots.
        exchange_bwd += source_tiles * batch * capacity * weight.element_size()
        supersteps = 4
        grad_input = scatter_values(values.view(batch, capacity), spikes.ids, listed, n_in)
    for tile in tiles.values():
        tile.release("spike_ids", "spike_counts", "grad_out", "partial", "reduce_receive")
    return _report(tiles, out, grad_weight, grad_input, exchange_fwd, exchange_bwd, supersteps)


def reduce_scatter(tiles: dict[int, Tile], order: list[int], partials: dict[int, Tensor], slots: int) -> tuple[Tensor, int]:
    """Sum the tiles' [B, K] partials: tile j receives chunk j of every other tile's partial.

    Chunks are padded to one static size, as an IPU exchange needs. Returns the
    summed flat values [B*K] and the bytes moved.
    """
    n = len(order)
    chunk = math.ceil(slots / n)
    padded = {t: torch.nn.functional.pad(partials[t].reshape(-1), (0, chunk * n - slots)) for t in order}
    summed, moved = [], 0
    for j, t in enumerate(order):
        tile = tiles[t]
        others = [padded[s][j * chunk:(j + 1) * chunk] for s in order if s != t]
        own = padded[t][j * chunk:(j + 1) * chunk]
        if others:
            receive = tile.hold_tensor("reduce_receive", "reduce_receive", torch.stack(others))
            moved += receive.numel() * receive.element_size()
            own = own + receive.sum(0)
        summed.append(own)
    return torch.cat(summed)[:slots], moved


def scatter_values(values: Tensor, ids: Tensor, listed: Tensor, n_in: int) -> Tensor:
    """[B, K] values at the listed ids to a dense [B, n_in] gradient (0 elsewhere)."""
    live = listed_mask(listed, ids.shape[1])
    dense = torch.zeros(ids.shape[0], n_in, dtype=values.dtype)
    return dense.scatter_add_(1, torch.where(live, ids, 0).long(), torch.where(live, values, 0))


def _report(tiles, out, grad_weight, grad_input, exchange_fwd, exchange_bwd, supersteps) -> EmulationReport:
    fullest = max(tiles.values(), key=lambda t: t.peak)
    return EmulationReport(
        out=out, grad_weight=grad_weight, grad_input=grad_input,
        tiles_used=len(tiles), peak_tile_bytes=fullest.peak, peak_by_kind=dict(fullest.peak_by_kind),
        tile_peaks=[t.peak for t in tiles.values()],
        exchange_bytes_forward=exchange_fwd, exchange_bytes_backward=exchange_bwd, supersteps=supersteps,
    )


def emulate_plan_matmul(
    plan: TilePlan, matmul: str, spikes: SparseSpikes, weight: Tensor, grad_out: Tensor | None, *, backend: str = "cpu"
) -> EmulationReport:
    """Emulate the plan's matmul ``"<source>-><population>"`` on the plan's tiles and SRAM size.

    What the plan puts on those tiles besides this matmul (code, neuron state,
    optimizer slots) is reserved first, so overflow is judged on the whole tile.
    """
    m = plan.matmul(matmul)
    if spikes.capacity != m.source.k or spikes.n != m.source.n:
        raise ValueError(f"{matmul}: the plan expects spike lists of n = {m.source.n}, K = {m.source.k}; "
                        f"got n = {spikes.n}, K = {spikes.capacity}")
    reserved = {t.tile: sum(t.bytes_by_kind.get(k, 0) for k in NOT_EMULATED) for t in plan.tiles if t.population == m.population}
    return emulate_spike_matmul(spikes, weight, grad_out, plan.population(m.population).slices(),
                                plan.tile_capacity_bytes, needs_grad_input=m.source.needs_grad_input,
                                reserved_bytes=reserved, source_tiles=plan.population(m.source.name).tiles
                                if m.source.needs_grad_input else 1, backend=backend)


__all__ = ["KEPT_KINDS", "EmulationReport", "Tile", "TileOverflowError", "emulate_plan_matmul", "emulate_spike_matmul", "hold_list", "one_thread", "reduce_scatter", "release_list", "scatter_values"]
