"""The IPU plan counted from the network op's graph: what custom_ops/poplar/network_graph.cpp allocates
on each tile, built on a counting graph that holds no data, and a time model over its programs.

`GraphModel` is the one IPU memory model: for a fixed network, micro-batch and samples per input-gradient
pass, each tile's bytes are affine in the tape slots S, the local checkpoint slots K and the steps T
(the tapes are [S, B, w], the checkpoints [K, B w], the input bits [B, T, nb] and the trace [T + 1, k];
off-chip slots are remote buffers, no tile memory). It counts four small counting graphs (T = 2 or 4)
and solves each tile's coefficients exactly; what is not affine (each build's step constants and step
programs, `Builds`; the samples per pass) is counted apart. The planner evaluates every candidate
schedule, window and T with it, and `graph_plan` counts the chosen one's whole graph once.

Time per iteration (forward program + backward program), each term from the graph:

* compute: the busiest tile's vertex work per compute set (field elements; a single-worker vertex
  counted six times), at one element per cycle, at the clock;
* exchange: the busiest tile's bytes received from other tiles per compute set and per Copy, at one
  tile's share of the exchange bandwidth;
* sync: one BSP synchronisation per exchange phase;
* host I/O: the packed input bits over the host link;
* streaming: remote-buffer copies (off-chip checkpoints) over the same link.

Constants and their sources: ipu_snn/ipu/README.md, "The plan from the graph".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ipu_snn.bptt import Advance, Free, Load, Reverse, Schedule, Store
from ipu_snn.devices import SPECS
from ipu_snn.executor import window_bounds
from ipu_snn.ipu.interpreter import MK2_TILE_BYTES, MK2_TILES, HostNetwork, LayerSpec, step_actions
from ipu_snn.neuron.spec import RESET_CODES
from ipu_snn.neuron.surrogates import SURROGATES

#: The most input-gradient passes per backward step the plan tries (each pass adds its vertices to every
#: tile, and its compute sets and syncs to the step).
MAX_PASSES = 16
_MK2 = SPECS["ipu-mk2"]
#: Estimated code per tile: the dozen small codelets the op's tiles run and the control program (a few
#: KiB each on the IPU's compact ISA); not derived from the graph, a fixed cost per tile.
CODE_BYTES = 24 * 1024
#: Estimated state of one vertex: its field pointers and sizes (Poplar's vertex state is tens of bytes),
#: rounded up for the exchange's edge lists; times the vertices the graph maps to the tile.
VERTEX_STATE_BYTES = 128
#: GC200 clock, derived: 62.5 TFLOP/s fp32 / (1472 tiles x 32 fp32 flops per tile and cycle) = 1.33 GHz.
CLOCK_HZ = _MK2.fp32_flops / (MK2_TILES * 32)
#: Inner-loop iterations a tile retires per cycle: six barrel-scheduled workers, one instruction each per
#: six cycles (IPU Programmer's Guide, "Tile architecture"), at least one instruction per iteration (a
#: lower bound on the work; a single-worker vertex retires one per six cycles, counted in the graph).
ELEMENTS_PER_CYCLE = 1.0
#: One tile's share of the GC200's 8 TB/s all-to-all IPU-Exchange (Graphcore's GC200 figure).
TILE_EXCHANGE_BYTES_PER_S = 8e12 / MK2_TILES
#: Cycles per BSP synchronisation of one IPU: Graphcore's own planner cost, "we also sync prior to each
#: exchange which has approximately the same cost each time" (graphcore/poplibs
#: lib/popnn/CTCLossPlan.cpp:349-351 @ 7eac0f26: 90); an estimate of Graphcore's, not a measurement.
SYNC_CYCLES = 90
#: The IPU's PCIe Gen4 x16 link, each way: host input and streaming memory both cross it (devices.py).
LINK_BYTES_PER_S = _MK2.offchip_bandwidth
#: Streaming memory per IPU (devices.py: the IPU-M2000's about 260 GB for its four IPUs).
STREAMING_BYTES_PER_IPU = _MK2.offchip_bytes
#: The cost walk's terms (NetworkRunner.cpp, ipu_snn_net_cost), in its order.
_TERMS = ("compute_sets", "work_elements", "received_bytes", "exchange_phases", "remote_bytes")
#: A step constant: one UNSIGNED_INT on tile 0 (network_graph.cpp, ``constantStep``).
CONSTANT_BYTES = 4
_PHASE = np.array([0.0, 0.0, 0.0, 1.0, 0.0])
#: The builds' key (`Builds`) of the probes that give the slopes: a taped forward, a backward.
KEY = (False, True, False, False)


def layer_specs(model_cfg) -> list[LayerSpec]:
    """The network op's layers of a model config (LIF, RLIF, ALIF, CUBA)."""
    out = []
    for layer in model_cfg.layers:
        out.append(LayerSpec(layer.size, layer.is_recurrent, layer.threshold, RESET_CODES[layer.reset],
                             SURROGATES[layer.surrogate.name].code, layer.surrogate.scale,
                             learn_decay=layer.learn_decay, learn_threshold=layer.learn_threshold,
                             kind=layer.neuron.kernel_code,
                             adapt_strength=layer.param_values().get("adapt_strength", 0.0)))
    return out


def taped_slots(schedule: Schedule, bounds) -> int:
    """`interpreter.tape_slots` of the schedule's step actions, from its windows (no per-step expansion):
    the most taped steps alive at once, which peak right after an Advance that tapes."""
    live: set[int] = set()
    peak = 1
    for action in schedule.actions:
        if isinstance(action, Advance) and action.store_outputs:
            live |= set(range(action.n0, action.n1))
            peak = max(peak, sum(bounds[w][1] - bounds[w][0] for w in live))
        elif isinstance(action, Reverse):
            live.discard(action.n)
    return peak


@dataclass(frozen=True)
class Builds:
    """What the op's two builds (the forward op's and the grad op's, network_graph.cpp's ``Pass``) make that
    is not affine in the slots and T: which step programs each builds (``key``: the forward build's plain and
    taped step, the grad build's plain and taped recomputed step; the grad build always has the backward
    step), and their step constants (``constantStep``: one UNSIGNED_INT on tile 0 per distinct value a
    build copies: the first step of each Advance and of each run of Reverses, each off-chip slot a Store
    or Load selects)."""

    key: tuple[bool, bool, bool, bool]
    constants: int

    @classmethod
    def of_actions(cls, actions) -> "Builds":
        """From step actions, as ``Builder::actions`` walks them."""
        first = next((i for i, a in enumerate(actions) if a[0] == 1), len(actions))
        key, constants = [], 0
        for part in (actions[:first], actions[first:]):
            key += [any(a[0] == 0 and not a[3] for a in part), any(a[0] == 0 and a[3] for a in part)]
            values, i = set(), 0
            while i < len(part):
                kind, n0, _, _, offchip, slot = part[i]
                if kind in (0, 1):
                    values.add(n0)
                if kind == 1:
                    while i + 1 < len(part) and part[i + 1][0] == 1 and part[i + 1][1] + 1 == part[i][1]:
                        i += 1
                elif kind in (2, 3) and offchip:
                    values.add(slot)
                i += 1
            constants += len(values)
        return cls(tuple(key), constants)

    @classmethod
    def of_schedule(cls, schedule: Schedule, bounds) -> "Builds":
        """From the schedule over windows, without expanding its Reverses to steps (`step_actions`' slots)."""
        key, constants, values, slots = [False] * 4, 0, set(), {"local": {}, "offchip": {}}
        build, previous = 0, None
        for action in schedule.actions:
            if isinstance(action, Reverse) and build == 0:
                constants, values, build = len(values), set(), 1
            if isinstance(action, Advance):
                values.add(bounds[action.n0][0])
                key[2 * build + int(action.store_outputs)] = True
            elif isinstance(action, Reverse):
                if not (isinstance(previous, Reverse) and previous.n == action.n + 1):
                    values.add(bounds[action.n][1] - 1)
            elif isinstance(action, Store):
                used = set(slots[action.tier].values())
                slots[action.tier][action.n] = next(k for k in range(len(used) + 1) if k not in used)
                if action.tier == "offchip":
                    values.add(slots["offchip"][action.n])
            elif isinstance(action, Load) and action.tier == "offchip":
                values.add(slots["offchip"][action.n])
            elif isinstance(action, Free):
                slots[action.tier].pop(action.n)
            previous = action
        return cls(tuple(key), constants + len(values))


@dataclass(frozen=True)
class Candidate:
    """A time loop as the op's graph sees it: T steps in windows (``bounds``) under ``schedule``, and the
    slots it needs: tape S, local checkpoint K, off-chip O."""

    steps: int
    window: int
    schedule: Schedule
    tape: int
    local: int
    offchip: int
    builds: Builds

    @classmethod
    def of(cls, steps: int, window: int, schedule: Schedule) -> "Candidate":
        window = min(window, steps)
        bounds = window_bounds(steps, window)
        if schedule.T != len(bounds):
            raise ValueError(f"schedule {schedule.name} is for {schedule.T} windows, T={steps} in windows of "
                             f"{window} makes {len(bounds)}")
        return cls(steps, window, schedule, taped_slots(schedule, bounds), max(schedule.max_local_slots, 0),
                   max(schedule.max_offchip_slots, 0), Builds.of_schedule(schedule, bounds))

    @property
    def windows(self) -> int:
        return self.schedule.T

    @cached_property
    def actions(self) -> list[tuple[int, ...]]:
        return step_actions(self.schedule, window_bounds(self.steps, self.window))


def tile_account(host: HostNetwork, slots: int) -> dict:
    """Each tile's bytes by kind (arrays over the tiles): ``op``, the variables the op's graph maps to it
    (the interpreter's record); ``optimizer``, ``slots`` buffers per parameter on it; ``exchange``, the
    most it receives in one compute set; ``vertices`` and ``code``, the estimates above; and ``total``."""
    received, vertices = host.tile_overheads()
    return _account(host.tile_bytes().astype(np.int64), host.param_bytes().astype(np.int64),
                    received.astype(np.int64), vertices.astype(np.int64), slots)


def _account(op, params, received, vertices, slots: int) -> dict:
    used = (op > 0) | (vertices > 0)
    account = {"op": op, "optimizer": slots * params, "exchange": received, "vertices": VERTEX_STATE_BYTES * vertices,
               "code": CODE_BYTES * used.astype(np.int64)}
    account["total"] = sum(account.values())
    return account


def _cost(host: HostNetwork, backward: bool, rate: float) -> np.ndarray:
    c = host.cost(backward, rate)
    return np.array([c[k] for k in _TERMS])


@dataclass(frozen=True)
class _Base:
    """The counting graph at S = K = O = 1, T = 2 for some samples per pass: what does not scale with them."""

    op: np.ndarray
    params: np.ndarray
    received: np.ndarray
    vertices: np.ndarray
    remote_per_slot: int


class GraphModel:
    """Each tile's bytes and the time terms of the network op's graph for any schedule, window and T, from
    a few counting graphs of the same network and micro-batch (see the module docstring).

    Parameters
    ----------
    model_cfg : ModelConfig
        The network (LIF, RLIF, ALIF and cuba layers: `layer_specs`).
    n_inputs, n_classes, batch : int
        Input channels, readout neurons, the micro-batch.
    slots : int
        The optimizer's buffers per parameter (`optimizer_slots`).
    rate : float
        Spikes per neuron and step the compute term assumes.
    """

    def __init__(self, model_cfg, n_inputs: int, n_classes: int, batch: int, slots: int = 2, rate: float = 0.05):
        self.model_cfg, self.layers = model_cfg, layer_specs(model_cfg)
        self.n_inputs, self.n_classes, self.batch, self.slots, self.rate = n_inputs, n_classes, batch, slots, rate
        self.counted = 0  # counting graphs built
        self._bases: dict[tuple, _Base] = {}  # (passes, builds' key) -> its counting graph's account
        self._units: dict[str, np.ndarray] = {}  # the cost walk's terms of one run of each program
        self._walked: dict[tuple, tuple] = {}  # builds' key -> the whole batch's base graph's (forward, backward) walk

    # ------------------------------------------------------------------ counting graphs

    def _graph(self, passes: int, steps: int, actions, tape: int, local: int) -> HostNetwork:
        self.counted += 1
        return HostNetwork.from_actions(self.batch, steps, self.n_inputs, self.layers, self.n_classes, passes,
                                        actions, tape, local, 1, holds_data=False)

    @staticmethod
    def probe_actions(key: tuple[bool, ...], taped_back: int = 1) -> list[tuple[int, ...]]:
        """Step actions (kind, n0, n1, tape, offchip, slot) whose builds make the programs of ``key`` (each
        run once; the grad build's taped recomputation ``taped_back`` times) over T = 2."""
        forward_plain, forward_taped, back_plain, back_taped = key
        out = [(0, 0, 1, 0, 0, 0)] if forward_plain else []
        if forward_taped:
            out.append((0, int(forward_plain), int(forward_plain) + 1, 1, 0, 0))
        out.append((1, 1, 0, 0, 0, 0))
        if back_plain:
            out.append((0, 0, 1, 0, 0, 0))
        if back_taped:
            out.append((0, 0, taped_back, 1, 0, 0))
        return out

    @staticmethod
    def _affine(tile_bytes: np.ndarray, actions) -> np.ndarray:
        """A graph's bytes less its step constants (`Builds`), which are not affine."""
        op = tile_bytes.astype(np.int64)
        op[0] -= CONSTANT_BYTES * Builds.of_actions(actions).constants
        return op

    def base(self, passes: int, key: tuple[bool, ...] = KEY) -> _Base:
        """The graph of the builds ``key`` at S = K = 1, T = 2 with ``passes`` samples per pass."""
        if (passes, key) not in self._bases:
            actions = self.probe_actions(key)
            host = self._graph(passes, 2, actions, 1, 1)
            received, vertices = host.tile_overheads()
            self._bases[passes, key] = _Base(self._affine(host.tile_bytes(), actions),
                                             host.param_bytes().astype(np.int64), received.astype(np.int64),
                                             vertices.astype(np.int64), host.counts()["remote_bytes"])
            if passes == self.batch:
                self._walked[key] = (_cost(host, False, self.rate), _cost(host, True, self.rate))
        return self._bases[passes, key]

    @cached_property
    def slopes(self) -> np.ndarray:
        """Per tile, bytes per tape slot, per local slot and per step: three counting graphs besides the
        whole batch's base of `KEY` (the same builds, so only S, K or T differs); the first also gives the
        unit costs of a taped forward step and of a backward step."""
        actions, doubled = self.probe_actions(KEY), [(0, 0, 2, 1, 0, 0), (1, 1, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0)]
        op1 = self.base(self.batch).op
        tape = self._graph(self.batch, 2, doubled, 2, 1)
        ops = [self._affine(tape.tile_bytes(), doubled),
               self._affine(self._graph(self.batch, 2, actions, 1, 2).tile_bytes(), actions),
               self._affine(self._graph(self.batch, 4, actions, 1, 1).tile_bytes(), actions)]
        f1, b1 = self._walked[KEY]
        taped, back = _cost(tape, False, self.rate) - f1, _cost(tape, True, self.rate) - b1
        self._units.update(forward_taped=taped, back=back, zero_forward=f1 - _PHASE - taped,
                           zero_backward=b1 - _PHASE - back)
        return np.stack([ops[0] - op1, ops[1] - op1, (ops[2] - op1) // 2])

    def units(self, key: tuple[bool, ...]) -> dict[str, np.ndarray]:
        """The cost walk's terms of one run of each program the builds ``key`` make (and the zeroing): from
        the whole batch's base graph of ``key`` less what `slopes`' graphs gave, and where the grad build
        recomputes both plainly and taped, one more graph with its taped step run twice."""
        self.slopes  # noqa: B018  (the taped forward step, the backward step, the zeroing)
        self.base(self.batch, key)
        forward_plain, forward_taped, back_plain, back_taped = key
        f, b = self._walked[key]
        u = self._units
        if forward_plain and "forward_plain" not in u:
            u["forward_plain"] = f - u["zero_forward"] - (1 + forward_taped) * _PHASE - forward_taped * u["forward_taped"]
        rest = b - u["zero_backward"] - (1 + back_plain + back_taped) * _PHASE - u["back"]
        if back_plain and back_taped and "back_taped" not in u:
            actions = self.probe_actions(key, taped_back=2)
            u["back_taped"] = _cost(self._graph(self.batch, 2, actions, 1, 1), True, self.rate) - b
        if back_taped and not back_plain:
            u.setdefault("back_taped", rest)
        if back_plain and "back_plain" not in u:
            u["back_plain"] = rest - (u["back_taped"] if back_taped else 0)
        return u

    # ------------------------------------------------------------------ bytes

    def account(self, tape: int, local: int, steps: int, passes: int, builds: Builds = Builds(KEY, 2)) -> dict:
        """Each tile's bytes by kind (as `tile_account` counts a real graph) at S = ``tape``, K = ``local``,
        T = ``steps``, ``passes`` samples per pass, and the ``builds``' programs and step constants."""
        slopes = self.slopes
        base = self.base(passes)
        op = base.op + slopes[0] * (tape - 1) + slopes[1] * (local - 1) + slopes[2] * (steps - 2)
        op[0] += CONSTANT_BYTES * builds.constants
        received, vertices = base.received, base.vertices
        if builds.key != KEY:
            # the other step programs' variables and vertices, which do not depend on the pass size; their
            # compute sets are forward steps as `KEY`'s taped one is, so they receive no more than it does
            extra, plain = self.base(self.batch, builds.key), self.base(self.batch)
            op = op + extra.op - plain.op
            vertices = vertices + extra.vertices - plain.vertices
        return _account(op, base.params, received, vertices, self.slots)

    def kept_bytes(self, c: Candidate) -> int:
        """The tapes and local checkpoints over all tiles (what the schedule keeps on the chip)."""
        return int(self.slopes[0].sum() * c.tape + self.slopes[1].sum() * c.local)

    def streaming_bytes(self, c: Candidate) -> int:
        return c.offchip * self.base(self.batch).remote_per_slot

    def max_tile_bytes(self, c: Candidate, passes: int) -> int:
        return int(self.account(c.tape, c.local, c.steps, passes, c.builds)["total"].max())

    def counted_passes(self) -> list[int]:
        """The pass sizes whose counting graph the model holds."""
        return sorted({passes for passes, _ in self._bases})

    def pass_sizes(self) -> list[int]:
        """The samples per input-gradient pass the plan tries, most first: the micro-batch, then halved, down
        to ``MAX_PASSES`` passes per step."""
        sizes, size = [], self.batch
        while size >= max(1, -(-self.batch // MAX_PASSES)):
            sizes.append(size)
            size //= 2
        return sizes

    def samples_per_pass(self, c: Candidate) -> int | None:
        """The most samples per input-gradient pass (of `pass_sizes`) with which every tile fits; None when
        none does. Fewer samples per pass shrink the pass's partials but add its vertices: the walk stops
        where the fullest tile stops shrinking (its bytes, per-sample terms plus per-pass terms, are convex
        in the pass size), so a candidate that fits nowhere costs no counting graphs of tiny passes."""
        if self.streaming_bytes(c) > STREAMING_BYTES_PER_IPU:
            return None
        fullest = None
        for passes in self.pass_sizes():
            bytes_ = self.max_tile_bytes(c, passes)
            if bytes_ <= MK2_TILE_BYTES:
                return passes
            if fullest is not None and bytes_ >= fullest:
                return None
            fullest = bytes_
        return None

    def fits(self, c: Candidate) -> bool:
        """Every tile within its SRAM at some pass size, and the off-chip checkpoints within streaming memory."""
        return self.samples_per_pass(c) is not None

    # ------------------------------------------------------------------ time

    def program_terms(self, c: Candidate) -> dict[str, float]:
        """The cost walk's terms of the forward and the backward program together (`HostNetwork.cost`), from
        the unit costs (`units`) at whole-batch passes: the steps, the zeroing, the counter's and the local
        checkpoints' copies (consecutive copies are one exchange phase) and the remote copies."""
        units = self.units(c.builds.key)
        remote = np.array([0.0, 0.0, 0.0, 0.0, float(self.base(self.batch).remote_per_slot)])
        actions = c.actions
        first = next((i for i, a in enumerate(actions) if a[0] == 1), len(actions))
        total = units["zero_forward"] + units["zero_backward"]
        for build, part in (("forward", actions[:first]), ("back", actions[first:])):
            in_copies, i = False, 0
            while i < len(part):
                kind, n0, n1, tape, offchip, _ = part[i]
                if kind == 0:
                    step = units[f"{build}_{'taped' if tape else 'plain'}"]
                    total = total + (0 if in_copies else _PHASE) + (n1 - n0) * step
                    in_copies = False
                elif kind == 1:
                    j = i
                    while j + 1 < len(part) and part[j + 1][0] == 1 and part[j + 1][1] + 1 == part[j][1]:
                        j += 1
                    total = total + (0 if in_copies else _PHASE) + (j - i + 1) * units["back"]
                    in_copies, i = False, j
                elif kind in (2, 3) and offchip:
                    total, in_copies = total + remote, False
                elif kind in (2, 3):
                    total = total + (0 if in_copies else _PHASE)
                    in_copies = True
                i += 1
        return dict(zip(_TERMS, map(float, total)))

    def time(self, c: Candidate) -> dict[str, float]:
        """`time_terms` of the candidate's programs (at whole-batch passes)."""
        return time_terms(self.program_terms(c), self.batch, c.steps, self.n_inputs)


def time_terms(both: dict, batch: int, steps: int, n_inputs: int) -> dict[str, float]:
    """The time model's terms (seconds per iteration) from the cost walk's terms of both programs."""
    input_bytes = batch * steps * ((n_inputs + 7) // 8)
    time = {"compute_s": both["work_elements"] / ELEMENTS_PER_CYCLE / CLOCK_HZ,
            "exchange_s": both["received_bytes"] / TILE_EXCHANGE_BYTES_PER_S,
            "sync_s": both["exchange_phases"] * SYNC_CYCLES / CLOCK_HZ,
            "host_io_s": input_bytes / LINK_BYTES_PER_S,
            "streaming_s": both["remote_bytes"] / LINK_BYTES_PER_S}
    time["total_s"] = sum(time.values())
    return time


def optimizer_slots(training_cfg) -> int:
    """Buffers per parameter the optimizer keeps beside it (Adam, AdamW: 2; SGD: its momentum, if any)."""
    if training_cfg.optimizer in ("adam", "adamw"):
        return 2
    return int(training_cfg.momentum > 0)


def graph_plan(model_cfg, n_inputs: int, n_classes: int, batch: int, steps: int, window: int, schedule,
               rate: float = 0.05, slots: int = 2, model: GraphModel | None = None) -> dict:
    """The tile account and predicted time of one micro-batch's network op under ``schedule`` over the
    windows of ``window`` steps, as ``ipu-snn plan --json`` reports it under ``tiles``: the samples per
    pass chosen by the model (`GraphModel.samples_per_pass`), then the whole graph counted once, which
    every number reported is; ``model_check`` compares the model's bytes of every tile with it.
    ``rate``: the spikes per neuron and step the compute term assumes; ``slots``: the optimizer's
    buffers per parameter, which PopART lays out as their parameters, on the op's tiles
    (`optimizer_slots`)."""
    model = model or GraphModel(model_cfg, n_inputs, n_classes, batch, slots, rate)
    c = Candidate.of(steps, window, schedule)
    passes = model.samples_per_pass(c) or model.pass_sizes()[-1]  # none fits: the most passes, counted and refused
    host = HostNetwork.from_actions(batch, steps, n_inputs, model.layers, n_classes, passes, c.actions, c.tape,
                                    c.local, c.offchip, holds_data=False)
    model.counted += 1
    account = tile_account(host, slots)
    op_bytes, per_tile = account["op"], account["total"]
    fullest = int(per_tile.argmax())
    fwd, bwd = host.cost(False, rate), host.cost(True, rate)
    both = {k: fwd[k] + bwd[k] for k in fwd}
    counts = host.counts()
    time = time_terms(both, batch, steps, n_inputs)
    predicted = model.account(c.tape, c.local, steps, passes, c.builds)["total"]
    fits_tiles = int(per_tile.max()) <= MK2_TILE_BYTES
    fits_streaming = counts["remote_bytes"] <= STREAMING_BYTES_PER_IPU
    return {"source": "graph",
            "fits": fits_tiles and fits_streaming,
            "max_tile_bytes": int(per_tile.max()),
            "tile_capacity_bytes": MK2_TILE_BYTES,
            "tiles_total": MK2_TILES,
            "tiles_used": int((per_tile > 0).sum()),
            "op_max_tile_bytes": int(op_bytes.max()),
            "optimizer_slots": slots,
            "fullest_tile": {"tile": fullest, "bytes": int(per_tile[fullest]),
                             "bytes_by_kind": {k: int(v[fullest]) for k, v in account.items() if k != "total"},
                             "largest": [{"name": n, "bytes": b} for n, b in host.tile_variables(fullest)[:6]]},
            "streaming_bytes": counts["remote_bytes"],
            "streaming_capacity_bytes": int(STREAMING_BYTES_PER_IPU),
            "graph": {"vertices": counts["vertices"], "compute_sets": counts["compute_sets"],
                      "variables": counts["variables"], "tape_slots": c.tape, "local_slots": c.local,
                      "offchip_slots": c.offchip, "samples_per_pass": passes, "spike_rate": rate,
                      "compute_set_runs": both["compute_sets"], "exchange_phases": both["exchange_phases"],
                      "remote_bytes_moved": both["remote_bytes"],
                      "input_bytes": batch * steps * ((n_inputs + 7) // 8), "counting_graphs": model.counted},
            "model_check": {"tiles_equal": bool(np.array_equal(predicted, per_tile)),
                            "max_tile_bytes": int(predicted.max())},
            "time": time}


__all__ = ["Builds", "Candidate", "GraphModel", "graph_plan", "layer_specs", "optimizer_slots", "taped_slots", "tile_account",
           "time_terms"]
