"""Calibration: what the planner measures on this machine, as an explicit step whose result is an input.

Two measurements, each at the real shapes: the window costs (`measure_window_costs`: one window of two
lengths, untaped, taped and reversed; the per-window constant and per-step cost are the line through
the two) and, for ``model.sparse: auto``, each spike product's dense/sparse crossover density
(`ipu_snn.ops.policy.measure_crossover`). `calibrate` gives both as a `Calibration`, cached on disk per
machine and shape (``$IPU_SNN_CACHE`` or ``~/.cache/ipu_snn``, calibration.json), so the same config on
the same machine plans the same run. Nothing else measures: `ipu_snn.network.build_network` takes the
crossovers it is given, and the planner the costs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import Config
from .files import replace_atomically
from .ops.policy import crossover_key, machine_key, measure_crossover
from .planner import WindowCosts

#: window lengths timed for the per-window line (steps)
LENGTHS = (16, 64)


@dataclass(frozen=True)
class Calibration:
    """What was measured: window costs (None: not measured) and crossovers by `crossover_key`."""

    costs: WindowCosts | None = None
    crossovers: dict = field(default_factory=dict)
    cached: bool = False  # read from the cache, not measured now

    def describe(self) -> str:
        parts = []
        if self.costs is not None:
            parts.append(f"window costs {self.costs.source}")
        if self.crossovers:
            parts.append("dense/sparse crossovers " + ", ".join(f"{k}: {v:.3f}" for k, v in self.crossovers.items()))
        return ("; ".join(parts) or "nothing measured") + (" (cached)" if self.cached else "")


def _cache_file() -> Path:
    root = os.environ.get("IPU_SNN_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ipu_snn") / "calibration.json"


def _read_cache() -> dict:
    try:
        table = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _write_cache(key: str, value) -> None:
    table = _read_cache()
    table[key] = value
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, (json.dumps(table, indent=1, sort_keys=True) + "\n").encode())
    except OSError:
        pass  # an unwritable cache only costs the measurement again next time


def crossovers(cfg: Config, n_inputs: int, n_classes: int, device: str = "cpu") -> tuple[dict, bool]:
    """The crossover density of every ``model.sparse: auto`` product of ``cfg``'s network on this machine,
    by `crossover_key`, and whether all came from the cache. Empty unless ``model.sparse`` is auto."""
    from .devices import device as device_row
    from .network import auto_products

    row = device_row(device)
    torch_device, backend = torch.device(row.tensors), row.spikes
    out, cached, table = {}, True, _read_cache()
    for n_in, n_out, per_step in auto_products(cfg.model, n_inputs, n_classes, cfg.data.binary):
        key = crossover_key(n_in, n_out, per_step)
        where = f"crossover|{machine_key(torch_device)}|{torch_device.type}|{backend}|{key}"
        if isinstance(table.get(where), float):
            out[key] = table[where]
            continue
        cached = False
        out[key] = measure_crossover(torch_device, n_in, n_out, backend, per_step)
        _write_cache(where, out[key])
    return out, cached


def measure_window_costs(cfg: Config, n_inputs: int, n_classes: int, batch: int, density: float = 0.05,
                         device: str = "cpu", lengths: tuple[int, int] = LENGTHS, repeats: int = 3,
                         crossover: dict | None = None) -> WindowCosts:
    """Measure the costs of one window on this machine: the real shapes and batch, Bernoulli inputs of
    ``density``. ``crossover``: the network's crossovers (`crossovers`), for ``model.sparse: auto``."""
    from .executor import TimeLoop
    from .network import build_network, pack_inputs

    torch_device = torch.device("cuda" if device == "cuda" else "cpu")
    sync = torch.cuda.synchronize if torch_device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    samples = {}
    for length in lengths:
        torch.manual_seed(0)
        net = build_network(cfg.model, n_inputs, n_classes, dt=cfg.data.step_seconds, loop=TimeLoop(length),
                            binary_inputs=cfg.data.binary, device=device, crossovers=crossover).to(torch_device)
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


def _shape_key(cfg: Config, n_inputs: int, n_classes: int, batch: int, density: float, device: str) -> str:
    shape = json.dumps({"model": cfg.model.model_dump(mode="json"), "binary": cfg.data.binary,
                        "dt": cfg.data.step_seconds, "n_inputs": n_inputs, "n_classes": n_classes, "batch": batch,
                        "density": round(density, 3), "lengths": LENGTHS}, sort_keys=True)
    return hashlib.sha256(shape.encode()).hexdigest()[:16]


def calibrate(cfg: Config, n_inputs: int, n_classes: int, batch: int, density: float = 0.05, device: str = "cpu",
              *, window_costs: bool = True) -> Calibration:
    """The calibration of ``cfg``'s network on this machine, measured once per machine and shape.

    Parameters
    ----------
    cfg : Config
        The run's config (its model and data shape).
    n_inputs, n_classes : int
        The data's shape.
    batch : int
        Samples per forward pass, as the run will take them.
    density : float
        The input spike density timed (the data's, `ipu_snn.loop.input_density`).
    device : str
        ``cpu`` or ``cuda``: this machine's.
    window_costs : bool
        Measure the window costs (else only the crossovers ``model.sparse: auto`` needs).

    Returns
    -------
    Calibration
        The crossovers and, with ``window_costs``, the costs; read from the cache when measured before.
    """
    found, all_cached = crossovers(cfg, n_inputs, n_classes, device)
    costs = None
    if window_costs:
        torch_device = torch.device("cuda" if device == "cuda" else "cpu")
        key = f"costs|{machine_key(torch_device)}|{device}|{_shape_key(cfg, n_inputs, n_classes, batch, density, device)}"
        stored = _read_cache().get(key)
        try:
            costs = WindowCosts(tuple(stored["forward"]), tuple(stored["tape"]), tuple(stored["reverse"]),
                                stored["optimizer"], stored["offchip_bandwidth"], stored["source"])
        except (TypeError, KeyError, ValueError):
            all_cached = False
            costs = measure_window_costs(cfg, n_inputs, n_classes, batch, density, device, crossover=found)
            _write_cache(key, asdict(costs))
    return Calibration(costs, found, all_cached)


__all__ = ["Calibration", "LENGTHS", "calibrate", "crossovers", "measure_window_costs"]
