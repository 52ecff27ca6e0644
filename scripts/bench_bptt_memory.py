"""W2: memory and time of each BPTT schedule as T grows, measured side by side.

W1's network (700 Bernoulli inputs at 5%, recurrent LIF, LI readout of 20, Adam) trains one
iteration per (schedule, T). On CUDA the peak is torch.cuda.max_memory_allocated and, with
--max-t, the largest T that fits a device budget is searched by doubling under
torch.cuda.set_per_process_memory_fraction. On the CPU the peak is the engine's own accounting
(checkpoints plus taped steps), next to the planner's prediction.

    python scripts/bench_bptt_memory.py --device cuda --steps 1000 4000 16000 --max-t --budget-gib 4
    python scripts/bench_bptt_memory.py --device cpu --hidden 128 --batch 16 --steps 250 1000
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from benchlib import machine, machine_lines, time_ms, write_json
from ipu_snn.bptt import predicted_local_bytes, store_all
from ipu_snn.config import BPTTConfig, ModelConfig
from ipu_snn.devices import GiB, device_spec
from ipu_snn.network import build_network
from ipu_snn.planner import candidates, costs_for, footprint

SCHEDULES = ["store_all", "uniform", "revolve", "double", "two_level"]


def setup(args, T: int, name: str, device: torch.device):
    cfg = ModelConfig.model_validate({"layers": [{"type": "rlif", "size": args.hidden, "tau": 0.02}],
                                      "readout": {"tau": 0.02}})
    fp = footprint(cfg, 700, 20, args.batch)
    factories = candidates(BPTTConfig(schedule="auto"), T, costs_for(fp, device_spec(args.spec)))
    factory = factories[name]
    if device.type == "cpu" and factory is None:
        factory = store_all  # through the engine, so that its accounting measures the peak
    torch.manual_seed(0)
    net = build_network(cfg, 700, 20, dt=1e-3, schedule=factory).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = (torch.rand(args.batch, T, 700) < 0.05).float()
    # the engine's schedules stream inputs from pinned host memory; the layered path wants them on the device
    x = x.pin_memory() if device.type == "cuda" and factory is not None else x.to(device)
    y = torch.randint(0, 20, (args.batch,), device=device)

    def iteration():
        loss = F.cross_entropy(net(x).logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sched = (factory or store_all)(T)
    predicted = predicted_local_bytes(sched, fp.state_bytes, fp.tape_bytes_per_step)
    return net, iteration, predicted


def measure(args, T: int, name: str, device: torch.device) -> dict:
    net, iteration, predicted = setup(args, T, name, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    timing = time_ms(iteration, warmup=1, repeats=args.repeats, sync=sync)
    row = {"schedule": name, "T": T, **timing, "predicted_engine_bytes": predicted}
    if device.type == "cuda":
        row["peak_device_bytes"] = torch.cuda.max_memory_allocated()
    if net.last_scan is not None:
        row["engine_peak_local_bytes"] = net.last_scan.peak_local_bytes
        row["engine_peak_offchip_bytes"] = net.last_scan.peak_offchip_bytes
    return row


def largest_t(args, name: str, device: torch.device, start: int, limit: int) -> int:
    """Double T until an iteration runs out of the budgeted device memory."""
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(args.budget_gib * GiB / total, device)
    best, T = 0, start
    while T <= limit:
        try:
            _, iteration, _ = setup(args, T, name, device)
            iteration()
            torch.cuda.synchronize()
            best, T = T, T * 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0, device)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--spec", help="planner device spec for the schedules' costs (default: from --device)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--schedules", nargs="+", default=SCHEDULES, choices=SCHEDULES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-t", action="store_true", help="search the largest T within --budget-gib (CUDA)")
    parser.add_argument("--budget-gib", type=float, default=4.0)
    parser.add_argument("--max-t-limit", type=int, default=1 << 20)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    args.spec = args.spec or args.device
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32, as the baselines of docs/workloads.md

    rows = [measure(args, T, name, device) for T in args.steps for name in args.schedules]
    largest = ({name: largest_t(args, name, device, min(args.steps), args.max_t_limit) for name in args.schedules}
               if args.max_t and device.type == "cuda" else {})
    info = machine()
    write_json(args.out / f"bptt_memory_{args.device}.json",
               {"args": {k: str(v) for k, v in vars(args).items()}, "machine": info, "rows": rows, "largest_t": largest})

    peak_key = "peak_device_bytes" if device.type == "cuda" else "engine_peak_local_bytes"
    base = {r["T"]: r for r in rows if r["schedule"] == args.schedules[0]}
    lines = [f"## {args.device}: W1 network, hidden {args.hidden}, batch {args.batch}", "", *machine_lines(info), "",
             f"| T | schedule | ms/iter | vs {args.schedules[0]} | peak MiB ({peak_key}) | memory vs "
             f"{args.schedules[0]} | planner-predicted engine MiB | off-chip MiB (engine) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base[r["T"]]
        lines.append(f"| {r['T']} | {r['schedule']} | {r['median_ms']:.1f} | {r['median_ms'] / b['median_ms']:.2f}x | "
                     f"{r[peak_key] / 2**20:.2f} | {b[peak_key] / max(r[peak_key], 1):.1f}x less | "
                     f"{r['predicted_engine_bytes'] / 2**20:.2f} | {r.get('engine_peak_offchip_bytes', 0) / 2**20:.2f} |")
    if largest:
        lines += ["", f"Largest T within {args.budget_gib} GiB (doubling from {min(args.steps)}):", "",
                  "| schedule | largest T | vs store_all |", "|---|---|---|"]
        ref = largest.get("store_all") or math.nan
        lines += [f"| {n} | {t} | {t / ref:.0f}x |" for n, t in largest.items()]
    text = "\n".join(lines) + "\n"
    write_section(args.out / "bptt_memory.md", args.device, text)
    plot(args, rows, peak_key)
    print(text)


def write_section(doc: Path, device: str, text: str) -> None:
    """Replace this device's generated section of the doc, keeping the prose around it."""
    begin, end = f"<!-- BEGIN GENERATED {device} -->", f"<!-- END GENERATED {device} -->"
    old = doc.read_text() if doc.exists() else "# BPTT memory (W2)\n"
    block = f"{begin}\n{text}{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(new)


def plot(args, rows: list[dict], peak_key: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    for name in args.schedules:
        mine = [r for r in rows if r["schedule"] == name]
        ax_mem.plot([r["T"] for r in mine], [r[peak_key] / 2**20 for r in mine], "-o", label=name)
        ax_time.plot([r["T"] for r in mine], [r["median_ms"] for r in mine], "-o", label=name)
    ax_mem.set(xscale="log", yscale="log", xlabel="T", ylabel="peak MiB", title=f"memory ({args.device})")
    ax_time.set(xscale="log", yscale="log", xlabel="T", ylabel="ms / iteration", title=f"time ({args.device})")
    for ax in (ax_mem, ax_time):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / f"bptt_memory_{args.device}.png", dpi=100)


if __name__ == "__main__":
    main()
