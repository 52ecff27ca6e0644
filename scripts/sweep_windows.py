"""One W2-small contender at a window and schedule you choose: the diagnostic behind the notes of
docs/benchmarks/unified_loop.md (what another window, inner schedule or allocator setting would give).

Builds the network as `scripts/bench_unified.py` does (700 Bernoulli inputs -> RLIF 256 -> LI 20,
batch 32, Adam), with ``bptt.window`` and the ``bptt`` fields given, and prints one line: the
median ms per iteration (3 after a warm-up), the peak RSS growth of one more iteration, the
executor's local bytes, and what the planner predicted, with the machine and date.

    python scripts/sweep_windows.py --steps 1600 --window 16 --schedule double
    python scripts/sweep_windows.py --steps 1600 --window 16 --schedule double local_slots=2 inner=revolve
    MALLOC_MMAP_THRESHOLD_=65536 python scripts/sweep_windows.py --steps 1600 --window 16 --schedule double
    python scripts/sweep_windows.py --steps 1600 --window 256 --schedule store_all --sparse auto \
        --density 0.01 --profile 12
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
import yaml

import bench_unified as bu
from benchlib import machine, peak_growth_bytes, time_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--window", type=int, required=True)
    parser.add_argument("--schedule", default="double")
    parser.add_argument("--sparse", choices=("false", "auto"), default="false")
    parser.add_argument("--density", type=float, default=bu.DENSITY)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print the N ops with the most self CPU time over one iteration")
    parser.add_argument("bptt", nargs="*", help="more bptt fields as key=value (YAML values)")
    args = parser.parse_args()

    from ipu_snn.devices import device_spec
    from ipu_snn.network import build_network
    from ipu_snn.calibration import calibrate
    from ipu_snn.planner import plan

    extra = {k: yaml.safe_load(v) for k, v in (field.split("=", 1) for field in args.bptt)}
    job = {"device": "cpu", "batch": 32, "hidden": 256, "net": "rlif", "density": args.density, "steps": args.steps}
    sparse = "auto" if args.sparse == "auto" else False
    cfg = bu.model_config(job, sparse=sparse, schedule=args.schedule, window=args.window, **extra)
    measured = calibrate(cfg, bu.N_INPUTS, bu.N_CLASSES, job["batch"], args.density)
    costs = measured.costs
    p = plan(cfg, device_spec("cpu"), n_inputs=bu.N_INPUTS, n_classes=bu.N_CLASSES, batch=job["batch"], costs=costs,
             crossovers=measured.crossovers)
    chosen = p.chosen or min(p.strategies, key=lambda s: s.peak_bytes)
    torch.manual_seed(0)
    net = build_network(cfg.model, bu.N_INPUTS, bu.N_CLASSES, dt=cfg.data.step_seconds,
                        loop=p.run_plan(chosen.name).loop(), device="cpu", crossovers=measured.crossovers)
    x = bu.packed_batch(job["batch"], args.steps, args.density, torch.device("cpu"))
    y = torch.randint(0, bu.N_CLASSES, (job["batch"],), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def iteration():
        loss = F.cross_entropy(net(x).logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    iteration()
    timing = time_ms(iteration, warmup=0, repeats=3)
    growth, _ = peak_growth_bytes(iteration, torch.device("cpu"))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            iteration()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    scan, mib = net.last_scan, 2**20
    info = machine()
    malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    print(f"T={args.steps} L={chosen.window} {chosen.schedule} sparse={args.sparse}"
          f"{f' MALLOC_MMAP_THRESHOLD_={malloc}' if malloc else ''}: {timing['median_ms']:.0f} ms/iter, "
          f"growth {growth / mib:.1f} MiB, local {scan.peak_local_bytes / mib:.1f} MiB "
          f"(predicted {chosen.predicted_s * 1e3:.0f} ms, local {chosen.local_bytes / mib:.1f} MiB); "
          f"{info['cpu']} ({info['cores']} cores), {info['date']}")


if __name__ == "__main__":
    main()
