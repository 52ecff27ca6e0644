"""Through the CLI, as a user runs it: one epoch of W2-small from SHD-layout files, per setting.

Writes synthetic SHD-layout HDF5 files (ipu_snn.data.recordings.write_recordings; 700 channels,
Bernoulli spikes at --density in every step, 20 classes) and a config for them (dataset: events,
700 -> RLIF 256 -> LI 20, batch 32, Adam, one epoch, no validation split), then runs
``ipu-snn train`` on it once per setting, each in its own process:

* default: the config as it is (the project's defaults: ``bptt.schedule: store_all``, the planner's
  window, ``model.sparse: auto`` at the crossovers the run's calibration step measures, ``sparse_grad: auto``,
  surrogate ``fast_sigmoid`` 10);
* ``bptt.schedule=double``;
* ``dense fast_sigmoid``: ``model.sparse=false model.sparse_grad=dense``, surrogate ``fast_sigmoid`` 10: the
  default's computation with every product dense (the default before ``sparse: auto``), the issue's baseline
  for "the defaults >= 3x", stated in full so that it stays the baseline whatever the defaults;
* ``sparse=auto triangle 3`` (and, when asked, ``... 5``): ``model.sparse=auto`` with the bounded
  ``triangle`` surrogate at scale 3 (the exact listed backward; its accuracy: docs/benchmarks/surrogates.md).

Reported per run: the training samples/s from the run's own summary.json, its epoch time, the
window and schedule it chose (its "bptt:" line), the crossovers its calibration step measured (its
"calibration:" line) and the peak RSS of its process (wait4). The
issue's targets: double at >= 1/1.4 of the default's samples/s with <= 0.6x its peak RSS; the
default at >= 3x the samples/s of ``dense fast_sigmoid``.

Writes docs/benchmarks/cli_<device>.json and docs/benchmarks/cli.md (with cli_notes.md).

    python scripts/bench_cli.py            # T=1600, 1024 training samples (32 batches; 8 were too few for a ratio)
    python scripts/bench_cli.py --settings default "dense fast_sigmoid"   # the defaults' speed target only
    python scripts/bench_cli.py --quick    # smoke run: T=400, 64 samples, labelled as such
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from benchlib import (Target, failed_cell, fresh_cache, load_average, machine, machine_lines, notes_block,
                      ratio_target, run_child, tail, targets_table, write_json)

N_CHANNELS, N_CLASSES = 700, 20
DT = 1e-3  # seconds per step: spike k of a sample sits in the middle of its step
FAST_SIGMOID = ["model.layers.0.surrogate.name=fast_sigmoid", "model.layers.0.surrogate.scale=10"]
SETTINGS = {"default": [], "bptt.schedule=double": ["bptt.schedule=double"],
            "dense fast_sigmoid": ["model.sparse=false", "model.sparse_grad=dense", *FAST_SIGMOID],
            **{f"sparse=auto triangle {k}": ["model.sparse=auto", "model.sparse_grad=auto",
                                             "model.layers.0.surrogate.name=triangle",
                                             f"model.layers.0.surrogate.scale={k}"] for k in (3, 5)}}
DEFAULT_SETTINGS = ["default", "dense fast_sigmoid", "bptt.schedule=double", "sparse=auto triangle 3"]
#: the dense baseline: the default's computation with every product dense (model.sparse: false)
DENSE = "dense fast_sigmoid"
MIB = 2**20


def write_shd_files(folder: Path, *, n_train: int, n_test: int, steps: int, density: float, seed: int = 0
                    ) -> dict[str, Path]:
    """SHD-layout train and test files of Bernoulli spikes (reused when they exist with these parameters)."""
    from ipu_snn.data.recordings import SpikeRecordings, write_recordings

    name = f"bernoulli_T{steps}_d{density:g}_s{seed}"
    paths = {split: folder / f"{name}_{split}_{n}.h5" for split, n in (("train", n_train), ("test", n_test))}
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        if paths[split].exists():
            continue
        times, units = [], []
        for _ in range(n):
            step, unit = np.nonzero(rng.random((steps, N_CHANNELS)) < density)
            times.append((step + 0.5) * DT)
            units.append(unit)
        labels = np.arange(n) % N_CLASSES
        rec = SpikeRecordings(times, units, labels, N_CHANNELS, N_CLASSES, [f"class-{k}" for k in range(N_CLASSES)])
        folder.mkdir(parents=True, exist_ok=True)
        partial = paths[split].with_suffix(".partial")
        write_recordings(partial, rec)
        partial.replace(paths[split])  # a killed run leaves no half-written file under the final name
    return paths


def config(files: dict[str, Path], args) -> dict:
    return {"model": {"layers": [{"type": "rlif", "size": args.hidden, "beta": 0.95}], "readout": {"beta": 0.95}},
            "data": {"dataset": "events", "files": {k: str(v.resolve()) for k, v in files.items()},
                     "n_channels": N_CHANNELS, "n_classes": N_CLASSES, "steps": args.steps,
                     "max_time": args.steps * DT, "batch_size": args.batch, "val_split": 0.0},
            "training": {"epochs": 1, "optimizer": "adam", "lr": 1e-3, "seed": 0},
            "device": args.device}


def run_setting(name: str, overrides: list[str], cfg_path: Path, args) -> dict:
    out = args.work / "runs" / name.replace("=", "_").replace(".", "_").replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)  # our own previous run of this setting
    load = load_average()
    child = run_child([sys.executable, "-m", "ipu_snn.cli", "train", str(cfg_path), "--out", str(out), *overrides],
                      log=args.work / "logs" / f"{out.name}.log", timeout_s=args.timeout)
    row = {"setting": name, "overrides": overrides, "peak_rss_bytes": child.peak_rss_bytes, "wall_s": child.wall_s,
           "load_before": load[:1]}
    if child.returncode != 0 or not (out / "summary.json").exists():
        why = "timed out" if child.timed_out else f"exit {child.returncode}"
        return row | {"failed": f"{why}: {tail(child.output, 6)}"}
    summary = json.loads((out / "summary.json").read_text())
    lines = child.output.splitlines()
    plan_line = next((line for line in lines if line.startswith("bptt:")), "")
    calibration = next((line for line in lines if line.startswith("calibration:")), "calibration: none")
    return row | {"samples_per_s": summary["samples_per_s"], "train_wall_s": summary["wall_s"], "plan": plan_line,
                  "calibration": calibration}


def targets(rows: list[dict], where: str) -> list[Target]:
    by = {r["setting"]: r for r in rows if "samples_per_s" in r}
    base, double, old = by.get("default"), by.get("bptt.schedule=double"), by.get(DENSE)
    bounded = by.get("sparse=auto triangle 3")

    def rate(r):
        return f"{r['setting']} {r['samples_per_s']:.1f} samples/s"

    def rss(r):
        return f"{r['setting']} {r['peak_rss_bytes'] / MIB:.0f} MiB"

    def speed(r):
        return r["samples_per_s"]

    def peak(r):
        return r["peak_rss_bytes"]

    return [ratio_target(f"double samples/s over the default's ({where})", double, base, 1 / 1.4, False, speed, rate),
            ratio_target(f"double peak RSS over the default's ({where})", double, base, 0.6, True, peak, rss),
            ratio_target(f"the default's samples/s over dense fast_sigmoid's ({where})", base, old, 3.0, False,
                         speed, rate),
            ratio_target(f"sparse=auto triangle 3 samples/s over dense fast_sigmoid's ({where})", bounded, old, 3.0,
                         False, speed, rate)]


def render(out: Path, notes: Path) -> str:
    lines = ["# Through the CLI: one epoch of W2-small", "",
             "Made by `scripts/bench_cli.py`: `ipu-snn train` on synthetic SHD-layout files (700 channels, Bernoulli "
             "spikes, 20 classes; `dataset: events`), 700 -> RLIF -> LI 20, Adam, one epoch, no validation split, "
             "each setting in its own process. samples/s is the run's own (summary.json); peak RSS is its process's "
             "(the data files are read whole, so it includes the recordings).", ""]
    for path in sorted(out.glob("cli_*.json")):
        data = json.loads(path.read_text())
        a = data["args"]
        title = f"## {data['device'].upper()}: T={a['steps']}, {a['samples']} training samples, batch {a['batch']}, " \
                f"{a['hidden']} neurons, {a['density']:.0%} input"
        if data["quick"]:
            title += " — QUICK SMOKE RUN (reduced sizes; not the issue's measurement)"
        lines += [title, "", *([f"**{data['note']}**", ""] if data.get("note") else []),
                  *machine_lines(data["machine"], data["command"]),
                  f"- Load average (1, 5, 15 min) before: {data['load_before']}, after: {data['load_after']}",
                  f"- sparse=auto crossovers: {data['crossovers']}", "",
                  f"- `vs dense`: samples/s over `{DENSE}`'s (`{' '.join(SETTINGS[DENSE])}`: the default's "
                  "computation with every product dense)", "",
                  "| setting | samples/s | vs default | vs dense | peak RSS MiB | vs default | process wall s | plan "
                  "| load |",
                  "|---|---|---|---|---|---|---|---|---|"]
        done = {r["setting"]: r for r in data["rows"] if "samples_per_s" in r}
        base, dense = done.get("default"), done.get(DENSE)

        def ratio(r, other, key):
            return f"{r[key] / other[key]:.2f}x" if other else ""

        for r in data["rows"]:
            if "failed" in r:
                lines.append(f"| {r['setting']} | {failed_cell(r['failed'])} | | | | | | | |")
                continue
            lines.append(f"| {r['setting']} | {r['samples_per_s']:.1f} | {ratio(r, base, 'samples_per_s')} | "
                         f"{ratio(r, dense, 'samples_per_s')} | {r['peak_rss_bytes'] / MIB:.0f} | "
                         f"{ratio(r, base, 'peak_rss_bytes')} | {r['wall_s']:.0f} | {r['plan'].removeprefix('bptt: ')} | "
                         f"{r['load_before'][0] if r['load_before'] else ''} |")
        lines += ["", "Each run's calibration step (its crossovers decide where `model.sparse: auto` lists spikes):", ""]
        lines += [f"- {r['setting']}: {r.get('calibration', 'not recorded').removeprefix('calibration: ')}"
                  for r in data["rows"] if "samples_per_s" in r]
        lines += ["", "### Targets", "", *targets_table([Target.from_json(t) for t in data["targets"]]), ""]
    lines += ["## Why (notes on the misses)", "", *notes_block(notes, "the CLI targets")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="smoke run at reduced sizes, labelled as such")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--samples", type=int, help="training samples (one epoch); default 1024 (quick 64)")
    parser.add_argument("--test-samples", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=DEFAULT_SETTINGS)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_cli"), help="data files, run folders, logs")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--notes", type=Path, help="hand-written notes (default: OUT/cli_notes.md)")
    parser.add_argument("--reuse-crossovers", action="store_true",
                        help="sparse=auto reads this machine's cached dense/sparse crossovers (default: measured "
                             "anew in this run, in a cache of its own)")
    parser.add_argument("--render", action="store_true",
                        help="only rebuild cli.md from the JSON files in --out (e.g. after writing the notes)")
    args = parser.parse_args(argv)
    notes = args.notes or args.out / "cli_notes.md"
    if args.render:
        (args.out / "cli.md").write_text(render(args.out, notes) + "\n")
        return
    args.steps = args.steps or (400 if args.quick else 1600)
    args.samples = args.samples or (64 if args.quick else 1024)
    args.work = args.work.resolve()
    if not args.reuse_crossovers:
        os.environ["IPU_SNN_CACHE"] = fresh_cache(args.work / "cache")

    start = time.perf_counter()
    files = write_shd_files(args.work / "data", n_train=args.samples, n_test=args.test_samples, steps=args.steps,
                            density=args.density)
    print(f"data files ready in {time.perf_counter() - start:.1f} s", flush=True)
    cfg_path = args.work / "w2_small.yaml"
    cfg_path.write_text(yaml.safe_dump(config(files, args), sort_keys=False))
    load_before = load_average()
    rows = []
    for name in args.settings:
        rows.append(run_setting(name, SETTINGS[name], cfg_path, args))
        r = rows[-1]
        print(f"  {name:22} " + (f"{r['samples_per_s']:8.1f} samples/s  {r['peak_rss_bytes'] / MIB:7.0f} MiB peak RSS"
                                 if "samples_per_s" in r else "FAILED " + r["failed"]), flush=True)
    where = f"T={args.steps}" + ("" if args.steps == 1600 else ", standing in for the issue's T=1600")
    measured = targets(rows, where)
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    payload = {"device": args.device, "quick": args.quick, "command": threads + " ".join(["python"] + sys.argv),
               "machine": machine(), "load_before": load_before, "load_after": load_average(),
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "config": yaml.safe_load(cfg_path.read_text()), "rows": rows,
               "crossovers": "this machine's cache" if args.reuse_crossovers else "measured in this run",
               "targets": [t.to_json() for t in measured]}
    write_json(args.out / f"cli_{args.device}.json", payload)
    (args.out / "cli.md").write_text(render(args.out, notes) + "\n")
    print("\n".join(targets_table(measured)))


if __name__ == "__main__":
    main()
