"""The IPU tile model: which neurons and weights sit on which tile, and what each tile holds.

An IPU has no shared memory: every tile (Mk2: 1472 x 624 KiB, Mk1: 1216 x 256 KiB)
computes only on its own SRAM, and data moves between tiles only in the
exchange phase of a bulk-synchronous-parallel (BSP) superstep. So a network
fits an IPU only if every single tile's share fits, and the plan below is a
per-tile account, not a total.

Mapping (neuron-wise, by *postsynaptic* neuron). Each population (every
spiking layer and the leaky-integrator readout) gets a contiguous range of
tiles; a tile owns a contiguous range of that population's neurons and holds
    * the neurons' state (v, z, and a for ALIF), with ``steps`` copies of it
      kept for BPTT;
    * the weight *columns* of those neurons in every matrix feeding them
      (input-to-layer and recurrent): ``W[:, own]``, plus their gradients and
      the optimizer's slots.
The forward matmul is still the gather-add over weight rows of the firing
presynaptic neurons: each tile walks the rows of the neurons in the spike list,
restricted to its own columns (``spikes @ W[:, own]``). Its output is the input
current of exactly the neurons the tile owns, so no partial sums cross tiles.

Why not the other split (a tile owns presynaptic rows, as the first Poplar op
in custom_ops/poplar does)? Then every tile produces a partial of the whole
output, [B, n_out], which must be reduced across tiles, and in the backward
pass every tile needs the whole grad_out [B, n_out] to form its rows' input
gradients and weight gradients. For the seed paper's networks (batch 48, about
1471 outputs per matrix, recurrent: 2942 columns) that is 48 * 2942 * 4 B =
565 KB per tile for one buffer: a single tile's SRAM (624 KiB) is gone
before weights or state. With the column split the only buffers that scale
with a whole layer are spike lists, which are sparse (K ids per sample).

Exchange per time step (bytes that cross tiles):
    forward:  each source's spike list (ids [B, K] + counts [B], int32) is
              broadcast to every tile of each population it feeds (the host's
              input spikes too: they arrive through the exchange as well).
    backward: the spike list of the step is broadcast again (spike lists are
              rebuilt from the neurons' own z history rather than stored, since
              T stored lists per tile would not fit); each tile's partial input
              gradient at the listed slots, values [B, K], is summed over the
              population's tiles by a reduce-scatter (tile j sums chunk j); the
              summed chunks go to the owners of the presynaptic neurons. Weight
              gradients need no exchange: a tile's grad_out columns are its own.
Host inputs need no input gradient, so their matmul skips the reduction.

What is estimated rather than derived: code and vertex state per tile
(``CODE_BYTES``, ``VERTEX_STATE_BYTES``), from typical Poplar code sizes of a
handful of small vertices; they are a fixed cost per tile, so a wrong guess
shifts every tile by the same few KiB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ipu_snn.config import ModelConfig
from ipu_snn.devices import DeviceSpec
from ipu_snn.errors import UserError

KiB = 1024

#: (tiles, SRAM bytes per tile) of each IPU spec in ipu_snn.devices.SPECS (DESIGN.md, Facts).
TILE_GEOMETRY: dict[str, tuple[int, int]] = {
    "ipu-mk2": (1472, 624 * KiB),
    "ipu-mk1": (1216, 256 * KiB),
}
HARDWARE_THREADS_PER_TILE = 6  # worker threads; a tile runs up to 6 vertices at once

#: Estimated code per tile: the spike-matmul, spike-select and neuron-update
#: vertices in float (a few KiB each on the IPU's compact ISA) plus the control
#: program and exchange code of the supersteps that touch the tile.
CODE_BYTES = 24 * KiB
#: Estimated state of one vertex (its field pointers and sizes; Poplar vertex
#: state is tens of bytes, rounded up for the edge lists of the exchange).
VERTEX_STATE_BYTES = 128
INDEX_BYTES = 4  # int32 ids, counts and neuron-index entries
ACC_BYTES = 4  # sums are carried in float (spike_core.h's Acc), whatever the weight type


@dataclass(frozen=True)
class Source:
    """A presynaptic population feeding a matmul: ``n`` neurons, spike lists of capacity ``k``."""

    name: str
    n: int
    k: int
    needs_grad_input: bool  # host inputs need no input gradient


@dataclass(frozen=True)
class Population:
    """Neurons mapped together onto one tile range (a layer, or the readout)."""

    name: str
    neurons: int
    state_vars: int  # per neuron and sample: v, z (spiking), a (ALIF)
    sources: tuple[Source, ...]
    spiking: bool

    @property
    def fan_in(self) -> int:
        return sum(s.n for s in self.sources)

    @property
    def vertices(self) -> int:
        # forward, grad-weight, grad-input per source; a neuron update; a spike select.
        return 3 * len(self.sources) + 1 + int(self.spiking)


@dataclass(frozen=True)
class Sizing:
    """The knobs every per-tile formula needs."""

    batch: int
    dtype_bytes: int
    steps: int
    optimizer_slots: int


@dataclass(frozen=True)
class TileLoad:
    """One tile: the neurons it owns and its bytes by kind (the peak, persistent + max phase)."""

    tile: int
    population: str
    neuron_begin: int
    neuron_end: int
    bytes_by_kind: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_kind.values())


@dataclass(frozen=True)
class MatmulPlan:
    """One spike matmul ``source spikes @ W[:, population]`` over the population's tiles."""

    name: str  # "<source>-><population>"
    source: Source
    population: str
    n_out: int
    tile_begin: int
    tile_end: int
    exchange_bytes_forward: int
    exchange_bytes_backward: int

    @property
    def tiles(self) -> int:
        return self.tile_end - self.tile_begin


@dataclass(frozen=True)
class PopulationPlan:
    population: Population
    tile_begin: int
    tile_end: int

    @property
    def tiles(self) -> int:
        return self.tile_end - self.tile_begin

    def slices(self) -> list[tuple[int, int, int]]:
        """(tile, neuron_begin, neuron_end) for every tile of the range."""
        return [(self.tile_begin + j, b, e) for j, (b, e) in enumerate(split_even(self.population.neurons, self.tiles))]


@dataclass(frozen=True)
class TilePlan:
    device: str
    tiles_total: int
    tile_capacity_bytes: int
    sizing: Sizing
    capacity_fraction: float
    populations: tuple[PopulationPlan, ...]
    matmuls: tuple[MatmulPlan, ...]
    tiles: tuple[TileLoad, ...] = field(repr=False)
    suggestion: str = ""  # filled in for plans that do not fit

    @property
    def used(self) -> int:
        return len(self.tiles)

    @property
    def max_tile_bytes(self) -> int:
        return max((t.total_bytes for t in self.tiles), default=0)

    @property
    def fits(self) -> bool:
        return self.max_tile_bytes <= self.tile_capacity_bytes and self.used <= self.tiles_total

    @property
    def exchange_bytes_forward(self) -> int:
        return sum(m.exchange_bytes_forward for m in self.matmuls)

    @property
    def exchange_bytes_backward(self) -> int:
        return sum(m.exchange_bytes_backward for m in self.matmuls)

    def population(self, name: str) -> PopulationPlan:
        for p in self.populations:
            if p.population.name == name:
                return p
        raise UserError(f"tile plan has no population {name!r}; it has {[p.population.name for p in self.populations]}")

    def matmul(self, name: str) -> MatmulPlan:
        for m in self.matmuls:
            if m.name == name:
                return m
        raise UserError(f"tile plan has no matmul {name!r}; it has {[m.name for m in self.matmuls]}")

    def fullest_tile(self) -> TileLoad:
        return max(self.tiles, key=lambda t: t.total_bytes)

    def refusal(self) -> str:
        """Empty when the plan fits; otherwise what overflows and what would fit."""
        if self.fits:
            return ""
        full = self.fullest_tile()
        kinds = ", ".join(f"{k} {v / KiB:.0f}" for k, v in sorted(full.bytes_by_kind.items(), key=lambda kv: -kv[1]) if v)
        return (
            f"The network does not fit one {self.device}: tile {full.tile} ({full.population}, neurons "
            f"{full.neuron_begin}-{full.neuron_end - 1}) needs {full.total_bytes / KiB:.0f} KiB of its "
            f"{self.tile_capacity_bytes / KiB:.0f} KiB SRAM (KiB by kind: {kinds}). {self.suggestion}"
        )


# ----------------------------------------------------------------------------- pure helpers


def tile_geometry(spec: DeviceSpec) -> tuple[int, int]:
    """(tiles, bytes per tile) of an IPU spec; other devices have no tiles."""
    if spec.name not in TILE_GEOMETRY:
        raise UserError(f"tile planning needs an IPU spec ({', '.join(TILE_GEOMETRY)}), got {spec.name!r}")
    tiles, tile_bytes = TILE_GEOMETRY[spec.name]
    if tiles * tile_bytes != spec.local_bytes:
        raise UserError(f"{spec.name}: spec local_bytes {spec.local_bytes} is not {tiles} tiles x {tile_bytes} B")
    return tiles, tile_bytes


def split_even(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [begin, end) ranges of n items over parts, sizes differing by at most one."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for j in range(parts):
        end = start + base + (1 if j < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def spike_capacity(n: int, fraction: float) -> int:
    """K for a population of n neurons: the same rounding the model uses (at least 1)."""
    return max(1, math.ceil(fraction * n))


def populations_of(model_cfg: ModelConfig, n_inputs: int, n_classes: int, capacity_fraction: float) -> tuple[Population, ...]:
    """The network as populations, each with the sources feeding it."""
    pops: list[Population] = []
    prev = Source("input", n_inputs, spike_capacity(n_inputs, capacity_fraction), needs_grad_input=False)
    for i, layer in enumerate(model_cfg.layers):
        name = f"layer{i}"
        own = Source(name, layer.size, spike_capacity(layer.size, capacity_fraction), needs_grad_input=True)
        recurrent = layer.type == "rlif" or (layer.type == "alif" and layer.recurrent)
        sources = (prev, own) if recurrent else (prev,)
        pops.append(Population(name, layer.size, 3 if layer.type == "alif" else 2, sources, spiking=True))
        prev = own
    pops.append(Population("readout", n_classes, 1, (prev,), spiking=False))
    return tuple(pops)


def list_bytes(source: Source, batch: int) -> int:
    """One spike list: ids [B, K] and counts [B], int32."""
    return batch * (source.k + 1) * INDEX_BYTES


def index_bytes(source: Source, batch: int, with_slots: bool) -> int:
    """spike_core.h's neuron index: offsets [n + 1], samples [B*K] and, for grad-input, slots [B*K]."""
    return ((source.n + 1) + batch * source.k * (2 if with_slots else 1)) * INDEX_BYTES


def reduce_chunk(source: Source, batch: int, tiles: int) -> int:
    """Slots of the [B, K] input-gradient partial one tile sums in the reduce-scatter."""
    return math.ceil(batch * source.k / tiles)


def grad_input_bytes(source: Source, batch: int, tiles: int, dtype_bytes: int) -> tuple[int, int]:
    """(partial, receive buffer) of one source's input gradient on one tile."""
    if not source.needs_grad_input:
        return 0, 0
    partial = batch * source.k * dtype_bytes
    receive = reduce_chunk(source, batch, tiles) * (tiles - 1) * dtype_bytes
    return partial, receive


def tile_bytes(pop: Population, neurons: int, tiles: int, s: Sizing) -> dict[str, int]:
    """Peak bytes of one tile owning ``neurons`` of ``pop`` (range of ``tiles``), by kind.

    Persistent kinds (weights, gradients, optimizer, state, code) plus the larger
    of the forward and backward phase's buffers: the two phases never overlap.
    """
    weights = pop.fan_in * neurons * s.dtype_bytes
    b = s.batch
    lists = sum(list_bytes(src, b) for src in pop.sources)
    # Sources are processed one after another within a phase; scratch is reused.
    fwd = {"spike_lists": lists,
           "index": max(index_bytes(src, b, False) for src in pop.sources),
           "activations": neurons * b * ACC_BYTES}
    bwd_per_source = [(index_bytes(src, b, True), *grad_input_bytes(src, b, tiles, s.dtype_bytes)) for src in pop.sources]
    index, partial, receive = max(bwd_per_source, key=sum)
    bwd = {"spike_lists": lists, "index": index, "activations": neurons * b * s.dtype_bytes,
           "grad_partials": partial, "reduce_receive": receive}
    phase = fwd if sum(fwd.values()) >= sum(bwd.values()) else bwd
    out = {"weights": weights, "weight_grads": weights, "optimizer": weights * s.optimizer_slots,
           "state": neurons * b * pop.state_vars * s.dtype_bytes * max(1, s.steps),
           "code": CODE_BYTES + VERTEX_STATE_BYTES * pop.vertices,
           "spike_lists": 0, "index": 0, "activations": 0, "grad_partials": 0, "reduce_receive": 0}
    out.update(phase)
    return out


def matmul_exchange(source: Source, tiles: int, batch: int, dtype_bytes: int) -> tuple[int, int]:
    """(forward, backward) bytes crossing tiles per time step for one matmul; see the module docstring."""
    broadcast = tiles * list_bytes(source, batch)
    backward = broadcast
    if source.needs_grad_input and tiles > 1:
        backward += tiles * reduce_chunk(source, batch, tiles) * (tiles - 1) * dtype_bytes  # reduce-scatter
    if source.needs_grad_input:
        backward += batch * source.k * dtype_bytes  # summed slots to the presynaptic owners
    return broadcast, backward


def persistent_weight(pop: Population, s: Sizing) -> int:
    """Bytes per neuron that do not depend on the tile count: what tiles are shared out by."""
    return pop.fan_in * s.dtype_bytes * (2 + s.optimizer_slots) + s.batch * pop.state_vars * s.dtype_bytes * max(1, s.steps)


def allocate_tiles(pops: tuple[Population, ...], n_tiles: int, s: Sizing) -> list[int] | None:
    """Tiles per population in proportion to its persistent bytes (largest remainder), >= 1, <= neurons.

    None when there are more populations than tiles.
    """
    if len(pops) > n_tiles:
        return None
    weight = [p.neurons * persistent_weight(p, s) for p in pops]
    total = sum(weight)
    share = [w * n_tiles / total for w in weight]
    counts = [min(p.neurons, max(1, int(x))) for p, x in zip(pops, share)]
    # Hand the tiles rounding left over to the largest remainders, never past one tile per neuron.
    order = sorted(range(len(pops)), key=lambda i: share[i] - int(share[i]), reverse=True)
    while sum(counts) < n_tiles:
        grown = False
        for i in order:
            if sum(counts) < n_tiles and counts[i] < pops[i].neurons:
                counts[i] += 1
                grown = True
        if not grown:
            break
    while sum(counts) > n_tiles:  # the max(1, .) floor can overshoot by a few
        i = max(range(len(pops)), key=lambda j: counts[j])
        counts[i] -= 1
    return counts


def _max_tile_bytes(pops: tuple[Population, ...], counts: list[int], s: Sizing) -> int:
    return max(sum(tile_bytes(p, math.ceil(p.neurons / c), c, s).values()) for p, c in zip(pops, counts))


def _fits(pops, n_tiles: int, tile_capacity: int, s: Sizing) -> bool:
    counts = allocate_tiles(pops, n_tiles, s)
    return counts is not None and _max_tile_bytes(pops, counts, s) <= tile_capacity


# ----------------------------------------------------------------------------- planning


def plan_tiles(
    model_cfg: ModelConfig,
    n_inputs: int,
    n_classes: int,
    batch: int,
    spec: DeviceSpec,
    capacity_fraction: float = 0.25,
    dtype_bytes: int = 4,
    *,
    steps: int = 1,
    optimizer_slots: int = 2,
) -> TilePlan:
    """Map a network onto one IPU's tiles and account every tile's bytes.

    ``steps``: time steps whose neuron state stays on the tiles for BPTT (1: only
    the live state); ``optimizer_slots``: per-weight optimizer buffers (Adam: 2).
    """
    if batch < 1 or n_inputs < 1 or n_classes < 1:
        raise UserError(f"plan_tiles: batch, n_inputs and n_classes must be >= 1, got {batch}, {n_inputs}, {n_classes}")
    n_tiles, tile_capacity = tile_geometry(spec)
    s = Sizing(batch, dtype_bytes, steps, optimizer_slots)
    pops = populations_of(model_cfg, n_inputs, n_classes, capacity_fraction)
    counts = allocate_tiles(pops, n_tiles, s)
    if counts is None:
        raise UserError(f"{spec.name}: {len(pops)} populations need at least as many tiles, it has {n_tiles}")
    pop_plans, loads, matmuls, begin = [], [], [], 0
    for pop, c in zip(pops, counts):
        plan = PopulationPlan(pop, begin, begin + c)
        pop_plans.append(plan)
        for tile, nb, ne in plan.slices():
            loads.append(TileLoad(tile, pop.name, nb, ne, tile_bytes(pop, ne - nb, c, s)))
        for src in pop.sources:
            fwd, bwd = matmul_exchange(src, c, batch, dtype_bytes)
            matmuls.append(MatmulPlan(f"{src.name}->{pop.name}", src, pop.name, pop.neurons, begin, begin + c, fwd, bwd))
        begin += c
    plan = TilePlan(spec.name, n_tiles, tile_capacity, s, capacity_fraction, tuple(pop_plans), tuple(matmuls), tuple(loads))
    if not plan.fits:
        plan = replace(plan, suggestion=_suggest(pops, model_cfg, n_inputs, n_classes, n_tiles, tile_capacity, s, capacity_fraction))
    return plan


def _suggest(pops, model_cfg, n_inputs, n_classes, n_tiles, tile_capacity, s: Sizing, capacity_fraction) -> str:
    """What would fit: a smaller batch, smaller layers, or more IPUs (each found by search)."""
    options = []
    best_batch = _largest(lambda b: _fits(pops, n_tiles, tile_capacity, replace(s, batch=b)), s.batch - 1)
    if best_batch:
        options.append(f"batch <= {best_batch}")
    sizes = [layer.size for layer in model_cfg.layers]
    biggest = max(sizes)

    def scaled(m: int):
        # Every layer shrunk by the same factor m / biggest, so the widest layer has m neurons.
        layers = [layer.model_copy(update={"size": max(1, size * m // biggest)}) for layer, size in zip(model_cfg.layers, sizes)]
        return populations_of(model_cfg.model_copy(update={"layers": layers}), n_inputs, n_classes, capacity_fraction)

    best = _largest(lambda m: _fits(scaled(m), n_tiles, tile_capacity, s), biggest - 1)
    if best:
        options.append("layers of " + ", ".join(str(max(1, n * best // biggest)) for n in sizes) + " neurons")
    ipus = next((k for k in range(2, 65) if _fits(pops, n_tiles * k, tile_capacity, s)), None)
    if ipus:
        # Across IPUs the exchange runs over IPU-Links: this counts memory only, not their slower bandwidth.
        options.append(f"{ipus} IPUs (memory only; the exchange then crosses IPU-Links)")
    if not options:
        # With one neuron per tile a neuron's whole fan-in column (weights, gradients, optimizer) must fit one tile.
        return "Nothing tried fits (batch 1, layers of 1 neuron, up to 64 IPUs): lower the spike capacity, steps or inputs."
    return "Would fit with any one of: " + "; ".join(options) + "."


def _largest(fits, high: int) -> int:
    """Largest x in [1, high] with fits(x), assuming fits is monotone; 0 if none."""
    if high < 1 or not fits(1):
        return 0
    lo, hi = 1, high
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def tiles_json(plan: TilePlan) -> dict:
    """The plan as JSON-ready data (``ipu-snn plan --device ipu-mk2 --json`` puts it under "tiles")."""
    full = plan.fullest_tile()
    pops = []
    for p in plan.populations:
        per_tile = [e - b for _, b, e in p.slices()]
        loads = [t for t in plan.tiles if t.population == p.population.name]
        pops.append({
            "name": p.population.name, "neurons": p.population.neurons,
            "tile_begin": p.tile_begin, "tile_end": p.tile_end,
            "neurons_per_tile": [min(per_tile), max(per_tile)],
            "max_tile_bytes": max(t.total_bytes for t in loads),
        })
    return {
        "device": plan.device,
        "tiles_total": plan.tiles_total,
        "used": plan.used,
        "max_tile_bytes": plan.max_tile_bytes,
        "tile_capacity_bytes": plan.tile_capacity_bytes,
        "fits": plan.fits,
        "fullest_tile": {"tile": full.tile, "population": full.population, "bytes_by_kind": dict(full.bytes_by_kind)},
        "exchange_bytes_forward": plan.exchange_bytes_forward,
        "exchange_bytes_backward": plan.exchange_bytes_backward,
        "populations": pops,
        "matmuls": [{"name": m.name, "tile_begin": m.tile_begin, "tile_end": m.tile_end,
                     "exchange_bytes_forward": m.exchange_bytes_forward,
                     "exchange_bytes_backward": m.exchange_bytes_backward} for m in plan.matmuls],
        "assumptions": {"mapping": "postsynaptic neurons (weight columns) per tile", "batch": plan.sizing.batch,
                        "steps_stored": plan.sizing.steps, "dtype_bytes": plan.sizing.dtype_bytes,
                        "optimizer_slots": plan.sizing.optimizer_slots, "capacity_fraction": plan.capacity_fraction,
                        "code_bytes_estimate": CODE_BYTES, "vertex_state_bytes_estimate": VERTEX_STATE_BYTES},
        "refusal": plan.refusal() or None,
    }
