"""A run's plan on one IPU's tiles: the tile planner the planner calls (`tile_planner`, registered by
ipu_snn.ipu), the tile plan of a config's chosen window (`plan_for_config`), and the longest sequence each
schedule fits (`largest_steps`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..bptt import Costs, Schedule, store_all
from ..config import Config
from ..devices import DeviceSpec, device_spec
from ..planner import SAVED_BYTES, Plan, candidates, plan, window_choices
from .tiles import TimeOnTiles, fits_on_tiles, plan_tiles


def tile_planner(cfg: Config, spec: DeviceSpec, n_inputs: int, n_classes: int, batch: int, suggest: bool = False):
    """(T, window, schedule over the windows) -> the TilePlan of the config's network on one IPU."""

    def tiles(steps: int, window: int, schedule: Schedule):
        return plan_tiles(cfg.model, n_inputs, n_classes, batch, spec, cfg.model.sparse_capacity,
                          time=TimeOnTiles(steps, min(window, steps), schedule),
                          surrogate_bytes=SAVED_BYTES[cfg.model.fused_saved_dtype], suggest=suggest)

    return tiles


def plan_for_config(cfg: Config, n_inputs: int, n_classes: int, batch: int, spec: DeviceSpec | None = None,
                    result: Plan | None = None):
    """The tile plan of a run's config on one IPU, as ``ipu-snn plan`` and the IPU trainer make it.

    ``batch``: the samples one IPU holds at once (the trainer's micro-batch); ``spec``: default, the
    config's device (``ipu``, ``ipu-model`` and ``ipu-emulator`` plan for a Mk2); ``result``: the plan
    already made for them. The time loop is the planner's choice for the config: its schedule (for
    ``auto`` the fastest that fits) with the fastest window that fits the tiles, and the stored
    surrogate at ``model.fused_saved_dtype``. When nothing fits, the configured schedule's leanest
    window, refused with what would fit (another schedule, a smaller batch, smaller layers).
    """
    spec = spec or device_spec(cfg.device)
    p = result or plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, batch=batch)
    chosen = p.chosen or min((s for s in p.strategies if s.name == cfg.bptt.schedule or cfg.bptt.schedule == "auto"),
                             key=lambda s: s.peak_bytes)
    windows = -(-p.T // chosen.window)
    factory = p.factories[chosen.name]
    sched = store_all(windows) if factory is None else factory(windows)
    tiles = tile_planner(cfg, spec, n_inputs, n_classes, batch, suggest=True)(p.T, chosen.window, sched)
    if not tiles.fits:
        others = p if len(p.strategies) > 1 else plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes,
                                                      batch=batch, compare_all=True)
        if others.fastest and others.fastest != chosen.name:
            tiles = replace(tiles, suggestion=f"{tiles.suggestion} Or bptt.schedule={others.fastest}, which fits "
                                              "(ipu-snn plan compares every schedule).".strip())
    return tiles


def largest_steps(cfg: Config, spec: DeviceSpec, n_inputs: int, n_classes: int, batch: int,
                  factory: Callable[[int], Schedule] | None, cap: int) -> tuple[int, int | None]:
    """The largest T <= ``cap`` whose time loop fits one IPU's tiles under ``factory`` (None: store_all),
    with some window of `window_choices`; and that window (None when not even T = 1 fits)."""
    def window_that_fits(steps: int) -> int | None:
        for window in window_choices(steps, cfg.bptt.window):
            time = TimeOnTiles.of(steps, window, factory)
            if fits_on_tiles(cfg.model, n_inputs, n_classes, batch, spec, time, cfg.model.sparse_capacity,
                             surrogate_bytes=SAVED_BYTES[cfg.model.fused_saved_dtype]):
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


def largest_steps_table(cfg: Config, spec: DeviceSpec, n_inputs: int, n_classes: int, batch: int) -> dict:
    """For every candidate schedule, the largest T that fits one IPU's tiles, next to store_all's; the
    search stops at LARGEST_T_FACTOR times store_all's (reported as ``at_cap``)."""
    generic = Costs()  # two_level's interval search compares relative costs only
    factories = candidates(cfg.bptt, generic, compare_all=True)
    base, base_window = largest_steps(cfg, spec, n_inputs, n_classes, batch, None, cap=1 << 30)
    cap = max(1, base) * LARGEST_T_FACTOR
    table = {}
    for name, factory in factories.items():
        steps, window = (base, base_window) if factory is None else largest_steps(
            cfg, spec, n_inputs, n_classes, batch, factory, cap)
        table[name] = {"T": steps, "window": window, "at_cap": factory is not None and steps >= cap,
                       "vs_store_all": round(steps / base, 2) if base else None}
    return {"cap": cap, "batch": batch, "schedules": table}
