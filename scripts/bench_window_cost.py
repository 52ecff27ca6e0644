"""The fixed cost of a window: microseconds per window, forward and backward, per layer and for the network.

Times the same T steps cut into windows of L steps for several L and fits ``time = per_step * T +
per_window * (T / L)`` by least squares: ``per_window`` is what a window costs whatever its length (Python
glue, extension calls, per-window allocations). Per layer: a layer's ``window`` over the chunks (its input
product and time loop), forward, then backward from a random gradient of its output. Network: a training
step's forward and backward through the executor (store_all) with the planner's machinery bypassed.

    python scripts/bench_window_cost.py                       # W2-small's layer: 256 RLIF, batch 32, T=64
    python scripts/bench_window_cost.py --hidden 1024 --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchlib import command_line, load_average, machine, machine_lines, write_json

N_INPUTS, N_CLASSES = 700, 20


def best_ms(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return min(samples)  # the least disturbed by other jobs on a shared machine


def python_calls(fn) -> int:
    """Python function calls (and C functions called from Python) while ``fn`` runs: what a window's fixed cost
    is made of, counted exactly whatever the machine's load."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def fit(points: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(per_step, per_window) from (steps, windows, ms) by least squares over two unknowns."""
    a = torch.tensor([[s, w] for s, w, _ in points], dtype=torch.float64)
    b = torch.tensor([[ms] for _, _, ms in points], dtype=torch.float64)
    solution = torch.linalg.lstsq(a, b).solution.flatten()
    return float(solution[0]), float(solution[1])


def network(args, window: int):
    from ipu_snn.calibration import crossovers
    from ipu_snn.config import validate_config
    from ipu_snn.executor import TimeLoop
    from ipu_snn.network import build_network

    cfg = validate_config({"model": {"layers": [{"type": "rlif", "size": args.hidden, "beta": 0.95,
                                                 "surrogate": {"name": "triangle", "scale": 10.0}}] * args.depth,
                                     "readout": {"beta": 0.95}, "sparse": args.sparse},
                           "data": {"steps": args.steps, "batch_size": args.batch}}, source="bench_window_cost")
    torch.manual_seed(0)
    measured = crossovers(cfg, N_INPUTS, N_CLASSES, "cpu")[0] if args.sparse == "auto" else None
    return build_network(cfg.model, N_INPUTS, N_CLASSES, dt=1e-3, loop=TimeLoop(window), crossovers=measured)


def measure(args) -> dict:
    from ipu_snn.network import pack_inputs

    gen = torch.Generator().manual_seed(1)
    x = pack_inputs((torch.rand(args.batch, args.steps, N_INPUTS, generator=gen) < args.density).float())
    y = torch.randint(0, N_CLASSES, (args.batch,), generator=gen)
    rows = {"network forward": [], "network backward": []}
    calls = {"network forward": [], "network backward": []}
    layer_rows: dict[str, list] = {}
    for window in args.windows:
        net = network(args, window)
        windows = -(-args.steps // window)

        def forward():
            return F.cross_entropy(net(x).logits, y)

        def step():
            loss = forward()
            loss.backward()

        fwd = best_ms(lambda: forward(), args.repeats)
        total = best_ms(step, args.repeats)
        rows["network forward"].append((args.steps, windows, fwd))
        rows["network backward"].append((args.steps, windows, total - fwd))
        loss = forward()
        calls["network forward"].append((args.steps, windows, python_calls(forward)))
        calls["network backward"].append((args.steps, windows, python_calls(loss.backward)))
        # per layer: the same windows, one layer at a time, with its input as the network gives it
        xt = x.transpose(0, 1)
        h = net.inputs(xt, 0, args.steps)
        for i, layer in enumerate(net.layers):
            state0 = layer.initial_state(args.batch, net.readout.fc.weight)
            chunks = [type(h)(None if h.z is None else h.z[t0:t0 + window], h.bits[t0:t0 + window],
                              None if h.near is None else h.near[t0:t0 + window])
                      for t0 in range(0, args.steps, window)]

            def layer_forward():
                state, outs = state0, []
                for chunk in chunks:
                    train, state, _ = layer.window(state, chunk)
                    outs.append(train.z)
                return outs

            def layer_step():
                outs = layer_forward()
                torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

            fwd = best_ms(layer_forward, args.repeats)
            total = best_ms(layer_step, args.repeats)
            layer_rows.setdefault(f"layer{i} forward", []).append((args.steps, windows, fwd))
            layer_rows.setdefault(f"layer{i} backward", []).append((args.steps, windows, total - fwd))
            with torch.no_grad():
                outs = layer_forward()
            z = torch.cat(outs).detach()
            from ipu_snn.core.bits import pack_spikes
            from ipu_snn.neuron.window import SpikeTrain

            h = SpikeTrain(z.requires_grad_(), pack_spikes(z.detach()), None)
    results = {}
    for name, points in {**layer_rows, **rows}.items():
        per_step, per_window = fit(points)
        results[name] = {"us_per_window": per_window * 1e3, "us_per_step": per_step * 1e3,
                         "points": [{"windows": w, "ms": ms} for _, w, ms in points]}
        if name in calls:
            per_step, per_window = fit(calls[name])
            results[name] |= {"calls_per_window": per_window, "calls_per_step": per_step}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64], help="window lengths L")
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--sparse", default="auto", type=lambda v: {"false": False, "true": True}.get(v, v))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="write window_cost.json and window_cost.md here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = load_average()
    results = measure(args)
    lines = ["| what | µs per window | µs per step | Python calls per window |", "|---|---|---|---|",
             *[f"| {name} | {r['us_per_window']:.0f} | {r['us_per_step']:.0f} | "
               + (f"{r['calls_per_window']:.0f} |" if "calls_per_window" in r else " |") for name, r in results.items()]]
    print("\n".join(lines))
    if args.out:
        info = machine()  # after set_num_threads: the threads the figures were measured with
        write_json(args.out / "window_cost.json", {"command": command_line(), "machine": info, "load": [load, load_average()],
                                                   "args": {k: v for k, v in vars(args).items() if k != "out"},
                                                   "results": results})
        (args.out / "window_cost.md").write_text("\n".join([
            "# The fixed cost of a window", "",
            f"`scripts/bench_window_cost.py`: 700 -> {args.depth} x RLIF {args.hidden} -> LI 20, batch {args.batch}, "
            f"T={args.steps} cut into windows of L in {args.windows}, {args.density:.0%} input, sparse={args.sparse}; "
            "time = per_step * T + per_window * T / L fitted by least squares (fastest of "
            f"{args.repeats}). Layer rows: the layer's window calls alone (input product + time loop). Python "
            "calls: function calls (Python's and C functions called from Python) per window, fitted the same way "
            "and exact whatever the load.", "",
            *machine_lines(info), f"- Load average (1, 5, 15 min) before {load}, after {load_average()}: "
            "a shared machine; the figures are contaminated by other jobs and want a quiet-machine rerun", "",
            *lines, ""]))


if __name__ == "__main__":
    main()
