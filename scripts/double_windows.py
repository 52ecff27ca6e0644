"""W2-small under ``double`` at several (window, off-chip interval), interleaved with fused store_all in one
process: the time ratios side by side (each contender's fastest iteration, rounds interleaved, so that a
loaded machine slows every contender alike), the executor's local and off-chip bytes, window evaluations,
and the RSS growth of one more iteration. The diagnostic behind the `double` notes of
docs/benchmarks/unified_loop_notes.md: is a longer window cheaper at the same growth?

    python scripts/double_windows.py --steps 1600 store_all:128 double:16:10 double:32:2 double:64:3
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import bench_unified as bu
from benchlib import command_line, load_average, machine, machine_lines, peak_growth_bytes

MIB = 2**20


def contender(spec: str):
    """``store_all:L`` or ``double:L:offchip_every`` (inner uniform, no local slots, as the planner's default)."""
    from ipu_snn.bptt.schedules import double
    from ipu_snn.executor import TimeLoop

    kind, *numbers = spec.split(":")
    if kind == "store_all" and len(numbers) == 1:
        return TimeLoop(int(numbers[0]))
    if kind == "double" and len(numbers) == 2:
        every = int(numbers[1])
        return TimeLoop(int(numbers[0]), lambda windows: double(windows, every, 0, "uniform"))
    raise SystemExit(f"double_windows.py: {spec!r} is neither store_all:L nor double:L:offchip_every")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--rounds", type=int, default=3, help="timed iterations per contender, interleaved")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("contenders", nargs="+", help="store_all:L or double:L:offchip_every; the first is the reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from ipu_snn.network import build_network

    job = {"device": "cpu", "batch": 32, "hidden": 256, "net": "rlif", "density": bu.DENSITY, "steps": args.steps}
    cfg = bu.model_config(job)
    x = bu.packed_batch(job["batch"], args.steps, bu.DENSITY, torch.device("cpu"))
    y = torch.randint(0, bu.N_CLASSES, (job["batch"],), generator=torch.Generator().manual_seed(2))
    runs = []
    for spec in args.contenders:
        torch.manual_seed(0)
        net = build_network(cfg.model, bu.N_INPUTS, bu.N_CLASSES, dt=cfg.data.step_seconds, loop=contender(spec))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

        def iteration(net=net, optimizer=optimizer):
            loss = F.cross_entropy(net(x).logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        iteration()  # warm-up
        runs.append({"spec": spec, "net": net, "iteration": iteration, "ms": []})
    loads = [load_average()]
    for _ in range(args.rounds):
        for run in runs:
            start = time.perf_counter()
            run["iteration"]()
            run["ms"].append((time.perf_counter() - start) * 1e3)
    loads.append(load_average())
    for run in runs:
        run["growth"] = peak_growth_bytes(run["iteration"], torch.device("cpu"))[0]
    ref = runs[0]
    print("\n".join(machine_lines(machine(), command_line())))
    print(f"- Load average (1, 5, 15 min) before the timed rounds {loads[0]}, after {loads[1]}")
    print("")
    print(f"W2-small dense (700 -> RLIF 256 -> LI 20, batch 32, {bu.DENSITY:.0%} input), T={args.steps}, "
          f"{args.threads} thread(s), fastest of {args.rounds} interleaved iterations")
    print("")
    print("| contender | ms/iter | vs the first | executor local MiB | off-chip MiB | window evaluations | "
          "RSS growth MiB | growth vs the first |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        scan, ms = run["net"].last_scan, min(run["ms"])
        print(f"| {run['spec']} | {ms:.0f} | {ms / min(ref['ms']):.2f}x | {scan.peak_local_bytes / MIB:.1f} | "
              f"{scan.peak_offchip_bytes / MIB:.1f} | {scan.step_evaluations} | {run['growth'] / MIB:.1f} | "
              f"{ref['growth'] / max(run['growth'], 1):.1f}x less |")


if __name__ == "__main__":
    main()
