"""Pick a BPTT schedule that fits the device, before anything large is allocated.

For a config the planner measures the network's per-step footprint once, on a
batch of one and two samples on the CPU, with the engine's own accounting
(state bytes per checkpoint, bytes autograd keeps per taped step), and scales it
to the real batch: every such byte count is affine in the batch size. From
these and a device spec it predicts, for each candidate schedule, local and
off-chip bytes, forward steps, transfer bytes and time, and chooses the fastest
candidate that fits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .bptt import Costs, Schedule, ScanStats, double, predicted_local_bytes, predicted_time, revolve, scan
from .bptt import store_all, summarize, two_level_optimal, uniform
from .config import BPTTConfig, Config, ModelConfig
from .devices import DeviceSpec, GiB
from .errors import ConfigError
from .saved_bytes import saved_bytes

FLOAT_BYTES = 4


@dataclass(frozen=True)
class Footprint:
    """Bytes and work of the network for one batch size."""

    state_bytes: int  # one checkpoint of the whole network state
    tape_bytes_per_step: int  # what autograd keeps for one taped step
    param_bytes: int  # parameters, gradients and two Adam moments: 4 copies
    input_bytes_per_step: int  # one step's slice of the input batch
    output_bytes_per_step: int  # one step's readout and spike-rate outputs
    flops_per_step: float  # forward multiply-adds x 2
    fused_bytes_per_step: int = 0  # what the fused time loop keeps per step (0: the model cannot run fused)


def _probe(model_cfg: ModelConfig, n_inputs: int, n_classes: int, batch: int):
    from .network import build_network  # the network imports the engine; keep the planner importable alone

    torch.manual_seed(0)
    net = build_network(model_cfg, n_inputs, n_classes, dt=1e-3, schedule=store_all)
    net(torch.zeros(batch, 2, n_inputs))
    return net.last_scan, net


def _fused_saved_bytes(model_cfg: ModelConfig, n_inputs: int, n_classes: int, batch: int, steps: int) -> int:
    """Bytes autograd keeps for a fused forward, less parameters and the input batch (the caller's)."""
    from .fused import FusedLoop
    from .network import build_network

    net = build_network(model_cfg, n_inputs, n_classes, dt=1e-3)
    net.fused = FusedLoop(net.fused.saved_dtype, "reference")  # same bytes as any backend, nothing to compile
    x = torch.zeros(batch, steps, n_inputs)
    return saved_bytes(lambda: net(x), [*net.parameters(), x])


def footprint(model_cfg: ModelConfig, n_inputs: int, n_classes: int, batch: int,
              fused: bool = True) -> Footprint:
    """``fused``: whether the device runs model.fused (DeviceSpec.fused)."""
    from .network import use_fused

    if not fused:
        model_cfg = model_cfg.model_copy(update={"fused": False})
    (one, net), (two, _) = (_probe(model_cfg, n_inputs, n_classes, b) for b in (1, 2))

    def at(a: int, b: int) -> int:  # affine in the batch size
        return a + (b - a) * (batch - 1)

    fused = 0
    if use_fused(model_cfg):  # per step: the difference of a 2-step and a 1-step forward, at batch 1 and 2
        per_step = [_fused_saved_bytes(model_cfg, n_inputs, n_classes, b, 2)
                    - _fused_saved_bytes(model_cfg, n_inputs, n_classes, b, 1) for b in (1, 2)]
        fused = at(*per_step)

    weights = [p for p in net.parameters() if p.requires_grad]
    macs = sum(p.numel() for p in weights if p.dim() == 2)  # one multiply-add per weight per sample and step
    return Footprint(
        state_bytes=at(one.state_bytes, two.state_bytes),
        tape_bytes_per_step=at(one.tape_bytes_per_step, two.tape_bytes_per_step),
        param_bytes=4 * FLOAT_BYTES * sum(p.numel() for p in weights),
        input_bytes_per_step=batch * n_inputs * FLOAT_BYTES,
        output_bytes_per_step=batch * (n_classes + len(model_cfg.layers)) * FLOAT_BYTES,
        flops_per_step=2.0 * batch * macs,
        fused_bytes_per_step=fused,
    )


def costs_for(fp: Footprint, spec: DeviceSpec) -> Costs:
    step = max(fp.flops_per_step / spec.fp32_flops, spec.step_floor_s)
    return Costs(step=step, reverse=2 * step,
                 local_write=fp.state_bytes / spec.local_bandwidth, local_read=fp.state_bytes / spec.local_bandwidth,
                 offchip_write=fp.state_bytes / spec.offchip_bandwidth,
                 offchip_read=fp.state_bytes / spec.offchip_bandwidth)


# ------------------------------------------------------------------------ candidates


def _root(T: int) -> int:
    return max(1, math.isqrt(T - 1) + 1) if T > 1 else 1


def schedule_factory(bptt: BPTTConfig, costs: Costs | None = None) -> Callable[[int], Schedule] | None:
    """T -> Schedule for an explicit ``bptt.schedule``; None means the plain layered store_all path."""
    kind = bptt.schedule
    if kind == "store_all":
        return None
    if kind == "uniform":
        return lambda T: uniform(T, bptt.every or _root(T))
    if kind == "revolve":
        return lambda T: revolve(T, bptt.slots or _root(T))
    if kind == "double":
        return lambda T: double(T, bptt.offchip_every or _root(T),
                                bptt.local_slots or bptt.offchip_every or _root(T), bptt.inner)
    if kind == "two_level":
        return lambda T: two_level_optimal(T, bptt.local_slots or _root(T), bptt.offchip_slots or T,
                                           costs or Costs())
    raise ConfigError("bptt.schedule: 'auto' is resolved by the planner, not by schedule_factory")


def candidates(bptt: BPTTConfig, T: int, costs: Costs, compare_all: bool = False
               ) -> dict[str, Callable[[int], Schedule] | None]:
    """The configured schedule first; for ``auto`` (or ``compare_all``) a spread of memory/time trade-offs."""
    configured = {} if bptt.schedule == "auto" else {bptt.schedule: schedule_factory(bptt, costs)}
    if configured and not compare_all:
        return configured
    root = _root(T)
    log_slots = max(1, math.ceil(math.log2(max(T, 2))))
    return {
        "store_all": None,
        "uniform": lambda T: uniform(T, root),
        "revolve": lambda T: revolve(T, root),
        "revolve_log": lambda T: revolve(T, log_slots),
        "double": lambda T: double(T, root, root),
        "two_level": lambda T: two_level_optimal(T, root, T, costs),
    } | configured


# ------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Strategy:
    name: str
    schedule: str
    local_bytes: int
    offchip_bytes: int
    forward_steps: int
    transfer_bytes: int
    predicted_s: float
    fits: bool


@dataclass
class Plan:
    device: str
    budget_bytes: int
    T: int
    batch: int
    strategies: list[Strategy]
    choice: str | None  # what training uses: the configured schedule, or for auto the fastest that fits
    fastest: str | None  # the fastest that fits among all candidates costed
    factories: dict[str, Callable[[int], Schedule] | None]

    @property
    def schedule(self) -> Callable[[int], Schedule] | None:
        return self.factories[self.choice] if self.choice else None

    def to_json(self) -> dict:
        return {"device": self.device, "budget_bytes": self.budget_bytes, "T": self.T, "batch": self.batch,
                "choice": self.choice, "fastest_fitting": self.fastest, "strategies": [asdict(s) for s in self.strategies]}


def plan(cfg: Config, spec: DeviceSpec, *, n_inputs: int, n_classes: int,
         budget_bytes: int | None = None, compare_all: bool = False) -> Plan:
    """Cost every candidate; the choice is the configured schedule if it fits, else (auto) the fastest that fits."""
    T, batch = cfg.data.num_steps, cfg.data.batch_size
    if budget_bytes is None:
        budget_bytes = int(cfg.bptt.budget_gib * GiB) if cfg.bptt.budget_gib else spec.local_bytes
    fp = footprint(cfg.model, n_inputs, n_classes, batch, spec.fused)
    costs = costs_for(fp, spec)
    fixed = fp.param_bytes + T * fp.output_bytes_per_step
    # On an accelerator the engine's schedules leave the input batch in host memory
    # and copy each step's slice over; a taped step then also holds that slice.
    has_host = spec.name != "cpu"
    factories = candidates(cfg.bptt, T, costs, compare_all)
    strategies = []
    for name, factory in factories.items():
        sched = store_all(T) if factory is None else factory(T)
        summary = summarize(sched)
        streams = has_host and factory is not None
        if factory is None and fp.fused_bytes_per_step:  # store_all runs as the fused time loop
            local = fixed + T * fp.fused_bytes_per_step
        else:
            local = fixed + predicted_local_bytes(sched, fp.state_bytes,
                                                  fp.tape_bytes_per_step + streams * fp.input_bytes_per_step)
        local += 0 if streams else T * fp.input_bytes_per_step
        offchip = sched.max_offchip_slots * fp.state_bytes + streams * T * fp.input_bytes_per_step
        transfers = (summary.stores["offchip"] + summary.loads["offchip"]) * fp.state_bytes
        strategies.append(Strategy(name, sched.name, local, offchip, sched.forward_steps, transfers,
                                   predicted_time(sched, costs), local <= budget_bytes and offchip <= spec.offchip_bytes))
    fitting = [s for s in strategies if s.fits]
    fastest = min(fitting, key=lambda s: s.predicted_s).name if fitting else None
    if cfg.bptt.schedule == "auto":
        choice = fastest
    else:
        choice = cfg.bptt.schedule if any(s.name == cfg.bptt.schedule for s in fitting) else None
    return Plan(spec.name, budget_bytes, T, batch, strategies, choice, fastest, factories)


def refusal(p: Plan) -> str:
    """Why the run cannot start, and what would fit: another schedule, a smaller batch, a shorter T."""
    if p.fastest is not None:
        return (f"bptt.schedule does not fit {p.device} within {p.budget_bytes / GiB:.2f} GiB (T={p.T}, batch {p.batch}); "
                f"{p.fastest} would: set bptt.schedule={p.fastest} or bptt.schedule=auto")
    best = min(p.strategies, key=lambda s: s.local_bytes)
    ratio = p.budget_bytes / best.local_bytes
    return (f"no BPTT schedule fits {p.device} with a budget of {p.budget_bytes / GiB:.2f} GiB: the leanest, "
            f"{best.name}, needs {best.local_bytes / GiB:.2f} GiB (T={p.T}, batch {p.batch}). Would fit: about "
            f"data.batch_size={max(1, int(p.batch * ratio))}, or about data.steps={max(1, int(p.T * ratio))} if memory "
            "grows with T, or a larger bptt.budget_gib"
            + (", or bptt.schedule=auto to let the planner choose among all schedules." if len(p.strategies) == 1 else "."))
