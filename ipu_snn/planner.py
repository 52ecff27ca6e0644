"""Pick the time loop's window and BPTT schedule, predicting bytes and time before anything is allocated.

Bytes come from shapes alone (`NetShape`): what one taped window keeps for
backward (spikes as bits, surrogate derivatives in ``fused_saved_dtype``, the
pre-step state of learned decays, near-threshold bits), one window-boundary
checkpoint (every layer's v, a, last spikes; the readout's membrane), the
parameters with their gradients and Adam moments, the batch (packed bits), and
the working buffers of the window that runs. The executor counts the same
taped and checkpoint bytes as it runs (``ScanStats.peak_local_bytes``), and the
tests hold the two within 10%. So a config that cannot fit is refused in
seconds, naming what would.

Time comes from costs per window: on the machine a run uses, measured
(`calibrate`: one window of two lengths, untaped, taped and reversed, at the
real shapes and batch; the per-window constant and the per-step cost are the
line through the two); for another device, from its spec (`analytic_costs`).
A schedule's time is then its window counts times these costs
(``bptt.predicted_time``), plus the optimizer step.

On an IPU the tiles decide: every candidate schedule and window is laid out on
the tiles by the tile model ipu_snn.ipu registers (`register_tile_planner`), it
fits when every tile fits its SRAM (and the off-chip checkpoints the streaming
memory), and its time is the tile plan's model.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .bptt import Costs, Schedule, double, predicted_local_bytes, predicted_time, revolve, store_all, summarize
from .bptt import two_level_optimal, uniform
from .config import BPTTConfig, Config
from .devices import DeviceSpec, GiB
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
                                     layer.dropout > 0))
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
        dense inputs; an estimate of the peak, for the budget."""
        widest = max(max(layer.n, layer.n_in) for layer in self.layers)
        return self.batch * window * FLOAT_BYTES * 5 * widest

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


def calibrate(cfg: Config, n_inputs: int, n_classes: int, batch: int, density: float = 0.05,
              device: str = "cpu", lengths: tuple[int, int] = (16, 64), repeats: int = 3) -> WindowCosts:
    """Measure the costs of one window on this machine: the real shapes and batch, Bernoulli inputs."""
    from .executor import TimeLoop
    from .network import build_network, pack_inputs

    torch_device = torch.device("cuda" if device == "cuda" else "cpu")
    sync = torch.cuda.synchronize if torch_device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    samples = {}
    for length in lengths:
        torch.manual_seed(0)
        net = build_network(cfg.model, n_inputs, n_classes, dt=cfg.data.step_seconds, loop=TimeLoop(length),
                            binary_inputs=cfg.data.binary, device=device).to(torch_device)
        frames = (torch.rand(batch, length, n_inputs, generator=gen) < density).float()
        x = (pack_inputs(frames) if cfg.data.binary else frames).to(torch_device)
        forward, tape, reverse = [], [], []
        for _ in range(repeats + 1):  # the first is a warm-up
            sync()
            start = time.perf_counter()
            with torch.no_grad():
                net(x)
            sync()
            mid = time.perf_counter()
            out = net(x)
            sync()
            end = time.perf_counter()
            out.logits.sum().backward()
            sync()
            done = time.perf_counter()
            forward.append(mid - start)
            tape.append(end - mid - (mid - start))
            reverse.append(done - end)
        # the fastest repeat: other jobs on the machine only ever add time
        samples[length] = [min(v[1:]) for v in (forward, tape, reverse)]
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.Adam(params)
    times = []
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
    (l0, c0), (l1, c1) = sorted(samples.items())

    def line(i):
        per_step = max((c1[i] - c0[i]) / (l1 - l0), 0.0)
        return max(c0[i] - per_step * l0, 0.0), per_step

    bandwidth = 10e9 if torch_device.type == "cpu" else 20e9  # host copies: RAM, or pinned PCIe
    return WindowCosts(line(0), line(1), line(2), min(times[1:]), bandwidth,
                       f"measured here ({torch_device.type}, windows of {l0} and {l1} steps)")


# ------------------------------------------------------------------------------ candidates


def _root(n: int) -> int:
    return max(1, math.isqrt(n - 1) + 1) if n > 1 else 1


def schedule_factory(bptt: BPTTConfig, costs: Costs | None = None) -> Callable[[int], Schedule] | None:
    """windows -> Schedule for an explicit ``bptt.schedule``; None means store_all (every window taped)."""
    kind = bptt.schedule
    if kind == "store_all":
        return None
    if kind == "uniform":
        return lambda W: uniform(W, bptt.every or _root(W))
    if kind == "revolve":
        return lambda W: revolve(W, bptt.slots or _root(W))
    if kind == "double":
        # within a segment loaded from off-chip, every window is taped once (inner uniform with no local
        # checkpoint) unless local_slots says otherwise: one recomputation per window, the fastest inner
        return lambda W: double(W, bptt.offchip_every or _root(W), bptt.local_slots or 0,
                                bptt.inner if bptt.local_slots else "uniform")
    if kind == "two_level":
        return lambda W: two_level_optimal(W, bptt.local_slots or _root(W), bptt.offchip_slots or W,
                                           costs or Costs())
    raise ValueError("bptt.schedule: 'auto' is resolved by the planner, not by schedule_factory")


def candidates(bptt: BPTTConfig, costs: Costs, compare_all: bool = False
               ) -> dict[str, Callable[[int], Schedule] | None]:
    """The configured schedule first; for ``auto`` (or ``compare_all``) a spread of memory/time trade-offs."""
    configured = {} if bptt.schedule == "auto" else {bptt.schedule: schedule_factory(bptt, costs)}
    if configured and not compare_all:
        return configured
    return {
        "store_all": None,
        "uniform": lambda W: uniform(W, _root(W)),
        "revolve": lambda W: revolve(W, _root(W)),
        "double": lambda W: double(W, _root(W), 0, "uniform"),
        "two_level": lambda W: two_level_optimal(W, _root(W), W, costs),
    } | configured


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
    factories: dict[str, Callable[[int], Schedule] | None]

    @property
    def chosen(self) -> Strategy | None:
        return next((s for s in self.strategies if s.name == self.choice), None)

    def loop(self):
        """The chosen strategy as the executor's TimeLoop."""
        from .executor import TimeLoop

        s = self.chosen
        return TimeLoop(s.window, self.factories[s.name]) if s else None

    def to_json(self) -> dict:
        return {"device": self.device, "budget_bytes": self.budget_bytes, "T": self.T, "batch": self.batch,
                "costs": self.costs_source, "choice": self.choice, "fastest_fitting": self.fastest,
                "strategies": [asdict(s) for s in self.strategies]}


def _strategy(name: str, factory, shape: NetShape, window: int, costs: WindowCosts, budget: int,
              spec: DeviceSpec, tiles: Callable | None = None) -> Strategy:
    W = shape.windows(window)
    sched = store_all(W) if factory is None else factory(W)
    if tiles is not None:
        return _on_tiles(name, sched, tiles(shape.steps, window, sched))
    summary = summarize(sched)
    state, tape = shape.state_bytes(), shape.tape_bytes(window)
    local = predicted_local_bytes(sched, state, tape)
    peak = (local + shape.param_bytes() + shape.batch_bytes() + shape.output_bytes(window)
            + shape.working_bytes(window))
    offchip = sched.max_offchip_slots * state
    transfers = (summary.stores["offchip"] + summary.loads["offchip"]) * state
    seconds = predicted_time(sched, costs.at(window, state)) + costs.optimizer
    return Strategy(name, sched.name, window, W, local, peak, offchip, sched.forward_steps, transfers, seconds,
                    peak <= budget and offchip <= spec.offchip_bytes)


def window_choices(steps: int, configured: int | None) -> list[int]:
    if configured:
        return [min(configured, steps)]
    return sorted({w for w in WINDOWS if w < steps} | ({steps} if steps <= WINDOWS[-1] else set()))


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
         compare_all: bool = False, costs: WindowCosts | None = None, batch: int | None = None) -> Plan:
    """Cost every candidate over every window length (or the configured one); each candidate keeps the
    window `_window_of` picks. ``costs``: measured ones (`calibrate`); default, the spec's."""
    shape = NetShape.of(cfg, n_inputs, n_classes, batch)
    if budget_bytes is None:
        budget_bytes = int(cfg.bptt.budget_gib * GiB) if cfg.bptt.budget_gib else spec.local_bytes
    costs = costs or analytic_costs(shape, spec)
    generic = costs.at(WINDOWS[0], shape.state_bytes())  # two_level's search only compares relative costs
    factories = candidates(cfg.bptt, generic, compare_all)
    tiles = _tile_planner(cfg, spec, n_inputs, n_classes, shape.batch)
    if tiles is not None:
        budget_bytes = spec.local_bytes  # the tiles' SRAM: a tile plan fits it or not
    strategies = []
    for name, factory in factories.items():
        options = [_strategy(name, factory, shape, w, costs, budget_bytes, spec, tiles)
                   for w in window_choices(shape.steps, cfg.bptt.window)]
        strategies.append(_window_of(name, options, tiles is not None))
    fitting = [s for s in strategies if s.fits]
    fastest = min(fitting, key=lambda s: s.predicted_s).name if fitting else None
    if cfg.bptt.schedule == "auto":
        choice = fastest
    else:
        choice = cfg.bptt.schedule if any(s.name == cfg.bptt.schedule for s in fitting) else None
    source = "the tile plan's model (ipu_snn.ipu.tiles)" if tiles is not None else costs.source
    return Plan(spec.name, budget_bytes, shape.steps, shape.batch, source, strategies, choice, fastest, factories)


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

#: DeviceSpec name -> its tile model: ``(cfg, spec, n_inputs, n_classes, batch, suggest)`` -> a function of
#: ``(T, window, schedule over the windows)`` giving the run's TilePlan. The package that models a device's
#: tiles sits above this layer and registers it when imported (ipu_snn.ipu for the IPUs).
TILE_PLANNERS: dict[str, Callable] = {}


def register_tile_planner(spec_name: str, planner: Callable) -> None:
    """Plan runs on devices of ``spec_name`` on their tiles with ``planner`` (see `TILE_PLANNERS`)."""
    TILE_PLANNERS[spec_name] = planner


def _tile_planner(cfg: Config, spec: DeviceSpec, n_inputs: int, n_classes: int, batch: int, suggest: bool = False):
    """The tile model's planner of ``spec`` bound to the config's network, or None for a device without tiles."""
    if not spec.tiles:
        return None
    if spec.name not in TILE_PLANNERS:
        raise RuntimeError(f"{spec.name} is planned on its tiles, and no tile model is registered for it: "
                           "import ipu_snn.ipu (which registers the IPUs') before planning")
    return TILE_PLANNERS[spec.name](cfg, spec, n_inputs, n_classes, batch, suggest)


def _on_tiles(name: str, sched: Schedule, tiles) -> Strategy:
    residency = sum(t.bytes_by_kind["history"] + t.bytes_by_kind["checkpoints"] for t in tiles.tiles)
    return Strategy(name, sched.name, tiles.time.window, tiles.time.windows, residency,
                    tiles.max_tile_bytes * tiles.tiles_total, tiles.streaming_bytes, sched.forward_steps,
                    tiles.streaming_transfer_bytes, tiles.predicted_seconds()["total_s"], tiles.fits,
                    tiles.max_tile_bytes)


__all__ = ["LayerShape", "NetShape", "Plan", "Strategy", "WindowCosts", "analytic_costs", "calibrate", "candidates",
           "plan", "refusal", "register_tile_planner", "schedule_factory", "window_choices"]
