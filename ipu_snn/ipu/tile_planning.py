"""The planner's view of an IPU: every candidate schedule and window judged by the network op's graph
(`graph_plan.GraphModel`), the one IPU memory model.

Registered with the planner (`ipu_snn.planner.register_tile_planner`) when ``ipu_snn.ipu`` is
imported, so that the planner itself never imports it. `plan_for_config` gives the graph's count of the
window chosen, and `largest_steps` the longest sequence each schedule fits on one IPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bptt import Costs, store_all
from ..bptt.registry import ScheduleKind
from ..config import Config
from ..devices import DeviceSpec
from ..planner import Plan, Strategy, candidates, plan, register_tile_planner, window_choices
from .graph_plan import Candidate, GraphModel, graph_plan, optimizer_slots
from .interpreter import MK2_TILES

#: The IPUs the network op's graph is counted for: the GC200 (its tiles and SRAM are the graph's target).
DEVICES = ("ipu-mk2",)
_MODELS: dict[tuple, GraphModel] = {}


def graph_model(cfg: Config, n_inputs: int, n_classes: int, batch: int) -> GraphModel:
    """The config's `GraphModel` for ``batch`` samples (one per network, batch and optimizer, kept: the
    planner, the largest-T search and the plan share its counting graphs)."""
    key = (cfg.model.model_dump_json(), n_inputs, n_classes, batch, optimizer_slots(cfg.training))
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = GraphModel(cfg.model, n_inputs, n_classes, batch, optimizer_slots(cfg.training))
    return _MODELS[key]


def _check_device(spec: DeviceSpec) -> None:
    if spec.name not in DEVICES:
        raise ValueError(f"the network op's graph is counted for {', '.join(DEVICES)}, not {spec.name}")


def tile_strategies(cfg: Config, spec: DeviceSpec, n_inputs: int, n_classes: int, batch: int):
    """The planner's hook: ``cost(name, schedule, T, window) -> Strategy`` from the graph's model: its bytes at
    the most samples per pass that fit (the fullest tile at the least it needs when none does), its time at
    whole-batch passes (every candidate reverses T steps, so the pass size shifts every candidate's backward
    alike)."""
    _check_device(spec)
    model = graph_model(cfg, n_inputs, n_classes, batch)

    def cost(name: str, sched, steps: int, window: int) -> Strategy:
        c = Candidate.of(steps, window, sched)
        passes = model.samples_per_pass(c)
        fullest = (model.max_tile_bytes(c, passes) if passes else
                   min(model.max_tile_bytes(c, p) for p in model.pass_sizes() if p in model.counted_passes()))
        offchip = model.streaming_bytes(c)
        transfers = sum(1 for a in c.actions if a[0] in (2, 3) and a[4]) * model.base(model.batch).remote_per_slot
        return Strategy(name, sched.name, c.window, c.windows, model.kept_bytes(c), fullest * MK2_TILES, offchip,
                        sched.forward_steps, transfers, model.time(c)["total_s"], passes is not None, fullest)

    return cost


register_tile_planner(DEVICES, tile_strategies)


@dataclass(frozen=True)
class GraphTilePlan:
    """The graph's count of one replica's network op under the planner's choice (`graph_plan`'s dict as
    ``tiles``), its time loop, and what would fit when it does not."""

    tiles: dict
    schedule: str
    steps: int
    window: int
    windows: int
    suggestion: str = ""

    @property
    def fits(self) -> bool:
        return self.tiles["fits"]

    def refusal(self) -> str:
        """Empty when the plan fits; otherwise what overflows and what would fit."""
        if self.fits:
            return ""
        t = self.tiles
        if t["max_tile_bytes"] <= t["tile_capacity_bytes"]:
            return (f"The off-chip checkpoints need {t['streaming_bytes'] / 2**30:.1f} GiB of streaming memory, "
                    f"more than the {t['streaming_capacity_bytes'] / 2**30:.0f} GiB of one ipu-mk2: use fewer "
                    "off-chip checkpoints (bptt.offchip_every larger) or a shorter T.")
        full = t["fullest_tile"]
        kinds = ", ".join(f"{k} {v / 1024:.0f}" for k, v in sorted(full["bytes_by_kind"].items(), key=lambda kv: -kv[1])
                          if v)
        return (f"The network does not fit one ipu-mk2: tile {full['tile']} needs {full['bytes'] / 1024:.0f} KiB of "
                f"its {t['tile_capacity_bytes'] / 1024:.0f} KiB SRAM by the network op's graph (KiB by kind: {kinds}; "
                f"largest: {', '.join(x['name'] for x in full['largest'][:3])}). {self.suggestion}".strip())


def plan_for_config(cfg: Config, n_inputs: int, n_classes: int, batch: int, spec: DeviceSpec | None = None,
                    result: Plan | None = None, rate: float = 0.05) -> GraphTilePlan:
    """The graph's count of a run's network op on one IPU, as ``ipu-snn plan`` and the IPU trainer make it.

    ``batch``: the samples one IPU holds at once (the trainer's micro-batch); ``spec``: default, the
    config's device (``ipu``, ``ipu-model`` and ``ipu-emulator`` plan for a Mk2); ``result``: the plan
    already made for them; ``rate``: spikes per neuron and step for the time model. The time loop is the
    planner's choice for the config: its schedule (for ``auto`` the fastest that fits) with the fastest
    window that fits the tiles. When nothing fits, the configured schedule's leanest window, counted and
    refused, naming a schedule that fits if another one does.
    """
    from ..devices import device_spec

    spec = spec or device_spec(cfg.device)
    p = result or plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, batch=batch)
    chosen = p.chosen or min((s for s in p.strategies if s.name == cfg.bptt.schedule or cfg.bptt.schedule == "auto"),
                             key=lambda s: s.peak_bytes)
    sched = p.kinds[chosen.name].build(-(-p.T // chosen.window), p.generic)
    model = graph_model(cfg, n_inputs, n_classes, batch)
    tiles = graph_plan(cfg.model, n_inputs, n_classes, batch, p.T, chosen.window, sched, rate,
                       optimizer_slots(cfg.training), model)
    out = GraphTilePlan(tiles, sched.name, p.T, min(chosen.window, p.T), sched.T)
    if not out.fits:
        others = p if len(p.strategies) > 1 else plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes,
                                                      batch=batch, compare_all=True)
        if others.fastest and others.fastest != chosen.name:
            out = GraphTilePlan(tiles, sched.name, p.T, out.window, sched.T,
                                f"Or bptt.schedule={others.fastest}, which fits (ipu-snn plan compares every "
                                "schedule).")
    return out


def largest_steps(cfg: Config, n_inputs: int, n_classes: int, batch: int,
                  kind: ScheduleKind | None, cap: int) -> tuple[int, int | None]:
    """The largest T <= ``cap`` whose time loop fits one IPU's tiles by the graph's model under the schedule
    ``kind`` (None: store_all), with some window of `window_choices`; and that window (None when not even
    T = 1 fits)."""
    model = graph_model(cfg, n_inputs, n_classes, batch)

    def window_that_fits(steps: int) -> int | None:
        for window in window_choices(steps, cfg.bptt.window):
            windows = -(-steps // min(window, steps))
            sched = store_all(windows) if kind is None or kind.name == "store_all" else kind.build(windows, Costs())
            if model.fits(Candidate.of(steps, window, sched)):
                return window
        return None

    if window_that_fits(1) is None:
        return 0, None
    low = 1  # doubling first keeps the schedules it builds small
    while low * 2 <= cap and window_that_fits(low * 2) is not None:
        low *= 2
    if low * 2 > cap:
        window = window_that_fits(cap)
        if window is not None:
            return cap, window
    high = min(cap, low * 2)  # fits at low, not at high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if window_that_fits(mid) is not None else (low, mid)
    return low, window_that_fits(low)


#: how much longer than store_all's the largest-T search looks (the seed paper's bar is 10x)
LARGEST_T_FACTOR = 100


def largest_steps_table(cfg: Config, n_inputs: int, n_classes: int, batch: int) -> dict:
    """For every candidate schedule, the largest T that fits one IPU's tiles by the graph's model, next to
    store_all's; the search stops at LARGEST_T_FACTOR times store_all's (reported as ``at_cap``)."""
    kinds = candidates(cfg.bptt, compare_all=True)
    base, base_window = largest_steps(cfg, n_inputs, n_classes, batch, None, cap=1 << 30)
    cap = max(1, base) * LARGEST_T_FACTOR
    table = {}
    for name, kind in kinds.items():
        recomputes = name != "store_all"
        steps, window = largest_steps(cfg, n_inputs, n_classes, batch, kind, cap) if recomputes \
            else (base, base_window)
        table[name] = {"T": steps, "window": window, "at_cap": recomputes and steps >= cap,
                       "vs_store_all": round(steps / base, 2) if base else None}
    return {"cap": cap, "batch": batch, "schedules": table, "source": "graph"}


__all__ = ["DEVICES", "GraphTilePlan", "LARGEST_T_FACTOR", "graph_model", "largest_steps", "largest_steps_table",
           "plan_for_config", "tile_strategies"]
