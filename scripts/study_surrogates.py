"""Which surrogate by default: final test accuracy of bounded surrogates against fast_sigmoid.

Each arm (a surrogate at a scale) trains ``configs/tiny.yaml`` through the CLI, over several seeds, on
three tasks: the tiny config's synthetic data, the synthetic data made harder (the data of
docs/benchmarks/synthetic_difficulty.md with more jitter, dropout and noise), and an SHD-layout event task
written by scripts/make_event_task.py and read through ``data.dataset: events``. Each run is its own
process with one torch thread, so accuracy does not depend on the machine's load (only the wall time
does). Results are written after every run, so a stopped study leaves what it finished.

    python scripts/study_surrogates.py --jobs 2        # the documented study
    python scripts/study_surrogates.py --seeds 1 --tasks tiny --arms "fast_sigmoid 10" "triangle 5" \
        --stem surrogates_pilot                        # a pilot: which scale to study
    python scripts/study_surrogates.py --epochs 1 --seeds 1 --out /tmp/s   # smoke run

An arm is ``"<surrogate> <scale>"``; since the scale is a sharpness for every surrogate (fast_sigmoid,
triangle and boxcar peak at 1), triangle k has the support |x| < 1/k and boxcar k |x| < 1/(2k).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import command_line, load_average, machine, machine_lines, notes_block, run_child, tail, write_json

ROOT = Path(__file__).resolve().parent.parent
ARMS = ["fast_sigmoid 10", "triangle 5", "triangle 3"]  # "<surrogate> <scale>": the documented study
REFERENCE = "fast_sigmoid 10"


def arm(spec: str) -> tuple[str, float]:
    name, scale = spec.split()
    return name, float(scale)
HARDER = ["data.synthetic.jitter=0.02", "data.synthetic.dropout=0.3", "data.synthetic.noise_rate=4.0"]


def tasks(event_dir: Path) -> dict[str, list[str]]:
    return {
        "tiny": [],
        "synthetic, harder": HARDER,
        "event task": ["data.dataset=events", f"data.path={event_dir}", "data.files.train=train.h5",
                       "data.files.test=test.h5"],
    }


def train(out: Path, overrides: list[str], timeout_s: float) -> dict:
    argv = [sys.executable, "-m", "ipu_snn.cli", "train", str(ROOT / "configs/tiny.yaml"), "--out", str(out),
            *overrides]
    child = run_child(argv, log=out.with_suffix(".log"), timeout_s=timeout_s)
    summary = out / "summary.json"
    if child.returncode != 0 or not summary.is_file():
        return {"error": f"exit {child.returncode}" + (" (timed out)" if child.timed_out else ""),
                "log": tail(child.output, 5)}
    s = json.loads(summary.read_text())
    return {"test_accuracy": s["test_accuracy"], "val_accuracy": s["val_accuracy"], "wall_s": round(child.wall_s, 1)}


def render(data: dict, notes: Path) -> str:
    arms, task_names = list(data["arms"]), list(data["tasks"])
    lines = ["# Surrogate accuracy study", "",
             "Final test accuracy (mean ± sd over seeds, in points) of `configs/tiny.yaml`'s network (RLIF 128 -> LI) "
             f"trained with each surrogate, {data['epochs']} epochs (the config says 20; fewer to keep the study "
             "near an hour of CPU), seeds " + ", ".join(map(str, data["seeds"])) + " (`training.seed`). "
             "Tasks: `tiny` is the config as it is; `synthetic, harder` adds `" + " ".join(HARDER) + "`; "
             "`event task` is `scripts/make_event_task.py`'s SHD-layout files (10 classes, 700 channels, "
             "2000 + 500 samples) through `data.dataset: events`. A scale `k` is the surrogate's "
             "`model.layers.N.surrogate.scale`, a sharpness: fast_sigmoid, triangle and boxcar all peak at 1 at the "
             "threshold; triangle's support is |v - threshold| < 1/k, boxcar's < 1/(2k).", "",
             *machine_lines(data["machine"], data["command"]),
             f"- Load average (1, 5, 15 min) at start {data['load_start']}, at end {data.get('load_end', 'n/a')} "
             "(the machine was shared; runs use one torch thread, so accuracies do not depend on it)",
             *([f"- Note: {data['note']}"] if data.get("note") else []),
             *([f"- Every run also: `{' '.join(data['overrides'])}`"] if data.get("overrides") else []),
             f"- Status: {'complete' if data.get('complete') else 'PARTIAL: the study was stopped before every run finished'}",
             "", "| surrogate | " + " | ".join(task_names) + " |", "|---|" + "---|" * len(task_names)]
    means = {}
    for arm in arms:
        cells = []
        for task in task_names:
            accs = [r["test_accuracy"] * 100 for r in data["runs"] if r["arm"] == arm and r["task"] == task
                    and "test_accuracy" in r]
            if not accs:
                cells.append("not run")
                continue
            means[arm, task] = statistics.mean(accs)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            delta = "" if arm == REFERENCE or (REFERENCE, task) not in means else \
                f" ({means[arm, task] - means[REFERENCE, task]:+.1f})"
            cells.append(f"{means[arm, task]:.1f} ± {sd:.1f} (n={len(accs)}){delta}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", f"In brackets: the difference from `{REFERENCE}`, in points."]
    failed = [r for r in data["runs"] if "error" in r]
    if failed:
        lines += ["", "Runs that failed:", *[f"- {r['arm']}, {r['task']}, seed {r['seed']}: {r['error']}"
                                              for r in failed]]
    verdict = []
    for arm in arms:
        if arm == REFERENCE:
            continue
        gaps = [means[REFERENCE, t] - means[arm, t] for t in task_names if (arm, t) in means and (REFERENCE, t) in means]
        if len(gaps) == len(task_names):
            ok = all(g <= 1.0 for g in gaps)
            verdict.append(f"- `{arm}`: {'within' if ok else 'NOT within'} 1 point of `{REFERENCE}` on every task "
                           f"(largest shortfall {max(gaps):+.1f} points)")
    if verdict:
        lines += ["", "Within 1 point (the issue's bar for a new default):", *verdict]
    if notes.exists():  # hand-written: the decision, and what the study did not settle
        lines += ["", *notes_block(notes, "the study")]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", nargs="*", default=ARMS, help='"<surrogate> <scale>" each; the first is the '
                        f"reference, {REFERENCE!r}, if it is among them")
    parser.add_argument("--tasks", nargs="*", default=None, help="a subset of the tasks (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one torch thread each")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (e.g. training.lr=0.0025)")
    parser.add_argument("--stem", default="surrogates", help="the report's file name, without .md/.json")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ipu_snn_surrogate_study")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks")
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    parser.add_argument("--render", action="store_true", help="only rebuild STEM.md from STEM.json in --out (e.g. "
                        "after writing the hand-written STEM_notes.md beside it)")
    parser.add_argument("--note", default="", help="a line for the report, e.g. which commit the code was")
    args = parser.parse_args()
    if args.render:
        data = json.loads((args.out / f"{args.stem}.json").read_text())
        (args.out / f"{args.stem}.md").write_text(render(data, args.out / f"{args.stem}_notes.md"))
        return
    os.environ.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    event_dir = args.work / "event_task"
    if not (event_dir / "test.h5").is_file():
        run_child([sys.executable, str(ROOT / "scripts/make_event_task.py"), "--out", str(event_dir)],
                  log=args.work / "make_event_task.log", timeout_s=600)
    task_table = {t: o for t, o in tasks(event_dir).items() if args.tasks is None or t in args.tasks}
    info = machine()
    info["torch_threads"] = 1
    data = {"command": command_line(), "machine": info, "epochs": args.epochs, "seeds": list(range(args.seeds)),
            "arms": {a: {"surrogate": arm(a)[0], "scale": arm(a)[1]} for a in args.arms},
            "tasks": {t: o for t, o in task_table.items()}, "load_start": load_average(), "note": args.note,
            "overrides": args.set,
            "runs": []}

    def save(complete: bool) -> None:
        data["complete"], data["load_end"] = complete, load_average()
        write_json(args.out / f"{args.stem}.json", data)
        (args.out / f"{args.stem}.md").write_text(render(data, args.out / f"{args.stem}_notes.md"))

    lock = threading.Lock()

    def one(seed: int, task: str, overrides: list[str], spec: str) -> None:
        name, scale = arm(spec)
        out = args.work / f"{task.replace(', ', '_').replace(' ', '_')}-{name}-{scale:g}-seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        run = {"arm": spec, "task": task, "seed": seed}
        run.update(train(out, [*overrides, *args.set, f"training.seed={seed}", f"training.epochs={args.epochs}",
                               f"model.layers.0.surrogate.name={name}",
                               f"model.layers.0.surrogate.scale={scale}"], args.timeout_s))
        with lock:
            data["runs"].append(run)
            print(json.dumps(run), flush=True)
            save(False)

    # seeds outermost: a stopped study has every arm at the same seeds
    work = [(seed, task, overrides, spec) for seed in range(args.seeds) for task, overrides in task_table.items()
            for spec in args.arms]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for done in [pool.submit(one, *w) for w in work]:
            done.result()
    save(True)


if __name__ == "__main__":
    main()
