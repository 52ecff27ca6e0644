"""The IPU tile model: which neurons and weights sit on which tile, and what each tile holds.

An IPU has no shared memory: every tile (Mk2: 1472 x 624 KiB, Mk1: 1216 x 256 KiB)
computes only on its own SRAM, and data moves between tiles only in the
exchange phase of a bulk-synchronous-parallel (BSP) superstep. So a network
fits an IPU only if every single tile's share fits, and the plan below is a
per-tile account, not a total.

Mapping (neuron-wise, by *postsynaptic* neuron). Each population (every
spiking layer and the leaky-integrator readout) gets a contiguous range of
tiles; a tile owns a contiguous range of that population's neurons and holds
    * the weight *columns* of those neurons in every matrix feeding them
      (input-to-layer and recurrent): ``W[:, own]``, their bias and decays
      (beta, and rho for ALIF), the gradients of what is trained and the
      optimizer's slots;
    * the neurons' live state: v, and a for ALIF (in the backward pass their
      gradients, grad_v and grad_a, take the same space; a schedule that
      recomputes needs both at once: the adjoint is carried while a window is
      recomputed);
    * what the BPTT schedule keeps on the tiles (below, "Time on the tiles").
The forward matmul is still the gather-add over weight rows of the firing
presynaptic neurons: each tile walks the rows of the neurons in the spike list,
restricted to its own columns (``spikes @ W[:, own]``). Its output is the input
current of exactly the neurons the tile owns, so no partial sums cross tiles.
The vertices walk the lists sample by sample (custom_ops/poplar/spike_codelets.cpp
calls spike_core.h's ``forward_samples``, ``grad_weight_samples``,
``grad_input_positions``): they build no neuron index, so none is counted.

Why not the other split (a tile owns presynaptic rows, as the first Poplar op
in custom_ops/poplar does)? Then every tile produces a partial of the whole
output, [B, n_out], which must be reduced across tiles, and in the backward
pass every tile needs the whole grad_out [B, n_out] to form its rows' input
gradients and weight gradients. For the seed paper's networks (batch 48, about
1471 outputs per matrix, recurrent: 2942 columns) that is 48 * 2942 * 4 B =
565 KB per tile for one buffer: a single tile's SRAM (624 KiB) is gone
before weights or state. With the column split the only buffers that scale
with a whole layer are spike lists, which are sparse (K ids per sample).

Time on the tiles. The time loop is the executor's (ipu_snn.executor): T steps
in windows of L, under a BPTT schedule over the windows (ipu_snn.bptt), as data
(`TimeOnTiles`). What the schedule keeps in the local tier lives on the tiles:
    * a taped window keeps, per step, the spikes z as bits and the surrogate
      derivative d (``surrogate_bytes`` each), in the layout of the fused
      neuron kernels (uint8 [B, ceil(n/8)] bits per tile, d [B, n]); with a
      detached reset that is all the backward of a step needs (see
      ipu_snn.neuron.ops); learned decays add the pre-step state (v_prev, and
      a_prev for ALIF), since d v / d beta = v_prev. A recurrent population's
      window also keeps the bits of the spikes it started from (its first
      step's recurrent input). The readout keeps nothing per step (its trace
      goes to the host), unless its decay is learned;
    * a local checkpoint (a window boundary) keeps v (and a), and the last
      spikes as bits where the population feeds itself.
A tile's peak is the largest, over the schedule's actions, of its local
checkpoints plus its taped windows (`TimeOnTiles.residency`, from
``bptt.summarize``'s profile). Checkpoints in the off-chip tier go to the
IPU's streaming memory: they take no tile memory, are counted in bytes
(``TilePlan.streaming_bytes``) and cost their transfers at the streaming
bandwidth. ``store_all`` is one window of T, every step taped.

Streaming memory. In an IPU-M2000 the streaming memory is DRAM beside the IPUs,
reached over the IPU's PCIe Gen4 x16 link (64 GB/s both ways, 32 GB/s each way)
and the IPU-Gateway; the transfer time uses the device spec's
``offchip_bandwidth`` (ipu_snn.devices; the public sources are listed in
ipu_snn/ipu/README.md, "Streaming memory"). It is the link's peak, so the
streaming time is a lower bound.

Time model (`TilePlan.predicted_seconds`): a model, not a measurement. A time
step is a BSP superstep sequence that lasts as long as its busiest tile: the
dense-equivalent fp32 work of the tile's columns (2 B fan_in flops per owned
neuron; sparsity would only shorten it) at 1/tiles of the IPU's fp32 rate,
and at least the spec's ``step_floor_s``; a reversed step costs two forward
steps. The schedule's window counts (recomputation included) multiply these;
checkpoint transfers add their bytes at the streaming bandwidth, sequentially
(no overlap); the optimizer adds 4 passes over the fullest tile's parameters
at its share of the SRAM bandwidth. Exchange time and sync beyond the floor are
not modelled.

Sample passes. Everything sized by a spike list (the lists, the input-gradient
partials and the reduce and gather buffers) is processed a pass of ``chunk``
samples at a time, so it is sized by the pass, not the batch; the per-neuron
buffers [B, n] hold the whole batch, since the passes accumulate into them. A
population's pass is the whole batch where its tiles fit, else the most samples
that fit (more supersteps, same bytes moved).

Spike selection. A population's spike list of a step is built per sample, as
the SpikeSelect vertex does: sample b is selected on the population's tile
``b mod tiles``, which receives every owner tile's z bits of that sample
(ceil(n_own / 8) bytes from each) and compacts them into ids [K] and a count.

Exchange per time step (bytes that cross tiles):
    forward:  the select gather (z bits to the selecting tiles); each source's
              spike list (ids [B, K] + counts [B], int32) broadcast to every
              tile of each population it feeds (the host's input spikes too:
              they arrive through the exchange as well).
    backward: the spike lists of the step are rebuilt from the z bits history
              (select gather again; T stored lists per tile would not fit) and
              broadcast again, to the consuming tiles and to the population's
              own tiles (which need the ids to take the gradient of their own
              spikes); each consuming tile's partial input gradient at the
              listed slots, values [B, K], is summed over the population's
              tiles by a reduce-scatter (tile j sums chunk j), and the summed
              values are all-gathered to every tile of the presynaptic
              population: an IPU exchange is compiled statically, so values
              cannot be routed by the (data-dependent) ids; each owner picks
              the slots of its own neurons. Weight gradients need no exchange:
              a tile's grad_out columns are its own.
Host inputs need no input gradient, so their matmul skips the reduction.

What is estimated rather than derived: code and vertex state per tile
(``CODE_BYTES``, ``VERTEX_STATE_BYTES``), from typical Poplar code sizes of a
handful of small vertices; they are a fixed cost per tile, so a wrong guess
shifts every tile by the same few KiB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Callable

from ipu_snn.bptt import Advance, Schedule, Summary, store_all, summarize
from ipu_snn.config import ModelConfig
from ipu_snn.devices import DeviceSpec
from ipu_snn.errors import UserError

KiB = 1024

#: (tiles, SRAM bytes per tile) of each IPU spec in ipu_snn.devices.SPECS (Graphcore data sheets; docs/workloads.md).
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
INDEX_BYTES = 4  # int32 ids and counts
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
    sources: tuple[Source, ...]
    spiking: bool
    live_vars: int  # state per neuron and sample held once: v, and a for ALIF
    saved_vars: int  # floats per neuron-step kept besides z and d: v_prev (a_prev) for learned decays
    decays: int  # decay parameters per neuron: beta, and rho for ALIF
    learn_decay: bool
    own: Source | None = None  # the population's own spike list (None for the readout)

    @property
    def fan_in(self) -> int:
        return sum(s.n for s in self.sources)

    @property
    def recurrent(self) -> bool:
        """Feeds itself: its checkpoints and taped windows keep the spikes a window starts from."""
        return self.own is not None and self.own in self.sources

    @property
    def params_per_neuron(self) -> int:
        """Weight rows, bias and decays: what a tile holds per owned neuron."""
        return self.fan_in + 1 + self.decays

    @property
    def trained_per_neuron(self) -> int:
        """The parameters per neuron that have a gradient and optimizer slots."""
        return self.fan_in + 1 + (self.decays if self.learn_decay else 0)

    @property
    def vertices(self) -> int:
        # forward, grad-weight, grad-input per source; a neuron update; a spike select.
        return 3 * len(self.sources) + 1 + int(self.spiking)


@dataclass(frozen=True)
class TimeOnTiles:
    """The executor's time loop as the tiles see it: ``steps`` (T) in windows of ``window`` (L) steps,
    under ``schedule`` over the windows (see the module docstring, "Time on the tiles")."""

    steps: int
    window: int
    schedule: Schedule

    @classmethod
    def of(cls, steps: int, window: int, factory: Callable[[int], Schedule] | None = None) -> "TimeOnTiles":
        """Windows of ``window`` steps (the last one shorter if T is not a multiple) under
        ``factory(windows)``; None: store_all over the windows, every window taped."""
        if steps < 1 or window < 1:
            raise ValueError(f"the time loop needs T >= 1 and a window >= 1, got T={steps}, window {window}")
        window = min(window, steps)
        windows = -(-steps // window)
        schedule = store_all(windows) if factory is None else factory(windows)
        if schedule.T != windows:
            raise ValueError(f"schedule {schedule.name} is for {schedule.T} windows, the time loop has {windows}")
        return cls(steps, window, schedule)

    @classmethod
    def store_all(cls, steps: int) -> "TimeOnTiles":
        """Every step taped in one window of T: the whole history on the tiles."""
        return cls.of(steps, steps)

    @property
    def windows(self) -> int:
        return self.schedule.T

    @property
    def name(self) -> str:
        return self.schedule.name

    @cached_property
    def summary(self) -> Summary:
        return summarize(self.schedule)

    @cached_property
    def residency(self) -> tuple[tuple[int, int], ...]:
        """(local checkpoints, taped windows) at every action where a tile's peak can be: the Pareto
        front of the schedule's profile (a point another one matches or exceeds in both is dropped)."""
        points = sorted(set(self.summary.profile), reverse=True)
        front, most_taped = [], -1
        for checkpoints, taped in points:
            if taped > most_taped:
                front.append((checkpoints, taped))
                most_taped = taped
        return tuple(front)

    @property
    def recomputes(self) -> bool:
        """Some window is run again in backward: the live state and its adjoint are held together."""
        return self.summary.evaluations > self.summary.taped

    @property
    def offchip_slots(self) -> int:
        return self.schedule.max_offchip_slots

    @property
    def offchip_transfers(self) -> int:
        """Checkpoints written to and read from the off-chip tier."""
        return self.summary.stores["offchip"] + self.summary.loads["offchip"]

    @cached_property
    def evaluated_steps(self) -> int:
        """Time steps run forward, recomputation included (taped or not)."""
        total = 0
        for a in self.schedule.actions:
            if isinstance(a, Advance):
                total += min(a.n1 * self.window, self.steps) - a.n0 * self.window
        return total


@dataclass(frozen=True)
class Sizing:
    """The knobs every per-tile formula needs."""

    batch: int
    dtype_bytes: int
    time: TimeOnTiles  # what BPTT keeps on the tiles, and what it sends to streaming memory
    optimizer_slots: int
    surrogate_bytes: int  # dtype of the stored surrogate derivative d


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
    #: samples per pass of the list phases: the whole batch where it fits, else the most that fit
    chunk: int
    #: the population's own exchange per step (spike select; in backward also its own list to its tiles)
    exchange_bytes_forward: int = 0
    exchange_bytes_backward: int = 0

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
    spec: DeviceSpec = field(repr=False)  # rates and streaming memory of the device
    suggestion: str = ""  # filled in for plans that do not fit

    @property
    def used(self) -> int:
        return len(self.tiles)

    @property
    def time(self) -> TimeOnTiles:
        return self.sizing.time

    @property
    def max_tile_bytes(self) -> int:
        return max((t.total_bytes for t in self.tiles), default=0)

    @property
    def fits(self) -> bool:
        return (self.max_tile_bytes <= self.tile_capacity_bytes and self.used <= self.tiles_total
                and self.streaming_bytes <= self.spec.offchip_bytes)

    def checkpoint_bytes(self, population: str | None = None) -> int:
        """One window-boundary checkpoint of every tile (of ``population``'s tiles only, if given)."""
        pops = self.populations if population is None else (self.population(population),)
        return sum(checkpoint_bytes(p.population, e - b, self.sizing) for p in pops for _, b, e in p.slices())

    def streaming_bytes_of(self, population: str | None = None) -> int:
        """Peak bytes of off-chip checkpoints in streaming memory (of ``population``'s tiles, if given)."""
        return self.time.offchip_slots * self.checkpoint_bytes(population)

    @property
    def streaming_bytes(self) -> int:
        return self.streaming_bytes_of()

    @property
    def streaming_transfer_bytes(self) -> int:
        """Bytes moved between the tiles and streaming memory in one iteration (stores and loads)."""
        return self.time.offchip_transfers * self.checkpoint_bytes()

    def predicted_seconds(self) -> dict[str, float]:
        """One training iteration under the module docstring's time model, by part, and the total."""
        return iteration_seconds(self)

    @property
    def exchange_bytes_forward(self) -> int:
        return sum(m.exchange_bytes_forward for m in self.matmuls) + sum(p.exchange_bytes_forward for p in self.populations)

    @property
    def exchange_bytes_backward(self) -> int:
        return sum(m.exchange_bytes_backward for m in self.matmuls) + sum(p.exchange_bytes_backward for p in self.populations)

    def population(self, name: str) -> PopulationPlan:
        for p in self.populations:
            if p.population.name == name:
                return p
        raise ValueError(f"tile plan has no population {name!r}; it has {[p.population.name for p in self.populations]}")

    def matmul(self, name: str) -> MatmulPlan:
        for m in self.matmuls:
            if m.name == name:
                return m
        raise ValueError(f"tile plan has no matmul {name!r}; it has {[m.name for m in self.matmuls]}")

    def matmuls_into(self, population: str) -> list[MatmulPlan]:
        return [m for m in self.matmuls if m.population == population]

    def loads_of(self, population: str) -> list[TileLoad]:
        return [t for t in self.tiles if t.population == population]

    def fullest_tile(self) -> TileLoad:
        return max(self.tiles, key=lambda t: t.total_bytes)

    def refusal(self) -> str:
        """Empty when the plan fits; otherwise what overflows and what would fit."""
        if self.fits:
            return ""
        if self.max_tile_bytes <= self.tile_capacity_bytes and self.used <= self.tiles_total:
            return (f"The off-chip checkpoints need {self.streaming_bytes / 2**30:.1f} GiB of streaming memory, "
                    f"more than the {self.spec.offchip_bytes / 2**30:.0f} GiB of one {self.device}: use fewer "
                    "off-chip checkpoints (bptt.offchip_every larger) or a shorter T.")
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
        raise ValueError(f"tile planning needs an IPU spec ({', '.join(TILE_GEOMETRY)}), got {spec.name!r}")
    tiles, tile_bytes = TILE_GEOMETRY[spec.name]
    if tiles * tile_bytes != spec.local_bytes:
        raise ValueError(f"{spec.name}: spec local_bytes {spec.local_bytes} is not {tiles} tiles x {tile_bytes} B")
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


def packed_bytes(n: int) -> int:
    """Bytes of n spikes as bits (uint8, bit j % 8 of byte j // 8)."""
    return (n + 7) // 8


def populations_of(model_cfg: ModelConfig, n_inputs: int, n_classes: int, capacity_fraction: float) -> tuple[Population, ...]:
    """The network as populations, each with the sources feeding it."""
    pops: list[Population] = []
    prev = Source("input", n_inputs, spike_capacity(n_inputs, capacity_fraction), needs_grad_input=False)
    for i, layer in enumerate(model_cfg.layers):
        name = f"layer{i}"
        own = Source(name, layer.size, spike_capacity(layer.size, capacity_fraction), needs_grad_input=True)
        sources = (prev, own) if layer.is_recurrent else (prev,)
        live = layer.neuron.n_state  # the model's state variables, each with its decay
        pops.append(Population(name, layer.size, sources, spiking=True, live_vars=live,
                               saved_vars=live if layer.learn_decay else 0, decays=live,
                               learn_decay=layer.learn_decay, own=own))
        prev = own
    readout = model_cfg.readout
    pops.append(Population("readout", n_classes, (prev,), spiking=False, live_vars=1,
                           saved_vars=1 if readout.learn_decay else 0, decays=1, learn_decay=readout.learn_decay))
    return tuple(pops)


def list_bytes(source: Source, batch: int) -> int:
    """One spike list: ids [B, K] and counts [B], int32."""
    return batch * (source.k + 1) * INDEX_BYTES


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


def selected_samples(batch: int, tiles: int, j: int) -> int:
    """How many samples' spike lists the population's j-th tile selects (sample b on tile b mod tiles)."""
    return len(range(j, batch, tiles))


@lru_cache(maxsize=4096)
def owners_bits(neurons: int, tiles: int) -> int:
    """Bytes of one sample's spikes as bits, packed tile by tile over the owners of ``neurons``."""
    return sum(packed_bytes(e - b) for b, e in split_even(neurons, tiles))


def select_bytes(pop: Population, tiles: int, samples: int) -> int:
    """A selecting tile's buffers: every owner's z bits of its samples, and their list rows."""
    if not pop.spiking or samples == 0:
        return 0
    return samples * (owners_bits(pop.neurons, tiles) + (pop.own.k + 1) * INDEX_BYTES)


def history_bytes_per_step(pop: Population, neurons: int, s: Sizing) -> int:
    """What one stored step keeps for the backward on a tile owning ``neurons``."""
    b = s.batch
    spikes = b * packed_bytes(neurons) + b * neurons * s.surrogate_bytes if pop.spiking else 0
    return spikes + b * neurons * pop.saved_vars * s.dtype_bytes


def start_bits(pop: Population, neurons: int, s: Sizing) -> int:
    """The spikes a window starts from, as bits: the recurrent input of its first step."""
    return s.batch * packed_bytes(neurons) if pop.recurrent else 0


def window_bytes(pop: Population, neurons: int, s: Sizing) -> int:
    """What one taped window keeps on a tile: L steps of history and the spikes it started from."""
    return history_bytes_per_step(pop, neurons, s) * s.time.window + start_bits(pop, neurons, s)


def checkpoint_bytes(pop: Population, neurons: int, s: Sizing) -> int:
    """One window-boundary checkpoint of a tile's neurons: v (and a), and the last spikes as bits where
    the population feeds itself."""
    return s.batch * neurons * pop.live_vars * s.dtype_bytes + start_bits(pop, neurons, s)


def residency_bytes(pop: Population, neurons: int, s: Sizing) -> tuple[int, int]:
    """(local checkpoints, taped windows) in bytes at the tile's peak over the schedule."""
    ckpt, win = checkpoint_bytes(pop, neurons, s), window_bytes(pop, neurons, s)
    checkpoints, taped = max(s.time.residency, key=lambda p: p[0] * ckpt + p[1] * win)
    return checkpoints * ckpt, taped * win


def chunk_sizes(batch: int, chunk: int) -> list[int]:
    """Samples per pass when the list phases walk the batch ``chunk`` samples at a time."""
    full, rest = divmod(batch, chunk)
    return [chunk] * full + ([rest] if rest else [])


def tile_bytes(pop: Population, neurons: int, tiles: int, s: Sizing, samples_selected: int = 0,
               chunk: int | None = None) -> dict[str, int]:
    """Peak bytes of one tile owning ``neurons`` of ``pop`` (range of ``tiles``), by kind.

    Persistent kinds (parameters, gradients, optimizer, live state, code), what
    the schedule keeps on the tile at its peak (taped windows as "history",
    local checkpoints as "checkpoints"), plus the largest phase's buffers: the
    forward, the backward and, where the schedule recomputes, the forward run
    again in backward, which also holds the carried gradient of the spikes the
    window started from. ``samples_selected``: samples whose spike list this
    tile builds. ``chunk``: samples per pass of the list phases (default: the
    whole batch); everything sized by a spike list (lists, partials, reduce and
    gather buffers) is sized by it, while the per-neuron buffers [B, n] hold the
    whole batch, since passes accumulate into them.
    """
    b = s.batch
    c = b if chunk is None else min(chunk, b)
    lists = sum(list_bytes(src, c) for src in pop.sources)
    select = select_bytes(pop, tiles, samples_selected)
    # Sources are processed one after another within a phase; scratch is reused.
    fwd = {"spike_lists": lists, "activations": neurons * b * ACC_BYTES, "select": select}
    partial, receive = max((grad_input_bytes(src, c, tiles, s.dtype_bytes) for src in pop.sources), key=sum)
    # grad_out (the neurons' input-current gradient) and, for spiking neurons, the gradient
    # of their spikes, gathered from their consumers' summed values at their own list's slots.
    gathered = c * pop.own.k * s.dtype_bytes + list_bytes(pop.own, c) if pop.spiking else 0
    spike_grad = neurons * b * s.dtype_bytes if pop.spiking else 0
    bwd = {"spike_lists": lists, "activations": neurons * b * s.dtype_bytes + spike_grad,
           "grad_partials": partial, "reduce_receive": receive, "grad_gather": gathered, "select": select}
    phases = [fwd, bwd]
    if s.time.recomputes:
        phases.append(fwd | {"activations": fwd["activations"] + spike_grad})
    phase = max(phases, key=lambda p: sum(p.values()))
    trained = pop.trained_per_neuron * neurons * s.dtype_bytes
    checkpoints, history = residency_bytes(pop, neurons, s)
    out = {"weights": pop.params_per_neuron * neurons * s.dtype_bytes, "weight_grads": trained,
           "optimizer": trained * s.optimizer_slots,
           "state": neurons * b * pop.live_vars * s.dtype_bytes * (2 if s.time.recomputes else 1),
           "history": history, "checkpoints": checkpoints,
           "code": CODE_BYTES + VERTEX_STATE_BYTES * pop.vertices,
           "spike_lists": 0, "activations": 0, "grad_partials": 0, "reduce_receive": 0,
           "grad_gather": 0, "select": 0}
    out.update(phase)
    return out


def matmul_exchange(source: Source, tiles: int, source_tiles: int, batch: int, dtype_bytes: int,
                    chunk: int | None = None) -> tuple[int, int]:
    """(forward, backward) bytes crossing tiles per time step for one matmul; see the module docstring.

    ``tiles``: the consuming population's; ``source_tiles``: the presynaptic
    population's; ``chunk``: samples per pass (the reduce-scatter pads each pass).
    """
    broadcast = tiles * list_bytes(source, batch)
    backward = broadcast
    if source.needs_grad_input and tiles > 1:
        for c in chunk_sizes(batch, chunk or batch):  # reduce-scatter, pass by pass
            backward += tiles * reduce_chunk(source, c, tiles) * (tiles - 1) * dtype_bytes
    if source.needs_grad_input:
        backward += source_tiles * batch * source.k * dtype_bytes  # all-gather of the summed values
    return broadcast, backward


def population_exchange(pop: Population, tiles: int, batch: int) -> tuple[int, int]:
    """(forward, backward) bytes of the population's own exchange per step: the select gather,
    and in backward also its rebuilt list broadcast to its own tiles."""
    if not pop.spiking:
        return 0, 0
    gather = batch * owners_bits(pop.neurons, tiles)
    return gather, gather + tiles * list_bytes(pop.own, batch)


def persistent_weight(pop: Population, s: Sizing) -> float:
    """Bytes per neuron that do not depend on the tile count: what tiles are shared out by."""
    params = (pop.params_per_neuron + pop.trained_per_neuron * (1 + s.optimizer_slots)) * s.dtype_bytes
    per_step = s.batch * ((1 / 8 + s.surrogate_bytes if pop.spiking else 0) + pop.saved_vars * s.dtype_bytes)
    bits = s.batch / 8 if pop.recurrent else 0
    ckpt, win = s.batch * pop.live_vars * s.dtype_bytes + bits, per_step * s.time.window + bits
    kept = max(c * ckpt + k * win for c, k in s.time.residency)
    return params + s.batch * pop.live_vars * s.dtype_bytes * (2 if s.time.recomputes else 1) + kept


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


def _population_max_bytes(p: Population, tiles: int, s: Sizing, chunk: int) -> int:
    # The widest tile, and the first tile, which selects the most samples; both bound the range.
    widest = math.ceil(p.neurons / tiles)
    return sum(tile_bytes(p, widest, tiles, s, selected_samples(s.batch, tiles, 0), chunk).values())


def choose_chunk(p: Population, tiles: int, s: Sizing, tile_capacity: int) -> int:
    """The most samples per pass with which the population's tiles fit (1 if none fits)."""
    return _largest(lambda c: _population_max_bytes(p, tiles, s, c) <= tile_capacity, s.batch) or 1


def _fits(pops, n_tiles: int, tile_capacity: int, s: Sizing) -> bool:
    counts = allocate_tiles(pops, n_tiles, s)
    return counts is not None and all(_population_max_bytes(p, c, s, 1) <= tile_capacity for p, c in zip(pops, counts))


def fits_on_tiles(model_cfg: ModelConfig, n_inputs: int, n_classes: int, batch: int, spec: DeviceSpec,
                  time: TimeOnTiles, capacity_fraction: float = 0.25, dtype_bytes: int = 4,
                  optimizer_slots: int = 2, surrogate_bytes: int = 4) -> bool:
    """Whether ``plan_tiles(...).fits``, without laying out every tile: the first tile of each population
    is its widest and selects the most samples, and one sample per pass is the least a tile can hold."""
    n_tiles, tile_capacity = tile_geometry(spec)
    s = Sizing(batch, dtype_bytes, time, optimizer_slots, surrogate_bytes)
    pops = populations_of(model_cfg, n_inputs, n_classes, capacity_fraction)
    if not _fits(pops, n_tiles, tile_capacity, s):
        return False
    counts = allocate_tiles(pops, n_tiles, s)
    ckpt = sum(checkpoint_bytes(p, e - b, s) for p, c in zip(pops, counts) for b, e in split_even(p.neurons, c))
    return time.offchip_slots * ckpt <= spec.offchip_bytes


def iteration_seconds(plan: TilePlan) -> dict[str, float]:
    """One training iteration under the time model of the module docstring (a model, not a
    measurement), by part: forward steps (recomputation included), reversed steps, checkpoint
    transfers to and from streaming memory, the optimizer; and the total."""
    spec, s = plan.spec, plan.sizing
    tiles = TILE_GEOMETRY[spec.name][0]
    # the busiest tile of a superstep sets its length: dense-equivalent fp32 work of its widest column block
    work = max(2 * s.batch * p.population.fan_in * max(e - b for _, b, e in p.slices()) for p in plan.populations)
    step = max(work / (spec.fp32_flops / tiles), spec.step_floor_s)
    parameters = max(sum(t.bytes_by_kind[k] for k in ("weights", "weight_grads", "optimizer")) for t in plan.tiles)
    parts = {"forward_s": s.time.evaluated_steps * step, "backward_s": s.time.steps * 2 * step,
             "streaming_s": plan.streaming_transfer_bytes / spec.offchip_bandwidth,
             "optimizer_s": 4 * parameters / (spec.local_bandwidth / tiles)}
    return parts | {"total_s": sum(parts.values())}


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
    time: TimeOnTiles | None = None,
    optimizer_slots: int = 2,
    surrogate_bytes: int = 4,
    max_tiles: int | None = None,
    suggest: bool = True,
) -> TilePlan:
    """Map a network onto one IPU's tiles and account every tile's bytes.

    ``time``: the time loop and BPTT schedule whose local tier lives on the tiles
    (default: ``steps`` steps, all of them taped: store_all); ``optimizer_slots``:
    per-weight optimizer buffers (Adam: 2); ``surrogate_bytes``: the dtype of the
    stored surrogate derivative (4: float32, 2: float16/bfloat16); ``max_tiles``:
    use at most this many of the IPU's tiles (default: all); ``suggest``: search
    what would fit when the plan does not (the refusal's message).
    """
    if batch < 1 or n_inputs < 1 or n_classes < 1:
        raise ValueError(f"plan_tiles: batch, n_inputs and n_classes must be >= 1, got {batch}, {n_inputs}, {n_classes}")
    if surrogate_bytes not in (2, 4):
        raise ValueError(f"plan_tiles: surrogate_bytes must be 2 or 4, got {surrogate_bytes}")
    time = time or TimeOnTiles.store_all(steps)
    n_tiles, tile_capacity = tile_geometry(spec)
    if max_tiles is not None:
        if not 1 <= max_tiles <= n_tiles:
            raise ValueError(f"plan_tiles: max_tiles must be in [1, {n_tiles}] for {spec.name}, got {max_tiles}")
        n_tiles = max_tiles
    s = Sizing(batch, dtype_bytes, time, optimizer_slots, surrogate_bytes)
    pops = populations_of(model_cfg, n_inputs, n_classes, capacity_fraction)
    counts = allocate_tiles(pops, n_tiles, s)
    if counts is None:
        raise UserError(f"{spec.name}: {len(pops)} populations need at least as many tiles, it has {n_tiles}")
    tiles_of = {p.name: c for p, c in zip(pops, counts)}
    pop_plans, loads, matmuls, begin = [], [], [], 0
    for pop, c in zip(pops, counts):
        chunk = choose_chunk(pop, c, s, tile_capacity)
        plan = PopulationPlan(pop, begin, begin + c, chunk, *population_exchange(pop, c, batch))
        pop_plans.append(plan)
        for j, (tile, nb, ne) in enumerate(plan.slices()):
            loads.append(TileLoad(tile, pop.name, nb, ne,
                                  tile_bytes(pop, ne - nb, c, s, selected_samples(batch, c, j), chunk)))
        for src in pop.sources:
            fwd, bwd = matmul_exchange(src, c, tiles_of.get(src.name, 0), batch, dtype_bytes, chunk)
            matmuls.append(MatmulPlan(f"{src.name}->{pop.name}", src, pop.name, pop.neurons, begin, begin + c, fwd, bwd))
        begin += c
    plan = TilePlan(spec.name, n_tiles, tile_capacity, s, capacity_fraction, tuple(pop_plans), tuple(matmuls),
                    tuple(loads), spec)
    if not plan.fits and suggest and plan.max_tile_bytes > tile_capacity:
        plan = replace(plan, suggestion=_suggest(pops, model_cfg, n_inputs, n_classes, n_tiles, tile_capacity, s,
                                                 capacity_fraction))
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
            "neurons_per_tile": [min(per_tile), max(per_tile)], "samples_per_pass": p.chunk,
            "max_tile_bytes": max(t.total_bytes for t in loads),
            "streaming_bytes": plan.streaming_bytes_of(p.population.name),
            "exchange_bytes_forward": p.exchange_bytes_forward, "exchange_bytes_backward": p.exchange_bytes_backward,
        })
    time = plan.time
    return {
        "device": plan.device,
        "tiles_total": plan.tiles_total,
        "used": plan.used,
        "max_tile_bytes": plan.max_tile_bytes,
        "tile_capacity_bytes": plan.tile_capacity_bytes,
        "fits": plan.fits,
        "fullest_tile": {"tile": full.tile, "population": full.population, "bytes_by_kind": dict(full.bytes_by_kind)},
        "time_loop": {"T": time.steps, "window": time.window, "windows": time.windows, "schedule": time.name,
                      "peak_on_tiles": "the most local checkpoints plus taped windows at any action of the schedule",
                      "local_checkpoints_and_taped_windows": [list(p) for p in time.residency],
                      "steps_evaluated": time.evaluated_steps},
        "streaming_memory": {"checkpoint_bytes": plan.checkpoint_bytes(), "slots": time.offchip_slots,
                             "bytes": plan.streaming_bytes, "capacity_bytes": plan.spec.offchip_bytes,
                             "transfers": time.offchip_transfers, "transfer_bytes": plan.streaming_transfer_bytes,
                             "bandwidth_bytes_per_s": plan.spec.offchip_bandwidth},
        "predicted": plan.predicted_seconds(),
        "time_model": ("a model, not a measurement: per step the busiest tile's dense-equivalent fp32 work at "
                       "1/tiles of the IPU's fp32 rate (at least the spec's superstep floor), reversed steps at twice "
                       "that, recomputed steps counted by the schedule, checkpoint transfers at the streaming "
                       "bandwidth without overlap, the optimizer at the tile's SRAM bandwidth; exchange not modelled"),
        "exchange_bytes_forward": plan.exchange_bytes_forward,
        "exchange_bytes_backward": plan.exchange_bytes_backward,
        "populations": pops,
        "matmuls": [{"name": m.name, "tile_begin": m.tile_begin, "tile_end": m.tile_end,
                     "exchange_bytes_forward": m.exchange_bytes_forward,
                     "exchange_bytes_backward": m.exchange_bytes_backward} for m in plan.matmuls],
        "assumptions": {"mapping": "postsynaptic neurons (weight columns) per tile", "batch": plan.sizing.batch,
                        "dtype_bytes": plan.sizing.dtype_bytes,
                        "stored_per_step": "z as bits and the surrogate derivative d; v_prev (a_prev) with learn_decay",
                        "checkpoint_per_neuron": "v (a for ALIF), and the last spike as a bit where recurrent",
                        "surrogate_bytes": plan.sizing.surrogate_bytes,
                        "optimizer_slots": plan.sizing.optimizer_slots, "capacity_fraction": plan.capacity_fraction,
                        "code_bytes_estimate": CODE_BYTES, "vertex_state_bytes_estimate": VERTEX_STATE_BYTES},
        "refusal": plan.refusal() or None,
    }
