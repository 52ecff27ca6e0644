"""Plan a run once: its window, BPTT schedule and product policies (`RunPlan`), bytes predicted before
anything is allocated.

Bytes come from shapes alone (`NetShape`), counted as the executor counts them
(``ScanStats.peak_local_bytes``; the tests hold the two within 10%), and `check_fits`
refuses a run that cannot fit from arithmetic before any schedule is generated. Time
comes from window costs: measured on this machine (`ipu_snn.calibration`), or for
another device from its spec (`analytic_costs`). `plan` costs every schedule of the
registry (`ipu_snn.bptt.registry`) over the window lengths; on an IPU the network op's
graph model that ``ipu_snn.ipu`` registers (`TILE_PLANNERS`) judges each instead, so this module
never imports it. Design notes: docs/architecture.md.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from .bptt import Costs, predicted_local_bytes, predicted_time, summarize
from .bptt.registry import SCHEDULES, ScheduleKind, schedule_kind
from .config import Config
from .devices import DeviceSpec, GiB
from .errors import ConfigError
from .neuron.model import NeuronModel

FLOAT_BYTES = 4
#: windows the planner considers (steps), besides one window of T when T is at most the largest
WINDOWS = (16, 32, 64, 128, 256, 512)
SAVED_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: float32 values the plain autograd loop (model.fused: false, or an attached reset) keeps per neuron and step
#: for each state variable (the membrane; ALIF's adaptation too), besides the spikes as bits: counted by the
#: executor, and held to it by tests/unit/test_planner.py's autograd models
AUTOGRAD_FLOATS_PER_STATE = 1


def _packed(n: int) -> int:
    return (n + 7) // 8


@dataclass(frozen=True)
class LayerShape:
    n_in: int
    n: int
    neuron: NeuronModel
    recurrent: bool
    learn_decay: bool
    dropout: bool = False  # its output spikes masked in training (ipu_snn.dropout)
    learn_threshold: bool = False  # a threshold parameter [n] (and its gradient, Adam's moments)

    @property
    def states(self) -> int:
        """State variables per neuron (the model's: v, and a for alif), each with its decay."""
        return self.neuron.n_state


@dataclass(frozen=True)
class NetShape:
    """The network, batch and sequence as the planner sees them: shapes only, nothing allocated."""

    batch: int
    steps: int
    n_inputs: int
    n_classes: int
    layers: tuple[LayerShape, ...]
    readout_learn_decay: bool
    reduce: str
    saved_bytes: int  # per surrogate derivative (and pre-step state of a learned decay)
    near: bool  # near-threshold bits kept for the listed backward (network.listed_backward)
    binary_inputs: bool
    fused: bool  # the fused step mode (else the autograd loop keeps far more; see keep_factor)
    # per sample, what the training objective adds to each window's output, and keeps per step for its
    # backward (ipu_snn.losses.output_columns)
    tap_columns: int = 0
    tap_kept: int = 0

    @classmethod
    def of(cls, cfg: Config, n_inputs: int, n_classes: int, batch: int | None = None) -> "NetShape":
        from .losses import output_columns
        from .network import fused_obstacles, listed_backward

        layers, n_in = [], n_inputs
        for layer in cfg.model.layers:
            layers.append(LayerShape(n_in, layer.size, layer.neuron, layer.is_recurrent, layer.learn_decay,
                                     layer.dropout > 0, layer.learn_threshold))
            n_in = layer.size
        fused = cfg.model.fused is not False and not fused_obstacles(cfg.model)
        return cls(batch or cfg.data.batch_size, cfg.data.num_steps, n_inputs, n_classes, tuple(layers),
                   cfg.model.readout.learn_decay, cfg.model.readout.reduce, SAVED_BYTES[cfg.model.fused_saved_dtype],
                   any(g.listed and g.min_derivative is not None for g in listed_backward(cfg.model, fused, cfg.device)),
                   cfg.data.binary, fused,
                   *output_columns(cfg.training, [layer.size for layer in cfg.model.layers], n_classes))

    def windows(self, window: int) -> int:
        return -(-self.steps // window)

    def param_count(self) -> int:
        count = 0
        for layer in self.layers:
            count += layer.n_in * layer.n + layer.n + (layer.n * layer.n if layer.recurrent else 0)
            count += layer.n * layer.states if layer.learn_decay else 0
            count += layer.n if layer.learn_threshold else 0
        n_last = self.layers[-1].n
        return count + n_last * self.n_classes + self.n_classes * (1 + self.readout_learn_decay)

    def param_bytes(self) -> int:
        """Parameters, gradients and two Adam moments."""
        return 4 * FLOAT_BYTES * self.param_count()

    def batch_bytes(self) -> int:
        """The batch, as the loader gives it: packed bits, or float frames."""
        per_step = _packed(self.n_inputs) if self.binary_inputs else FLOAT_BYTES * self.n_inputs
        return self.batch * self.steps * per_step

    def state_bytes(self) -> int:
        """One window-boundary checkpoint: every layer's state (v, a for ALIF), last spikes, near bits; the
        readout's v."""
        b = self.batch
        total = b * self.n_classes * FLOAT_BYTES
        for layer in self.layers:
            total += b * layer.n * FLOAT_BYTES * (1 + layer.states) + (b * _packed(layer.n) if self.near else 0)
        return total

    def tape_bytes(self, window: int) -> int:
        """What one taped window of ``window`` steps keeps for backward, counted as the executor counts it:
        every storage autograd saves and the window's outputs, less parameters, the batch and its input state."""
        b, rows = self.batch, self.batch * window
        # the window's copy of its input bits, which the input product keeps (float frames stay views)
        total = rows * _packed(self.n_inputs) if self.binary_inputs else 0
        for layer in self.layers:
            # spikes as bits, and the model's own: d, and the pre-step state of a learned decay
            per_step = _packed(layer.n) + layer.n * layer.neuron.saved_bytes_per_neuron_step(self.saved_bytes,
                                                                                            layer.learn_decay)
            if not self.fused:  # the autograd loop keeps each op's inputs instead: an estimate
                per_step = _packed(layer.n) + layer.n * FLOAT_BYTES * AUTOGRAD_FLOATS_PER_STATE * layer.states
                if layer.learn_decay:
                    per_step += layer.n * self.saved_bytes * layer.states  # the pre-step state: v_prev, a_prev
            if self.near:
                per_step += _packed(layer.n)
            if layer.dropout:  # the mask (a bool per spike) and the bits of the spikes that pass
                per_step += layer.n + _packed(layer.n)
            total += rows * per_step
            total += b * _packed(layer.n) if layer.recurrent else 0  # the initial spikes' bits
            total += FLOAT_BYTES * layer.n * layer.states  # the clamped decays
            total += b * layer.n * FLOAT_BYTES * (1 + layer.states) + (b * _packed(layer.n) if self.near else 0)
        c = self.n_classes
        total += FLOAT_BYTES * c  # the clamped readout decay
        if self.readout_learn_decay:
            total += rows * c * FLOAT_BYTES  # the readout trace (d v / d beta = v_prev)
        if self.reduce == "max":
            total += b * c * 8  # where the window's maximum is (int64)
        total += b * c * FLOAT_BYTES  # the readout's last v
        total += b * (c + len(self.layers) + 1 + self.tap_columns) * FLOAT_BYTES  # the window's output
        total += rows * self.tap_kept * FLOAT_BYTES
        return total

    def working_bytes(self, window: int) -> int:
        """Buffers alive while one window runs (not kept): currents, spikes, the gradients of both, unpacked
        dense inputs; an estimate of the peak, for the budget. A learned threshold's gradient adds up to four
        [window, B, n] temporaries in its layer's backward (the unpacked spikes, the shifted adjoint, their
        product, and for cuba the adjoint of v per step: neuron.window._threshold_grad)."""
        widest = max(max(layer.n, layer.n_in) for layer in self.layers)
        thresholds = max((layer.n for layer in self.layers if layer.learn_threshold), default=0)
        return self.batch * window * FLOAT_BYTES * (5 * widest + 4 * thresholds)

    def output_bytes(self, window: int) -> int:
        """The stacked outputs of every window [W, B, classes + layers + 1 + the objective's columns]."""
        columns = self.n_classes + len(self.layers) + 1 + self.tap_columns
        return self.windows(window) * self.batch * columns * FLOAT_BYTES

    def flops_per_step(self) -> float:
        """Dense multiply-adds of one step, times 2: the analytic cost of a step on another device."""
        macs = sum(layer.n_in * layer.n + (layer.n * layer.n if layer.recurrent else 0) for layer in self.layers)
        return 2.0 * self.batch * (macs + self.layers[-1].n * self.n_classes)


# ------------------------------------------------------------------------------ costs


@dataclass(frozen=True)
class WindowCosts:
    """Seconds of one window of L steps: ``fixed + per_step * L`` for its untaped forward, taping, and
    backward; ``optimizer``: one optimizer step; ``offchip_bandwidth``: bytes/s to and from the off-chip tier."""

    forward: tuple[float, float]
    tape: tuple[float, float]
    reverse: tuple[float, float]
    optimizer: float
    offchip_bandwidth: float
    source: str

    def at(self, window: int, state_bytes: int) -> Costs:
        def cost(pair):
            return pair[0] + pair[1] * window

        move = state_bytes / self.offchip_bandwidth
        return Costs(step=cost(self.forward), tape=cost(self.tape), reverse=cost(self.reverse),
                     offchip_write=move, offchip_read=move)


def analytic_costs(shape: NetShape, spec: DeviceSpec) -> WindowCosts:
    """Costs of a device this machine is not: its fp32 rate over the dense work, with a per-step floor."""
    step = max(shape.flops_per_step() / spec.fp32_flops, spec.step_floor_s)
    return WindowCosts((0.0, step), (0.0, 0.0), (0.0, 2 * step), 4 * shape.param_bytes() / spec.local_bandwidth,
                       spec.offchip_bandwidth, f"{spec.name} spec sheet")


# ------------------------------------------------------------------------------ candidates


def candidates(bptt, compare_all: bool = False) -> dict[str, ScheduleKind]:
    """The configured schedule (``bptt``: the config's section, with its parameters) first; for ``auto``
    (or ``compare_all``) every schedule of the registry at its defaults besides."""
    configured = {} if bptt.schedule == "auto" else {bptt.schedule: _registered(bptt)}
    if configured and not compare_all:
        return configured
    return {name: cls() for name, cls in SCHEDULES.items()} | configured


def _registered(kind: ScheduleKind) -> ScheduleKind:
    """The registry's own class with ``kind``'s parameters (the config's section adds shared fields)."""
    return SCHEDULES[kind.schedule](**kind.parameters())


# ------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Strategy:
    name: str
    schedule: str
    window: int
    windows: int
    local_bytes: int  # taped windows and local checkpoints: what the executor counts (IPU: summed over tiles)
    # local_bytes plus parameters, batch, outputs and the running window's buffers: the budget's
    # (IPU: the fullest tile's bytes times the tiles of the IPU, so that it fits the budget when every tile fits)
    peak_bytes: int
    offchip_bytes: int
    forward_windows: int
    transfer_bytes: int
    predicted_s: float
    fits: bool
    max_tile_bytes: int | None = None  # IPU: the fullest tile
    parameters: dict = field(default_factory=dict)  # the schedule's parameters, defaults filled in


@dataclass(frozen=True)
class RunPlan:
    """What a run executes, decided once: the window, the schedule over the windows (every parameter
    filled in), and how each spike product runs (``crossovers``: the measured density below which a
    ``model.sparse: auto`` product goes sparse, per product shape; `ipu_snn.network.build_network`).

    The executor runs ``loop()``; a checkpoint stores ``to_json()`` and a resumed run or an evaluation
    rebuilds it with ``from_json``, so they run exactly what the first run planned."""

    device: str
    T: int
    batch: int
    window: int
    schedule: ScheduleKind
    costs: Costs = Costs()  # the relative costs a searching schedule (two_level) chose with
    crossovers: dict = field(default_factory=dict)
    peak_bytes: int = 0
    predicted_s: float = 0.0
    costs_source: str = ""

    @property
    def windows(self) -> int:
        return -(-self.T // self.window)

    def loop(self):
        """The executor's TimeLoop: the window, and the schedule as a function of the windows."""
        from .executor import TimeLoop

        if self.schedule.name == "store_all":
            return TimeLoop(self.window, None)
        return TimeLoop(self.window, functools.partial(self.schedule.build, costs=self.costs))

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.schedule.parameters().items())
        return (f"{self.schedule.name}{f'({params})' if params else ''} over {self.windows} windows of "
                f"{self.window} steps, predicted {self.peak_bytes / 2**20:,.0f} MiB and "
                f"{self.predicted_s * 1e3:,.0f} ms per iteration on {self.device}")

    def to_json(self) -> dict:
        return {"device": self.device, "T": self.T, "batch": self.batch, "window": self.window,
                "schedule": {"schedule": self.schedule.name, **self.schedule.parameters()},
                "costs": asdict(self.costs), "crossovers": dict(self.crossovers), "peak_bytes": self.peak_bytes,
                "predicted_s": self.predicted_s, "costs_source": self.costs_source}

    @classmethod
    def from_json(cls, data: dict) -> "RunPlan":
        params = dict(data["schedule"])
        kind = schedule_kind(params.pop("schedule"), **params)
        return cls(data["device"], data["T"], data["batch"], data["window"], kind, Costs(**data["costs"]),
                   dict(data.get("crossovers", {})), data.get("peak_bytes", 0), data.get("predicted_s", 0.0),
                   data.get("costs_source", ""))


@dataclass
class Plan:
    device: str
    budget_bytes: int
    T: int
    batch: int
    costs_source: str
    strategies: list[Strategy]
    choice: str | None  # what training uses: the configured schedule, or for auto the fastest that fits
    fastest: str | None  # the fastest that fits among all candidates costed
    kinds: dict[str, ScheduleKind]
    generic: Costs = Costs()  # relative costs, for a searching schedule
    crossovers: dict = field(default_factory=dict)

    @property
    def chosen(self) -> Strategy | None:
        return next((s for s in self.strategies if s.name == self.choice), None)

    def run_plan(self, name: str | None = None) -> RunPlan:
        """The chosen strategy as the run's RunPlan (a ConfigError saying what would fit if none is);
        ``name``: another costed strategy's, fitting or not (to compare them)."""
        s = self.chosen if name is None else next(s for s in self.strategies if s.name == name)
        if s is None:
            raise ConfigError(refusal(self))
        kind = self.kinds[s.name].resolved(s.windows, self.generic)
        return RunPlan(self.device, self.T, self.batch, s.window, kind, self.generic, dict(self.crossovers),
                       s.peak_bytes, s.predicted_s, self.costs_source)

    def to_json(self) -> dict:
        return {"device": self.device, "budget_bytes": self.budget_bytes, "T": self.T, "batch": self.batch,
                "costs": self.costs_source, "choice": self.choice, "fastest_fitting": self.fastest,
                "crossovers": dict(self.crossovers), "strategies": [asdict(s) for s in self.strategies]}


def _strategy(name: str, kind: ScheduleKind, shape: NetShape, window: int, costs: WindowCosts, generic: Costs,
              budget: int, spec: DeviceSpec, tiles: Callable | None = None) -> Strategy:
    W = shape.windows(window)
    sched = kind.build(W, generic)
    parameters = kind.resolved(W, generic).parameters()
    if tiles is not None:
        return replace(tiles(name, sched, shape.steps, window), parameters=parameters)
    summary = summarize(sched)
    state, tape = shape.state_bytes(), shape.tape_bytes(window)
    local = predicted_local_bytes(sched, state, tape, summary)
    peak = (local + shape.param_bytes() + shape.batch_bytes() + shape.output_bytes(window)
            + shape.working_bytes(window))
    offchip = sched.max_offchip_slots * state
    transfers = (summary.stores["offchip"] + summary.loads["offchip"]) * state
    seconds = predicted_time(sched, costs.at(window, state), summary) + costs.optimizer
    return Strategy(name, sched.name, window, W, local, peak, offchip, sched.forward_steps, transfers, seconds,
                    peak <= budget and offchip <= spec.offchip_bytes, parameters=parameters)


#: the most windows the planner builds a schedule over: building and costing one is Python work linear in
#: the windows (two_level's interval search about 2.7 s at 5000 windows on one core), so a longer
#: sequence needs longer windows (bptt.window) rather than an unbounded wait
MAX_WINDOWS = 4096


def window_choices(steps: int, configured: int | None) -> list[int]:
    """The window lengths the planner tries: the configured one, or `WINDOWS` (and T itself when T is at
    most the largest), less those that would make more than MAX_WINDOWS windows."""
    if configured:
        options = [min(configured, steps)]
    else:
        options = sorted({w for w in WINDOWS if w < steps} | ({steps} if steps <= WINDOWS[-1] else set()))
    return [w for w in options if -(-steps // w) <= MAX_WINDOWS]


def check_sequence(steps: int, configured: int | None) -> None:
    """A ConfigError, in constant time, if no window the planner would try keeps T within MAX_WINDOWS."""
    if window_choices(steps, configured):
        return
    longest = min(configured, steps) if configured else WINDOWS[-1]
    raise ConfigError(f"T={steps} steps make {-(-steps // longest)} windows of {longest} steps; the planner builds "
                      f"BPTT schedules over at most {MAX_WINDOWS} windows. Set bptt.window to at least "
                      f"{-(-steps // MAX_WINDOWS)} steps, or a shorter T (data.steps, or a larger data.dt)")


def memory_floor(shape: NetShape, windows: list[int]) -> tuple[int, int]:
    """(bytes, window): the least any schedule could need, from shapes alone: parameters, the batch, the
    outputs, one taped window and its working buffers, at the leanest window; nothing is generated."""
    return min((shape.param_bytes() + shape.batch_bytes() + shape.output_bytes(w) + shape.working_bytes(w)
                + shape.tape_bytes(w), w) for w in windows)


def check_fits(cfg: Config, spec: DeviceSpec, *, n_inputs: int, n_classes: int, batch: int | None = None,
               budget_bytes: int | None = None) -> None:
    """Refuse, from arithmetic alone and before any schedule is generated or anything allocated, a run whose
    T makes too many windows or whose leanest conceivable plan exceeds the budget (a ConfigError naming
    the bytes and what would fit)."""
    shape = NetShape.of(cfg, n_inputs, n_classes, batch)
    check_sequence(shape.steps, cfg.bptt.window)
    if spec.name in TILE_PLANNERS:
        return  # the tiles decide, per tile
    budget = _budget(cfg, spec, budget_bytes)
    floor, window = memory_floor(shape, window_choices(shape.steps, cfg.bptt.window))
    if floor > budget:
        ratio = budget / floor
        raise ConfigError(
            f"no BPTT schedule fits {spec.name} with a budget of {budget / GiB:.2f} GiB: parameters, the batch "
            f"and one taped window of {window} steps alone need {floor / GiB:.2f} GiB (T={shape.steps}, batch "
            f"{shape.batch}, {sum(layer.n for layer in shape.layers)} neurons). Would fit: about "
            f"data.batch_size={max(1, int(shape.batch * ratio))}, or smaller layers, or a shorter T, or a larger "
            "bptt.budget_gib")


def check_evaluation_fits(cfg: Config, spec: DeviceSpec, window: int, batch: int | None = None) -> None:
    """Refuse, from arithmetic alone, an evaluation (nothing taped) that cannot fit ``spec``: parameters,
    the batch, the outputs and one window's working buffers (a ConfigError naming the bytes)."""
    from .data import input_shape

    n_inputs, n_classes = input_shape(cfg.data)
    shape = NetShape.of(cfg, n_inputs, n_classes, batch)
    window = min(window or shape.steps, shape.steps)
    need = shape.param_bytes() + shape.batch_bytes() + shape.output_bytes(window) + shape.working_bytes(window)
    budget = spec.local_bytes
    if need > budget:
        raise ConfigError(f"evaluating does not fit {spec.name} ({budget / GiB:.2f} GiB): parameters, a batch of "
                          f"{shape.batch} and windows of {window} steps need {need / GiB:.2f} GiB (T={shape.steps}); "
                          "evaluate with a smaller data.batch_size")


def _budget(cfg: Config, spec: DeviceSpec, budget_bytes: int | None) -> int:
    if budget_bytes is not None:
        return budget_bytes
    return int(cfg.bptt.budget_gib * GiB) if cfg.bptt.budget_gib else spec.local_bytes


#: a schedule that recomputes is there to save memory: its window is the leanest predicted within this
#: factor of its fastest (the fastest alone would take long windows, whose buffers undo the saving)
RECOMPUTE_TIME_SLACK = 1.2


def _window_of(name: str, options: list[Strategy], on_tiles: bool) -> Strategy:
    """One schedule's window: store_all's fastest that fits; a recomputing schedule's leanest within
    RECOMPUTE_TIME_SLACK of its fastest that fits; the leanest when none fits. On an IPU's tiles the
    fastest that fits: SRAM left over is not memory saved for anything else."""
    fitting = [s for s in options if s.fits]
    if not fitting:
        return min(options, key=lambda s: s.peak_bytes)
    fastest = min(fitting, key=lambda s: s.predicted_s)
    if name == "store_all" or on_tiles:
        return fastest
    near = [s for s in fitting if s.predicted_s <= RECOMPUTE_TIME_SLACK * fastest.predicted_s]
    return min(near, key=lambda s: (s.peak_bytes, s.predicted_s))


def plan(cfg: Config, spec: DeviceSpec, *, n_inputs: int, n_classes: int, budget_bytes: int | None = None,
         compare_all: bool = False, costs: WindowCosts | None = None, batch: int | None = None,
         crossovers: dict | None = None) -> Plan:
    """Cost every candidate of the schedule registry over every window length (or the configured one);
    each candidate keeps the window `_window_of` picks.

    Parameters
    ----------
    cfg : Config
        The run's config: its network, data shape and ``bptt`` section.
    spec : DeviceSpec
        The device planned for; an IPU's is costed by the graph model its package registers
        (`TILE_PLANNERS`).
    n_inputs, n_classes : int
        The data's shape.
    budget_bytes : int, optional
        Local memory the plan may use; default ``bptt.budget_gib``, else the device's.
    compare_all : bool
        Cost every schedule, not only the configured one.
    costs : WindowCosts, optional
        Measured window costs (`ipu_snn.calibration`); default, the spec's (`analytic_costs`).
    batch : int, optional
        Samples per forward pass; default ``data.batch_size``.
    crossovers : dict, optional
        Measured dense/sparse crossovers (`ipu_snn.calibration`), passed on to the RunPlan.

    Returns
    -------
    Plan
        Every strategy costed and the choice; ``run_plan()`` gives what the run executes.
    """
    check_fits(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, batch=batch, budget_bytes=budget_bytes)
    shape = NetShape.of(cfg, n_inputs, n_classes, batch)
    budget_bytes = _budget(cfg, spec, budget_bytes)
    costs = costs or analytic_costs(shape, spec)
    generic = costs.at(WINDOWS[0], shape.state_bytes())  # two_level's search only compares relative costs
    kinds = candidates(cfg.bptt, compare_all)
    make_tiles = TILE_PLANNERS.get(spec.name)
    if make_tiles is None and spec.tiles:
        raise ValueError(f"device {spec.name} is planned on its tiles: import ipu_snn.ipu, which registers "
                         "its tile planner (planner.TILE_PLANNERS)")
    tiles = make_tiles(cfg, spec, n_inputs, n_classes, shape.batch) if make_tiles is not None else None
    if tiles is not None:
        budget_bytes = spec.local_bytes  # the tiles' SRAM: a tile plan fits it or not
    strategies = []
    for name, kind in kinds.items():
        options = [_strategy(name, kind, shape, w, costs, generic, budget_bytes, spec, tiles)
                   for w in window_choices(shape.steps, cfg.bptt.window)]
        strategies.append(_window_of(name, options, tiles is not None))
    fitting = [s for s in strategies if s.fits]
    fastest = min(fitting, key=lambda s: s.predicted_s).name if fitting else None
    if cfg.bptt.schedule == "auto":
        choice = fastest
    else:
        choice = cfg.bptt.schedule if any(s.name == cfg.bptt.schedule for s in fitting) else None
    source = "the network op's graph (ipu_snn.ipu.graph_plan)" if tiles is not None else costs.source
    return Plan(spec.name, budget_bytes, shape.steps, shape.batch, source, strategies, choice, fastest, kinds,
                generic, dict(crossovers or {}))


def refusal(p: Plan) -> str:
    """Why the run cannot start, and what would fit: another schedule, a smaller batch, a shorter T."""
    if p.fastest is not None:
        return (f"bptt.schedule does not fit {p.device} within {p.budget_bytes / GiB:.2f} GiB (T={p.T}, batch "
                f"{p.batch}); {p.fastest} would: set bptt.schedule={p.fastest} or bptt.schedule=auto")
    best = min(p.strategies, key=lambda s: s.peak_bytes)
    ratio = p.budget_bytes / best.peak_bytes
    return (f"no BPTT schedule fits {p.device} with a budget of {p.budget_bytes / GiB:.2f} GiB: the leanest, "
            f"{best.name} with windows of {best.window} steps, needs {best.peak_bytes / GiB:.2f} GiB (T={p.T}, batch "
            f"{p.batch}). Would fit: about data.batch_size={max(1, int(p.batch * ratio))}, or smaller layers, or a "
            "larger bptt.budget_gib"
            + (", or bptt.schedule=auto to let the planner choose among all schedules." if len(p.strategies) == 1
               else "."))


# ------------------------------------------------------------------------------ IPU: the tiles decide

#: device (spec) name -> ``make(cfg, spec, n_inputs, n_classes, batch)``, which returns
#: ``cost(name, schedule, T, window) -> Strategy`` from the device's own memory model (an IPU's: its network
#: op's graph). The IPU package registers its own (ipu_snn.ipu.tile_planning) when imported, so that the
#: planner never imports it and a CPU or GPU plan never loads it.
TILE_PLANNERS: dict[str, Callable] = {}


def register_tile_planner(names, make: Callable) -> None:
    """Plan the devices ``names`` on their tiles with ``make`` (see `TILE_PLANNERS`)."""
    for name in names:
        TILE_PLANNERS[name] = make


__all__ = ["LayerShape", "MAX_WINDOWS", "NetShape", "Plan", "RunPlan", "Strategy", "TILE_PLANNERS", "WindowCosts",
           "analytic_costs", "candidates", "check_evaluation_fits", "check_fits", "check_sequence", "memory_floor", "plan", "refusal",
           "register_tile_planner", "window_choices"]
