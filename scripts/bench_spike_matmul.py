"""Benchmark W3: the sparse spike matmul against dense matmul and embedding_bag.

Workload W3 (docs/workloads.md): batch B in {16, 128, 256}, N_in = N_out = N in
{1024, 4096}, spike density 1-50%, Bernoulli spikes, fp32 weights. For each
point it times the forward alone and forward + backward of

  * dense:         z @ W with torch (cpu: fp32; cuda: fp32 with TF32 off, TF32, bf16)
  * embedding_bag: torch's gather-sum over the same id lists (its backward only
                   gives the weight gradient: it has no notion of z)
  * ours:          ipu_snn.ops.spike_product, the product training runs, over the
                   spikes as packed bits (cpu: the C++ backend; cuda: Triton), sparse.
                   "matmul" differentiates the weight alone; "layer" is given the
                   dense 0/1 z too, and its backward gives both gradients (z:
                   sparse, at spikes).

Capacity K is each batch's largest spike count, so nothing overflows. Methods
are timed interleaved (one run of each in turn) so that load drifting on a
shared machine hits all of them alike; the reported time is the best of the
repeats, the median is kept in the JSON.

Writes to --out: results JSON, a markdown table and a plot. With --doc, also
replaces this run's generated section (one per device and thread count) of
that markdown file, keeping the text outside the section markers, and copies
the plot next to it.

    python scripts/bench_spike_matmul.py --device cpu --threads 1 --doc docs/benchmarks/spike_matmul.md
    python scripts/bench_spike_matmul.py --device cpu --quick        # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from benchlib import machine
from ipu_snn.core.bits import pack_spikes
from ipu_snn.ops import SparsePolicy, SparseSpikes, spike_product

FULL_GRID = {"batch": [16, 128, 256], "n": [1024, 4096], "density": [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]}
QUICK_GRID = {"batch": [16, 128], "n": [1024], "density": [0.01, 0.05, 0.2]}
FULL_REPEATS = 7
QUICK_REPEATS = 3
#: The target the issue sets: ours at least this much faster than dense fp32 ...
TARGET_SPEEDUP = 5.0
#: ... at densities up to this one (CPU).
TARGET_MAX_DENSITY = 0.05
#: Backend of "ours" per device.
OURS_BACKEND = {"cpu": "cpu", "cuda": "triton"}
#: Dense methods that ratios are taken against, per device.
BASELINES = {"cpu": ["dense_fp32"], "cuda": ["dense_fp32", "dense_bf16"]}
PHASES = ("forward", "forward+backward")


@dataclass
class Result:
    batch: int
    n: int
    density: float
    capacity: int
    method: str
    phase: str
    ms_best: float
    ms_median: float


class Timer:
    """Wall time of one call, synchronising the GPU around it when there is one."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def methods(device: str, z: torch.Tensor, weight: torch.Tensor, capacity: int
            ) -> dict[str, dict[str, Callable[[], object]]]:
    """For each method, a callable per phase. All inputs are prepared here, outside timing."""
    batch, n_out = z.shape[0], weight.shape[1]
    grad_out = torch.randn(batch, n_out, device=device)
    backend = OURS_BACKEND[device]
    spikes = SparseSpikes.from_dense(z, capacity, backend=backend)
    live = torch.arange(capacity, device=device) < spikes.counts.unsqueeze(1)
    flat_ids = spikes.ids[live]
    offsets = (torch.cumsum(spikes.counts, 0) - spikes.counts).to(torch.int32)

    def dense(dtype: torch.dtype, tf32: bool) -> dict[str, Callable[[], object]]:
        zd, wd, gd = z.to(dtype), weight.to(dtype), grad_out.to(dtype)
        zg, wg = zd.clone().requires_grad_(), wd.clone().requires_grad_()

        def with_tf32(fn):
            def run():
                previous = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
                try:
                    return fn()
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = previous
            return run

        return {
            "forward": with_tf32(lambda: zd @ wd),
            "forward+backward": with_tf32(lambda: torch.autograd.grad(zg @ wg, (zg, wg), gd)),
        }

    wg = weight.clone().requires_grad_()
    zg = z.clone().requires_grad_()
    table = {"dense_fp32": dense(torch.float32, tf32=False)}
    if device == "cuda":
        table["dense_tf32"] = dense(torch.float32, tf32=True)
        table["dense_bf16"] = dense(torch.bfloat16, tf32=False)
    table["embedding_bag"] = {
        "forward": lambda: F.embedding_bag(flat_ids, weight, offsets, mode="sum"),
        "forward+backward": lambda: torch.autograd.grad(
            F.embedding_bag(flat_ids, wg, offsets, mode="sum"), wg, grad_out),
    }
    bits = pack_spikes(z)

    def ours(name: str, listed: bool) -> SparsePolicy:
        return SparsePolicy("sparse", capacity, listed_grad=listed, backend=name)

    table["ours_matmul"] = {
        "forward": lambda: spike_product(bits, weight, None, ours(backend, False))[0],
        "forward+backward": lambda: torch.autograd.grad(
            spike_product(bits, wg, None, ours(backend, False))[0], wg, grad_out),
    }
    table["ours_layer"] = {
        "forward": lambda: spike_product(bits, weight, None, ours(backend, True), z=z)[0],
        "forward+backward": lambda: torch.autograd.grad(
            spike_product(bits, wg, None, ours(backend, True), z=zg)[0], (zg, wg), grad_out),
    }
    if device == "cuda":
        table["ours_layer_sorted"] = {
            "forward+backward": lambda: torch.autograd.grad(
                spike_product(bits, wg, None, ours("triton_sorted", True), z=zg)[0], (zg, wg), grad_out),
        }
    return table


def run_point(device: str, batch: int, n: int, density: float, repeats: int, seed: int) -> list[Result]:
    generator = torch.Generator().manual_seed(seed)
    z = (torch.rand(batch, n, generator=generator) < density).float().to(device)
    weight = torch.randn(n, n, generator=generator).to(device)
    capacity = max(int((z != 0).sum(1).max()), 1)
    table = methods(device, z, weight, capacity)
    timer = Timer(device)
    results = []
    for phase in PHASES:
        runs = {name: fns[phase] for name, fns in table.items() if phase in fns}
        for fn in runs.values():  # warm-up: builds, autotuning, allocator
            timer(fn)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(timer(fn))
        for name, ms in times.items():
            results.append(Result(batch, n, density, capacity, name, phase, min(ms), statistics.median(ms)))
    return results


def device_description(device: str) -> str:
    info = machine()
    if device == "cuda":
        return info["gpu"]
    return f"{info['cpu']}, {info['cores']} logical cores, torch threads = {torch.get_num_threads()}"


def lookup(results: list[Result]) -> dict[tuple, Result]:
    return {(r.batch, r.n, r.density, r.method, r.phase): r for r in results}


def speedup(table: dict[tuple, Result], batch: int, n: int, density: float, baseline: str, phase: str) -> float:
    """Baseline time over ours (``ours_layer``) at one point."""
    ours = table[(batch, n, density, "ours_layer", phase)].ms_best
    return table[(batch, n, density, baseline, phase)].ms_best / ours


def markdown(meta: dict, results: list[Result], plot_name: str) -> str:
    device = meta["device"]
    table = lookup(results)
    points = sorted({(r.batch, r.n, r.density, r.capacity) for r in results})
    method_names = list(dict.fromkeys(r.method for r in results))
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device_name']}  ",
        f"Date: {meta['date']}; torch {meta['torch']}; load average before/after: "
        f"{meta['load_before']} / {meta['load_after']}  ",
        f"Times: best of {meta['repeats']} interleaved runs, in ms. Ratios are dense time / ours "
        "(`ours_layer`, which includes compaction from dense z and, backward, both gradients).",
        "",
    ]
    for phase in PHASES:
        shown = [m for m in method_names if (points[0][0], points[0][1], points[0][2], m, phase) in table]
        ratio_cols = [f"{b} / ours" for b in BASELINES[device]]
        lines += [f"### {phase}", "",
                  "| B | N | density | K | " + " | ".join(shown) + " | " + " | ".join(ratio_cols) + " |",
                  "|" + "---|" * (4 + len(shown) + len(ratio_cols))]
        for batch, n, density, capacity in points:
            cells = [f"{table[(batch, n, density, m, phase)].ms_best:.3f}" for m in shown]
            ratios = [f"{speedup(table, batch, n, density, b, phase):.1f}x" for b in BASELINES[device]]
            lines.append(f"| {batch} | {n} | {density:.0%} | {capacity} | " + " | ".join(cells + ratios) + " |")
        lines.append("")
    lines += summary(device, results) + ["", f"![speedup over dense]({plot_name})", ""]
    return "\n".join(lines)


def summary(device: str, results: list[Result]) -> list[str]:
    """Speedup at the target densities and the measured crossover, per (B, N)."""
    table = lookup(results)
    baseline = BASELINES[device][-1]
    configs = sorted({(r.batch, r.n) for r in results})
    densities = sorted({r.density for r in results})
    lines = [f"### Summary ({baseline} / ours_layer)", "",
             f"| B | N | phase | speedup at density <= {TARGET_MAX_DENSITY:.0%} (min-max) "
             "| ours faster up to density |", "|---|---|---|---|---|"]
    for phase in PHASES:
        for batch, n in configs:
            speedups = [speedup(table, batch, n, d, baseline, phase) for d in densities]
            low = [s for d, s in zip(densities, speedups) if d <= TARGET_MAX_DENSITY]
            span = f"{min(low):.1f}x - {max(low):.1f}x" if low else "n/a"
            lines.append(f"| {batch} | {n} | {phase} | {span} | {crossover(densities, speedups)} |")
    return lines


def crossover(densities: list[float], speedups: list[float]) -> str:
    """The largest measured density up to which ours won at every measured density."""
    won = None
    for density, speedup in zip(densities, speedups):
        if speedup <= 1.0:
            break
        won = density
    return f"{won:.0%}" if won is not None else "never"


def plot(results: list[Result], device: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = lookup(results)
    baseline = BASELINES[device][-1]
    configs = sorted({(r.batch, r.n) for r in results})
    densities = sorted({r.density for r in results})
    fig, axes = plt.subplots(1, len(PHASES), figsize=(11, 4), sharey=True)
    for ax, phase in zip(axes, PHASES):
        for batch, n in configs:
            ys = [speedup(table, batch, n, d, baseline, phase) for d in densities]
            ax.plot([d * 100 for d in densities], ys, marker="o", label=f"B={batch}, N={n}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        if device == "cpu":
            ax.axhline(TARGET_SPEEDUP, color="gray", linestyle="--", linewidth=0.8, label=f"target {TARGET_SPEEDUP:g}x")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("spike density (%)")
        ax.set_title(phase)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"speedup ({baseline} time / ours)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"Sparse spike matmul vs {baseline} on {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_doc(doc: Path, key: str, section: str) -> None:
    """Replace the generated section ``key`` of ``doc``, keeping everything else."""
    begin, end = f"<!-- BEGIN GENERATED {key} -->", f"<!-- END GENERATED {key} -->"
    block = f"{begin}\n{section}\n{end}"
    text = doc.read_text() if doc.exists() else "# Sparse spike matmul benchmarks (W3)\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + f"\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="small grid for CI smoke runs")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_spike_matmul"))
    parser.add_argument("--doc", type=Path, default=None, help="markdown file whose section for this device to update")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 gives stable "
                             "numbers on a machine shared with other jobs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is available", file=sys.stderr)
        return 2

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    grid = QUICK_GRID if args.quick else FULL_GRID
    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    meta = {
        "command": "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device,
        "device_name": device_description(args.device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    results: list[Result] = []
    started = time.perf_counter()
    for batch in grid["batch"]:
        for n in grid["n"]:
            for density in grid["density"]:
                point = run_point(args.device, batch, n, density, repeats, args.seed)
                results += point
                best = {(r.method, r.phase): r.ms_best for r in point}
                progress = "  ".join(
                    f"{phase} dense {best[('dense_fp32', phase)]:.2f} ours {best[('ours_layer', phase)]:.2f} ms"
                    for phase in PHASES)
                print(f"B={batch:4d} N={n:5d} density={density:5.0%}: {progress}", flush=True)
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["seconds"] = round(time.perf_counter() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    # Runs with different thread counts get their own files and doc sections.
    label = f"{args.device}, {meta['threads']} thread{'s' if meta['threads'] > 1 else ''}"
    stem = f"spike_matmul_{args.device}_t{meta['threads']}"
    payload = {"meta": meta, "results": [asdict(r) for r in results]}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    plot(results, args.device, args.out / f"{stem}.png")
    section = markdown(meta, results, f"{stem}.png")
    (args.out / f"{stem}.md").write_text(f"## {label}\n\n{section}")
    if args.doc is not None:
        update_doc(args.doc, stem, f"## {label}\n\n{section}")
        shutil.copyfile(args.out / f"{stem}.png", args.doc.parent / f"{stem}.png")
    print(f"wrote {args.out / stem}.{{json,md,png}} in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
