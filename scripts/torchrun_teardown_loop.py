"""Does a successful torchrun job always exit? The loop test of issue 22 §2.

Runs ``torchrun --nproc-per-node=2 -m ipu_snn.cli train`` on a tiny config ``--runs`` times, each bounded
by ``--timeout-s``, optionally beside ``--load`` busy processes (CPU load widens the teardown race that
used to hang rank 1 after rank 0 printed ``done:``). Counts the runs that ended 0, ended otherwise, and
hung (killed at the timeout), and prints them with the command, the machine and the date; the counts
of the committed runs are in docs/robustness.md.

    python scripts/torchrun_teardown_loop.py --runs 30
    python scripts/torchrun_teardown_loop.py --runs 30 --load 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

CONFIG = {
    "model": {"layers": [{"type": "lif", "size": 8, "tau": 0.1}], "fused": False},
    "data": {"steps": 8, "channel_pooling": 70, "batch_size": 16, "val_split": 0.25,
             "synthetic": {"n_train": 64, "n_test": 16, "n_classes": 2}},
    "training": {"epochs": 1, "lr": 0.01, "seed": 1},
    "bptt": {"schedule": "store_all", "window": 8},
}


def burn() -> None:
    while True:
        pass


def one_run(folder: Path, config: Path, timeout_s: float) -> tuple[str, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ipu_snn.cli",
           "train", str(config), "--out", str(folder)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "hung", time.monotonic() - start
    outcome = "exit 0" if proc.returncode == 0 else f"exit {proc.returncode}: {err.strip().splitlines()[-1:]}"
    return outcome, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--timeout-s", type=float, default=240.0)
    parser.add_argument("--load", type=int, default=0, help="busy processes beside the runs")
    args = parser.parse_args()
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()
    counts: dict[str, int] = {}
    times = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "tiny.yaml"
            config.write_text(yaml.safe_dump(CONFIG))
            for i in range(args.runs):
                outcome, seconds = one_run(Path(tmp) / f"run-{i}", config, args.timeout_s)
                counts[outcome] = counts.get(outcome, 0) + 1
                times.append(seconds)
                print(f"run {i + 1}/{args.runs}: {outcome} in {seconds:.1f} s", flush=True)
    finally:
        for b in burners:
            b.terminate()
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"runs: {args.runs}; " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
          + f"; seconds per run: median {sorted(times)[len(times) // 2]:.1f}, max {max(times):.1f}")


if __name__ == "__main__":
    main()
