"""The unified loop's benchmark harness (scripts/bench_unified.py, bench_cli.py, gpu_check.sh): the quick CPU
modes start, measure every contender and write their docs; the targets compare in the right direction;
the GPU check refuses to run without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_cli  # noqa: E402
import bench_unified  # noqa: E402
import study_surrogates  # noqa: E402
from benchlib import Target  # noqa: E402

TINY = ["--batch", "2", "--hidden", "8", "--steps", "16", "32", "--w1-steps", "16", "--sparse-steps", "32",
        "--planner-steps", "32", "--wide-hidden", "8", "--wide-steps", "16", "--repeats", "1", "--threads", "1"]


def run(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})


def test_unified_quick_run_measures_every_contender_and_writes_the_doc(tmp_path):
    (tmp_path / "unified_loop_notes.md").write_text("Hand-written why of each miss.\n")
    done = run(sys.executable, str(SCRIPTS / "bench_unified.py"), "--quick", "--device", "cpu", *TINY,
               "--no-isolate", "--out", str(tmp_path), "--logs", str(tmp_path / "logs"))
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "unified_loop_cpu.json").read_text())
    assert data["quick"] and data["complete"]
    assert not [r for r in data["rows"] if "failed" in r]
    measured = {(r["job"]["section"], r["job"]["contender"], r["job"]["steps"]) for r in data["rows"]
                if "median_ms" in r}
    for steps in (16, 32):
        for key in ("plain", "fused", "fused_one_window", "double", "double_sparse", "revolve", "revolve_sparse",
                    "checkpoint", "snntorch"):
            assert ("w2", key, steps) in measured
    assert {("w1", k, 16) for k in ("fused", "fused_sparse", "plain")} <= measured
    assert {("sparse", k, 32) for k in ("fused_sparse", "fused_sparse_exact")} <= measured
    wide = {(r["job"]["contender"], r["job"]["density"]) for r in data["rows"] if r["job"]["section"] == "wide"
            and "median_ms" in r and r["job"]["net"] == "rlif2"}
    assert wide == {(k, d) for k in ("fused", "fused_sparse", "fused_sparse_exact", "snntorch") for d in (0.05, 0.01)}
    planned = {r["job"]["schedule"]: r for r in data["rows"] if r["job"]["contender"] == "planned"}
    assert set(planned) == set(bench_unified.SCHEDULES)
    assert all(r["local_bytes"] > 0 and r["predicted_local_bytes"] > 0 for r in planned.values())
    checks = [r for r in data["rows"] if r["job"]["kind"] == "loss64"]
    assert len(checks) == 2 and all(c["sparse=true"]["loss_rel_diff"] < 1e-9 for c in checks)
    assert all(c[k]["loss_rel_diff"] <= 1e-12 and c[k]["grad_rel_diff"] <= 1e-12 for c in checks
               for k in ("sparse=auto", "double", "sparse=auto+double"))
    assert all(t["status"] in ("PASS", "MISS") for t in data["targets"]), data["targets"]

    doc = (tmp_path / "unified_loop.md").read_text()
    assert "QUICK SMOKE RUN" in doc and "Hand-written why of each miss." in doc and "### W2-wide" in doc
    assert data["command"] in doc and "Load average" in doc
    assert all(t["target"] in doc for t in data["targets"])
    # the doc is rebuilt from the JSON alone
    (tmp_path / "unified_loop.md").unlink()
    assert run(sys.executable, str(SCRIPTS / "bench_unified.py"), "--render", "--out", str(tmp_path)).returncode == 0
    assert (tmp_path / "unified_loop.md").read_text() == doc


def test_unified_targets_runs_only_what_the_issue_targets_read():
    jobs = bench_unified.make_jobs(bench_unified.parse_args(["--targets"]))
    got = {(j["section"], j["contender"], j["steps"], j["density"]) for j in jobs}
    assert got == {("w2", k, t, 0.05) for k in ("fused", "double", "double_sparse") for t in (1600, 6400)} | {
        ("sparse", k, 1600, d) for k in ("fused", "fused_sparse_exact", "loss64") for d in (0.05, 0.01)} | {
        ("wide", k, 1600, 0.05) for k in ("fused", "fused_sparse_exact", "snntorch")}
    (peer,) = [j for j in jobs if j["contender"] == "snntorch"]
    assert peer["repeats"] == 1 and peer["memory"] is False and peer["hidden"] == 1024
    assert {j["memory_ratio"] for j in jobs if j["contender"] == "double"} == {10, 30}


def test_unified_runs_a_contender_in_its_own_process(tmp_path):
    done = run(sys.executable, str(SCRIPTS / "bench_unified.py"), "--quick", *TINY, "--sections", "w1",
               "--only", "fused_sparse", "--out", str(tmp_path), "--logs", str(tmp_path / "logs"))
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "unified_loop_cpu.json").read_text())["rows"]
    assert row["median_ms"] > 0 and row["process_peak_rss_bytes"] > row["growth_bytes"] >= 0
    assert row["products"] and (tmp_path / "logs" / "cache" / "calibration.json").is_file()  # measured in this run


def test_cli_quick_run_trains_through_the_cli_and_writes_the_doc(tmp_path):
    done = run(sys.executable, str(SCRIPTS / "bench_cli.py"), "--quick", "--steps", "16", "--samples", "4",
               "--test-samples", "2", "--batch", "2", "--hidden", "8", "--settings", "default",
               "--work", str(tmp_path / "work"), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "cli_cpu.json").read_text())
    (row,) = data["rows"]
    assert row["samples_per_s"] > 0 and row["peak_rss_bytes"] > 0 and row["plan"].startswith("bptt: store_all")
    assert [t["status"] for t in data["targets"]] == ["not measured"] * 4
    doc = (tmp_path / "cli.md").read_text()
    assert "QUICK SMOKE RUN" in doc and data["command"] in doc and "cli_notes.md" in doc


def row(contender, steps, ms, mib, density=0.05, net="rlif", **extra):
    job = {"contender": contender, "steps": steps, "density": density, "net": net, "kind": "measure",
           "section": "w2"}
    return {"job": job, "median_ms": ms, "growth_bytes": mib * 2**20, **extra}


def test_targets_compare_with_the_faster_store_all_in_the_right_direction():
    rows = [row("fused", 100, 120.0, 50), row("fused_one_window", 100, 100.0, 80),
            row("double", 100, 130.0, 10), row("plain", 100, 260.0, 200),
            row("fused", 400, 400.0, 200), row("double", 400, 800.0, 4), row("double_sparse", 400, 300.0, 10)]
    z = {"short_t": 100, "long_t": 400, "sparse_steps": 100, "w1_steps": 16, "wide_steps": 100, "wide_hidden": 64}
    targets = bench_unified.cpu_targets(rows, z)

    def pick(prefix, steps):
        return next(t for t in targets if t.text.startswith(prefix) and f"T={steps}" in t.text)

    time_short, memory_short = pick("double (dense) time", 100), pick("double (dense) memory", 100)
    plain_short = pick("double faster than the plain loop", 100)
    assert time_short.value == pytest.approx(1.3) and time_short.status == "PASS"  # 130 / the faster, 100
    assert memory_short.value == pytest.approx(8.0) and memory_short.status == "MISS"  # that one's 80 MiB / 10
    assert memory_short.shortfall() == "1.25x short"
    assert plain_short.value == pytest.approx(2.0) and plain_short.status == "PASS"
    time_long, memory_long = pick("double (dense) time", 400), pick("double (dense) memory", 400)
    sparse_time, sparse_memory = pick("sparse exact + double faster", 400), pick("sparse exact + double memory", 400)
    assert time_long.status == "MISS" and time_long.shortfall() == "1.54x over the limit"  # 800 / 400 against 1.3
    assert memory_long.value == pytest.approx(50.0) and memory_long.status == "PASS"  # 200 / 4 against 30
    assert sparse_time.value == pytest.approx(4 / 3) and sparse_time.status == "MISS"  # against 2x
    assert sparse_memory.value == pytest.approx(20.0) and sparse_memory.shortfall() == "1.50x short"
    # Issue 21's targets are listed even when this run did not measure them; the earlier ones only when measured.
    statuses = {t.text.split(" (")[0]: t.status for t in targets}
    assert statuses["W2-wide snnTorch over sparse exact at 5% input"] == "not measured"
    assert statuses["every exact combination in float64: loss relative difference"] == "not measured"
    assert not any(text.startswith("small W1 ms/iter") for text in statuses)


def test_cli_targets():
    rows = [{"setting": "default", "samples_per_s": 10.0, "peak_rss_bytes": 1000},
            {"setting": "bptt.schedule=double", "samples_per_s": 7.5, "peak_rss_bytes": 700},
            {"setting": "dense fast_sigmoid", "samples_per_s": 4.0, "peak_rss_bytes": 900},
            {"setting": "sparse=auto triangle 3", "samples_per_s": 13.0, "peak_rss_bytes": 900}]
    speed, memory, defaults, bounded = bench_cli.targets(rows, "T=1600")
    assert speed.status == "PASS" and speed.value == pytest.approx(0.75)  # >= 1 / 1.4
    assert memory.status == "MISS" and memory.shortfall() == "1.17x over the limit"  # 0.7 against 0.6
    # the issue's "the defaults >= 3x dense fast_sigmoid": measured against that row, not the default
    assert defaults.status == "MISS" and defaults.value == pytest.approx(2.5)
    assert bounded.status == "PASS" and bounded.value == pytest.approx(3.25)
    # the baseline states every setting it measures against, so it stays the issue's whatever the defaults
    assert set(bench_cli.SETTINGS["dense fast_sigmoid"]) >= {"model.sparse=false", "model.sparse_grad=dense",
                                                           "model.layers.0.surrogate.name=fast_sigmoid"}


def test_surrogate_study_verdict_needs_every_task_within_one_point(tmp_path):
    runs = [{"arm": arm, "task": task, "seed": seed, "test_accuracy": acc + 0.002 * seed}
            for arm, accs in {"fast_sigmoid 10": (0.90, 0.50), "triangle 3": (0.895, 0.48),
                              "triangle 5": (0.91, 0.495)}.items()
            for task, acc in zip(("tiny", "harder"), accs) for seed in range(3)]
    data = {"arms": dict.fromkeys(["fast_sigmoid 10", "triangle 3", "triangle 5"]), "tasks": {"tiny": [], "harder": []},
            "runs": runs, "epochs": 8, "seeds": [0, 1, 2], "command": "c", "load_start": [0.0], "complete": True,
            "machine": {"cpu": "x", "cores": 2, "torch_threads": 1, "torch": "t", "python": "p", "date": "d"}}
    (tmp_path / "notes.md").write_text("## Decision\n\nkept")
    doc = study_surrogates.render(data, tmp_path / "notes.md")
    assert "`triangle 3`: NOT within 1 point" in doc and "largest shortfall +2.0 points" in doc  # 2 short on harder
    assert "`triangle 5`: within 1 point" in doc and "| 91.2 ± 0.2 (n=3) (+1.0) |" in doc
    assert doc.rstrip().endswith("kept")
    assert study_surrogates.arm("triangle 3") == ("triangle", 3.0)


def test_target_without_a_measurement_is_not_a_pass():
    t = Target("x", None, 1.0, True, "not measured")
    assert t.status == "not measured" and t.shortfall() == ""
    assert Target.from_json(Target("y", 2.0, 1.0, True, "d").to_json()).status == "MISS"


def test_largest_steps_doubles_until_an_attempt_says_why_not():
    def fits_up_to(largest):
        return lambda steps: None if steps <= largest else f"T={steps} ran out of memory"

    assert bench_unified.largest_steps(fits_up_to(4000), 1000, 10**6) == (4000, "T=8000 ran out of memory")
    assert bench_unified.largest_steps(fits_up_to(10**9), 1000, 3000) == (2000, "limit T=3000 reached")
    assert bench_unified.largest_steps(fits_up_to(0), 1000, 10**6) == (0, "T=1000 ran out of memory")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_gpu_check_fails_loudly_without_a_gpu(tmp_path):
    done = run("bash", str(SCRIPTS / "gpu_check.sh"),
               env={"PYTHON": sys.executable, "GPU_CHECK_DOCS": str(tmp_path / "docs"),
                    "GPU_CHECK_LOGS": str(tmp_path / "logs")})
    assert done.returncode != 0
    assert "sees no CUDA GPU" in done.stderr and "nothing was measured" in done.stderr
    assert not (tmp_path / "docs").exists()
