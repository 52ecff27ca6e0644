"""Data-parallel scaling on one machine: the tiny run with 1 and with N torchrun processes.

Each run trains configs/tiny.yaml (or --config) to the end with the same global batch, so the
accuracies should agree and the samples/s show what the extra processes buy. Torch threads are
split evenly, so the processes share the machine's cores rather than oversubscribing them.

    python scripts/bench_scaling.py --procs 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import machine, machine_lines, write_json


def run(config: str, procs: int, threads: int, out: Path, overrides: list[str]) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    cmd = launcher + ["-m", "ipu_snn.cli", "train", config, "--out", str(out), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. training.epochs=5")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for procs in args.procs:
            threads = max(1, cores // procs)
            summary = run(args.config, procs, threads, Path(tmp) / f"p{procs}", args.overrides)
            results.append({"processes": procs, "threads_per_process": threads, **summary})
    info = machine()
    write_json(args.out / "scaling.json", {"config": args.config, "overrides": args.overrides, "machine": info,
                                           "runs": results})
    base = results[0]["samples_per_s"]
    lines = [
        "# Data-parallel scaling (torchrun, gloo, CPU)",
        "",
        f"`{args.config}` {' '.join(args.overrides)} trained to the end with the same global batch under "
        "`torchrun --standalone --nproc-per-node N`. Measured on the 2-core CI-size machine: this shows "
        "that the distributed path works and what it costs, not multi-device speed-up, since the processes "
        "share the same two cores. Multi-GPU scaling needs a machine with several GPUs and is not measured here.",
        "",
        *machine_lines(info),
        "",
        "| processes | threads each | train samples/s | vs 1 process | val accuracy | test accuracy | wall s |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['processes']} | {r['threads_per_process']} | {r['samples_per_s']:.0f} | "
          f"{r['samples_per_s'] / base:.2f}x | {r['val_accuracy']:.1%} | {r['test_accuracy']:.1%} | {r['wall_s']:.0f} |"
          for r in results],
        "",
    ]
    (args.out / "scaling.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
