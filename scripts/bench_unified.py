"""The unified time loop against the plain loop, checkpointing and peer frameworks, each contender in its
own process, side by side in one run; the issue's targets checked from what it measured.

Sections (``--sections``; all by default):

* ``w2``: W2-small (700 Bernoulli(5%) inputs -> RLIF -> LI 20, Adam; CPU: 256 neurons, batch 32,
  T in --steps; CUDA: W1's 1024 neurons, batch 128): the plain loop, fused store_all (one window of T,
  and the planner's window), the unified loop under ``double`` and ``revolve`` (dense and with
  ``model.sparse: auto``), torch.utils.checkpoint every ceil(sqrt(T)) steps over the plain loop, snnTorch;
* ``sparse``: ``model.sparse: auto`` store_all against dense at 5% and 1% input density, and a float64
  check that the losses and gradients are the same;
* ``w1`` and ``w1ff``: small W1 and W1-FF (CPU: batch 32, 256 neurons, T=200; CUDA: W1 of docs/workloads.md at
  batch 128, 1024 neurons, T=1000) against the plain loop, snnTorch and SpikingJelly (W1-FF);
* ``planner``: what ``ipu-snn plan`` predicts for every schedule (its calibrated time and the executor's
  local bytes) against what the same window and schedule measure (CPU);
* ``max_t`` (CUDA): the largest T whose iteration fits --budget-gib, for store_all and double.

One iteration is forward + backward + Adam step. Per contender: the median ms per iteration after a
warm-up, and the peak memory growth of one more iteration (CPU: the process's peak RSS above its RSS
before that iteration; CUDA: torch.cuda.max_memory_allocated above what was allocated before). The
unified loop's window and schedule come from the planner, as ``ipu-snn train`` gets them
(ipu_snn.loop.plan_time_loop: window costs measured here, then ipu_snn.planner.plan); for
``double`` and ``revolve`` the window is the fastest the planner predicts within the memory target
(1/10 of fused store_all's predicted growth, 1/30 at the longest T), else its leanest.

Writes docs/benchmarks/unified_loop_<device>.json and rebuilds docs/benchmarks/unified_loop.md from
every device's JSON present, with the hand-written notes of unified_loop_notes.md.

    python scripts/bench_unified.py                       # CPU, the issue's sizes (T = 400, 1600, 6400)
    python scripts/bench_unified.py --quick               # CPU smoke run: small T, labelled as such
    python scripts/bench_unified.py --targets --threads 2 # only what issue 21's targets read (about 20 min)
    python scripts/bench_unified.py --device cuda         # GPU sections (scripts/gpu_check.sh runs this)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchlib import (Target, die_with_parent, failed_cell, fresh_cache, load_average, machine, machine_lines,
                      notes_block, peak_growth_bytes, ratio_target, run_child, tail, targets_table, time_ms,
                      write_json)
from peer_models import BETA, Skip, snntorch_model, spikingjelly_model

N_INPUTS, N_CLASSES = 700, 20
DENSITY = 0.05
SCHEDULES = ("store_all", "uniform", "revolve", "double", "two_level")
SECTIONS = ("w2", "sparse", "wide", "w1", "w1ff", "planner", "max_t")
#: every ipu_snn contender's surrogate, as the issue measured: bounded support, so sparse_grad: auto lists
SURROGATE = {"name": "triangle", "scale": 10.0}
#: The issue's sizes for the targets (a run at other sizes checks them at its own, and says so)
ISSUE_SHORT_T, ISSUE_LONG_T = 1600, 6400
MIB = 2**20

CONTENDERS = {  # key: what the tables call it
    "plain": "plain loop (autograd, store all)",
    "fused_one_window": "fused store_all, one window of T",
    "fused": "fused store_all, planner's window",
    "fused_sparse": "fused store_all, sparse=auto, dense adjoint",
    "fused_sparse_exact": "fused store_all, sparse=auto, listed backward (sparse_grad: auto, exact)",
    "double": "unified double",
    "double_sparse": "unified double, sparse=auto, listed backward (exact)",
    "revolve": "unified revolve",
    "revolve_sparse": "unified revolve, sparse=auto, listed backward (exact)",
    "checkpoint": "torch.utils.checkpoint every ceil(sqrt(T)) steps, plain loop",
    "snntorch": "snnTorch 1.0",
    "spikingjelly": "SpikingJelly 2.0 (multi-step LIF)",
    "planned": "as planned",
}
MEMORY_SCHEDULES = {"double": ("double", False), "double_sparse": ("double", "auto"),
                    "revolve": ("revolve", False), "revolve_sparse": ("revolve", "auto")}
FUSED_STORE_ALL = ("fused", "fused_one_window")
#: contenders no target reads: run last, so that a time budget (--budget-s) drops them first
OPTIONAL = ("snntorch", "revolve", "revolve_sparse", "checkpoint")
#: --targets: the only (section, contender, densities) that issue 21's targets read; the dense fused reference is
#: the planner's window alone (the faster fused store_all in every run so far), the slow peer runs --slow-repeats
TARGET_JOBS = {("w2", "fused"): (0.05,), ("w2", "double"): (0.05,), ("w2", "double_sparse"): (0.05,),
               ("sparse", "fused"): (0.05, 0.01), ("sparse", "fused_sparse_exact"): (0.05, 0.01),
               ("sparse", "loss64"): (0.05, 0.01),
               ("wide", "fused"): (0.05,), ("wide", "fused_sparse_exact"): (0.05,), ("wide", "snntorch"): (0.05,)}
#: contenders whose iterations take seconds each: --slow-repeats timed iterations, and no memory iteration
#: under --targets (no target reads their memory)
SLOW = ("snntorch", "plain", "checkpoint")


# ====================================================================== the worker: one contender


def packed_batch(batch: int, steps: int, density: float, device: torch.device) -> torch.Tensor:
    """Bernoulli inputs as the loaders give them (packed bits [B, T, ceil(700 / 8)]), made in chunks of
    steps so that a long T never holds its float frames whole."""
    from ipu_snn.network import pack_inputs

    gen = torch.Generator().manual_seed(1)
    chunks = [pack_inputs((torch.rand(batch, min(512, steps - t0), N_INPUTS, generator=gen) < density).float())
              for t0 in range(0, steps, 512)]
    return torch.cat(chunks, 1).to(device)


def float_batch(batch: int, steps: int, density: float, device: torch.device) -> torch.Tensor:
    from ipu_snn.core.bits import unpack_spikes

    return unpack_spikes(packed_batch(batch, steps, density, torch.device("cpu")), N_INPUTS).to(device)


def model_config(job: dict, sparse=False, schedule: str = "store_all", model: dict | None = None,
                 sparse_grad: str = "auto", **bptt):
    from ipu_snn.config import validate_config

    kind = "lif" if job["net"] == "ff" else "rlif"
    depth = 1 if job["net"] == "rlif" else 2  # rlif2: W2-wide's two recurrent layers
    layers = [{"type": kind, "size": job["hidden"], "beta": BETA, "surrogate": SURROGATE} for _ in range(depth)]
    raw = {"model": {"layers": layers, "readout": {"beta": BETA}, "sparse": sparse, "sparse_grad": sparse_grad,
                     **(model or {})},
           "data": {"steps": job["steps"], "batch_size": job["batch"]},
           "bptt": {"schedule": schedule, **bptt}, "device": job["device"]}
    return validate_config(raw, source="bench_unified")


def with_bptt(cfg, **fields):
    """``cfg`` with bptt fields changed; a new schedule keeps only the fields it has (window, budget_gib)."""
    from ipu_snn.config import BPTT_SECTIONS

    merged = {**cfg.bptt.model_dump(), **fields}
    section = BPTT_SECTIONS[merged["schedule"]]
    return cfg.model_copy(update={"bptt": section.model_validate(
        {k: v for k, v in merged.items() if k in section.model_fields})})


#: the off-chip intervals (windows) the memory goal's search tries for double, beside the planner's default
OFFCHIP_EVERY = (None, 2, 3, 4, 6, 8)


def strategy_info(s, p) -> dict:
    return {"window": s.window, "windows": s.windows, "schedule": s.schedule, "predicted_ms": s.predicted_s * 1e3,
            "predicted_local_bytes": s.local_bytes, "predicted_peak_bytes": s.peak_bytes, "costs": p.costs_source}


def planned_loop(cfg, job: dict, memory_ratio: float | None = None):
    """The executor's TimeLoop as ``ipu-snn train`` plans it (window costs measured here, then the
    planner), or with ``memory_ratio`` the fastest window (and for double off-chip interval, `OFFCHIP_EVERY`)
    whose predicted growth (peak less parameters and batch) is within 1/ratio of store_all's; and what the
    planner predicted for it."""
    from ipu_snn.devices import device_spec
    from ipu_snn.calibration import calibrate
    from ipu_snn.planner import NetShape, plan, refusal, window_choices

    spec = device_spec(job["device"])
    measured = calibrate(cfg, N_INPUTS, N_CLASSES, job["batch"], job["density"], device=job["device"])
    costs = measured.costs

    def plan_of(c):
        p = plan(c, spec, n_inputs=N_INPUTS, n_classes=N_CLASSES, batch=job["batch"], costs=costs,
                 crossovers=measured.crossovers)
        if p.chosen is None:
            raise RuntimeError(refusal(p))
        return p

    p = plan_of(cfg)
    chosen, info = p.chosen, {}
    if memory_ratio:
        shape = NetShape.of(cfg, N_INPUTS, N_CLASSES, job["batch"])
        fixed = shape.param_bytes() + shape.batch_bytes()
        goal = (plan_of(with_bptt(cfg, schedule="store_all")).chosen.peak_bytes - fixed) / memory_ratio
        # double's off-chip interval is searched with the window: at the same window a shorter interval tapes
        # a shorter segment (less memory) for about the same time (docs/benchmarks/unified_loop_notes.md)
        intervals = OFFCHIP_EVERY if cfg.bptt.schedule == "double" else (None,)
        options = [plan_of(with_bptt(cfg, window=w, **({"offchip_every": m} if m else {})))
                   for w in window_choices(job["steps"], None) for m in intervals
                   if m is None or m < -(-job["steps"] // w)]
        fitting = [o for o in options if o.chosen.peak_bytes - fixed <= goal]
        p = (min(fitting, key=lambda o: o.chosen.predicted_s) if fitting
             else min(options, key=lambda o: o.chosen.peak_bytes))
        chosen = p.chosen
        info["memory_goal"] = (f"fastest window predicted within 1/{memory_ratio:g} of store_all's growth"
                               if fitting else f"leanest window (none predicted within 1/{memory_ratio:g})")
    return p.run_plan(chosen.name).loop(), info | strategy_info(chosen, p)


def measured_crossovers(cfg, job: dict) -> dict:
    """The crossovers of ``model.sparse: auto`` products, as the calibration step measures them here."""
    from ipu_snn.calibration import crossovers

    return crossovers(cfg, N_INPUTS, N_CLASSES, job["device"])[0]


def product_policies(net) -> dict:
    """How each product of a built network runs (auto: up to the crossover density measured here)."""
    def text(policy):
        return f"auto <= {policy.max_density:.3f}" if policy.mode == "auto" else policy.mode

    sites = {}
    for layer in net.layers:
        sites[layer.input_site.text] = text(layer.policies.input)
        if layer.policies.recurrent is not None:
            sites[layer.recurrent_site.text] = text(layer.policies.recurrent)
    sites[net.readout.site.text] = text(net.readout.policy)
    return sites


def build(job: dict, device: torch.device):
    """(module, forward: inputs -> logits, inputs, info) of a job's contender."""
    from ipu_snn.executor import TimeLoop
    from ipu_snn.network import build_network

    key, info = job["contender"], {}
    hidden = job["hidden"]
    if key == "snntorch":
        model = snntorch_model(job["net"] != "ff", N_INPUTS, hidden, N_CLASSES,
                               depth=2 if job["net"] == "rlif2" else None).to(device)
        return model, model, float_batch(job["batch"], job["steps"], job["density"], device), info
    if key == "spikingjelly":
        if job["net"] != "ff":
            raise Skip("SpikingJelly has no fused recurrent LIF; it is measured on W1-FF")
        model = spikingjelly_model(N_INPUTS, hidden, N_CLASSES).to(device)
        return model, model, float_batch(job["batch"], job["steps"], job["density"], device), info

    mode = None
    if key in ("plain", "checkpoint", "fused_one_window"):
        cfg, loop = model_config(job), TimeLoop()
        mode = None if key == "fused_one_window" else "autograd"
        info = ({"schedule": "checkpointed segments", "window": math.ceil(math.sqrt(job["steps"]))}
                if key == "checkpoint" else {"schedule": "store_all", "window": job["steps"]})
    elif key in ("fused", "fused_sparse", "fused_sparse_exact"):
        cfg = model_config(job, sparse=False if key == "fused" else "auto",
                           sparse_grad="dense" if key == "fused_sparse" else "auto")
        loop, info = planned_loop(cfg, job)
    elif key in MEMORY_SCHEDULES:
        schedule, sparse = MEMORY_SCHEDULES[key]
        cfg = model_config(job, sparse=sparse, schedule=schedule)
        loop, info = planned_loop(cfg, job, job["memory_ratio"])
    elif key == "planned":
        loop, info, cfg = planner_strategy(job)
    else:
        raise ValueError(f"unknown contender {key!r}")
    torch.manual_seed(0)
    net = build_network(cfg.model, N_INPUTS, N_CLASSES, dt=cfg.data.step_seconds, loop=loop, mode=mode,
                        device=job["device"], crossovers=measured_crossovers(cfg, job)).to(device)
    if cfg.model.sparse is not False:
        info["products"] = product_policies(net)
    x = packed_batch(job["batch"], job["steps"], job["density"], device)
    if key == "checkpoint":
        return net, checkpointed_forward(net, job["steps"]), x, info
    return net, lambda inputs: net(inputs).logits, x, info


def checkpointed_forward(net, steps: int):
    """The plain loop's windows under torch.utils.checkpoint, a segment every ceil(sqrt(T)) steps."""
    from torch.utils.checkpoint import checkpoint

    assert net.reduce == "max", "the logits below combine the segments as the max readout does"
    segment = math.ceil(math.sqrt(steps))

    def forward(x):
        xt = x.transpose(0, 1)  # as the network's forward: each window copies its own bits
        state = net.initial_state(x.shape[0], net.readout.fc.weight)
        ys = []
        for t0 in range(0, steps, segment):
            state, y = checkpoint(net.window, state, xt, t0, min(t0 + segment, steps), use_reentrant=False)
            ys.append(y)
        return torch.stack(ys)[..., :N_CLASSES].max(0).values

    return forward


def planner_strategy(job: dict):
    """What ``ipu-snn plan`` shows for one schedule (ipu_snn.cli's plan: calibrate, then plan every
    schedule), as a TimeLoop to measure."""
    from ipu_snn.devices import device_spec
    from ipu_snn.calibration import calibrate
    from ipu_snn.planner import plan

    cfg = model_config(job, schedule=job["schedule"])
    measured = calibrate(cfg, N_INPUTS, N_CLASSES, job["batch"], job["density"], device=job["device"])
    costs = measured.costs
    p = plan(cfg, device_spec(job["device"]), n_inputs=N_INPUTS, n_classes=N_CLASSES, batch=job["batch"],
             compare_all=True, costs=costs,
                 crossovers=measured.crossovers)
    s = next(s for s in p.strategies if s.name == job["schedule"])
    return p.run_plan(s.name).loop(), strategy_info(s, p), cfg


def measure(job: dict) -> dict:
    device = torch.device(job["device"])
    torch.manual_seed(0)
    load = load_average()
    try:
        model, forward, x, info = build(job, device)
    except Skip as reason:
        return {"skipped": str(reason)}
    y = torch.randint(0, N_CLASSES, (job["batch"],), generator=torch.Generator().manual_seed(2)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def iteration():
        loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    iteration()  # kernels built or loaded, crossovers measured, autotuning
    first_s = time.perf_counter() - start
    timing = time_ms(iteration, warmup=max(job["warmup"] - 1, 0), repeats=job["repeats"], sync=sync)
    growth, method = peak_growth_bytes(iteration, device) if job.get("memory", True) else (None, "not measured")
    row = {**timing, "first_s": first_s, "growth_bytes": growth, "memory_method": method, **info,
           "threads": torch.get_num_threads(), "load_before": load[:1]}
    scan = getattr(model, "last_scan", None)
    if scan is not None and scan.T:
        row["local_bytes"] = scan.peak_local_bytes
        row["offchip_bytes"] = scan.peak_offchip_bytes
    return row


#: loss64's exact combinations (name: sparse, schedule) checked against dense store_all in float64; every one
#: with the listed backward (sparse_grad: auto, exact with the triangle surrogate) where it is sparse
EXACT_COMBINATIONS = {"sparse=auto": ("auto", None), "sparse=true": (True, None), "double": (False, "double"),
                      "sparse=auto+double": ("auto", "double")}


def loss64(job: dict) -> dict:
    """float64: the loss and gradients of each exact combination (`EXACT_COMBINATIONS`) against dense
    store_all, same weights, windows of 64 steps."""
    from ipu_snn.bptt.schedules import double
    from ipu_snn.bptt.registry import sqrt_default
    from ipu_snn.executor import TimeLoop
    from ipu_snn.network import build_network

    device = torch.device(job["device"])
    x = packed_batch(job["batch"], job["steps"], job["density"], device)
    y = torch.randint(0, N_CLASSES, (job["batch"],), generator=torch.Generator().manual_seed(2)).to(device)
    results = {}
    double_loop = TimeLoop(64, lambda n: double(n, sqrt_default(n), 0, "uniform"))
    for name, (sparse, schedule) in {"dense": (False, None), **EXACT_COMBINATIONS}.items():
        # sparse=true with lists as long as the layers, so that no spike overflows whatever the density
        cfg = model_config(job, sparse=sparse, model={"sparse_capacity": 1.0} if sparse is True else None)
        torch.manual_seed(0)
        net = build_network(cfg.model, N_INPUTS, N_CLASSES, dt=cfg.data.step_seconds,
                            loop=double_loop if schedule else TimeLoop(64),
                            device=job["device"], crossovers=measured_crossovers(cfg, job)).to(device).double()
        loss = F.cross_entropy(net(x).logits, y)
        loss.backward()
        results[name] = (loss.item(), [p.grad.detach().clone() for p in net.parameters() if p.grad is not None],
                         product_policies(net) if sparse else {})
    dense_loss, dense_grads, _ = results.pop("dense")
    out = {"loss_dense": dense_loss}
    for name, (loss, grads, products) in results.items():
        scale = max(g.abs().max().item() for g in dense_grads)
        out[name] = {
            "loss": loss, "loss_rel_diff": abs(loss - dense_loss) / abs(dense_loss),
            "grad_rel_diff": max((a - b).abs().max().item() for a, b in zip(grads, dense_grads)) / scale,
            "products": products}
    return out


def largest_steps(attempt, start: int, limit: int) -> tuple[int, str]:
    """Double T from ``start`` up to ``limit`` while ``attempt(T)`` fits (returns None; else it returns why
    not): the largest T that did, and why the search stopped."""
    best, steps = 0, start
    while steps <= limit:
        why = attempt(steps)
        if why:
            return best, why
        best, steps = steps, steps * 2
    return best, f"limit T={limit} reached"


def max_t(job: dict) -> dict:
    """CUDA: the largest T whose training iteration fits ``budget_gib`` of device memory, doubling T, within
    ``seconds`` of searching (a T whose predicted iteration would not finish in time is not tried)."""
    from ipu_snn.devices import GiB, device_spec
    from ipu_snn.network import build_network
    from ipu_snn.calibration import calibrate
    from ipu_snn.planner import plan

    device = torch.device("cuda")
    cfg0 = model_config(job, schedule=job["schedule"], budget_gib=job["budget_gib"])
    measured = calibrate(cfg0, N_INPUTS, N_CLASSES, job["batch"], job["density"], device="cuda")
    costs = measured.costs
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(job["budget_gib"] * GiB / total, device)
    deadline = time.perf_counter() + job["seconds"]
    tries = []

    def attempt(steps: int) -> str | None:
        cfg = model_config({**job, "steps": steps}, schedule=job["schedule"], budget_gib=job["budget_gib"])
        p = plan(cfg, device_spec("cuda"), n_inputs=N_INPUTS, n_classes=N_CLASSES, batch=job["batch"], costs=costs,
                 crossovers=measured.crossovers)
        s = p.chosen or min(p.strategies, key=lambda s: s.peak_bytes)  # refused by the planner: try its leanest
        left = deadline - time.perf_counter()
        if 2 * s.predicted_s > left:
            return f"time budget: T={steps} not tried (predicted {s.predicted_s:.1f} s an iteration, {left:.0f} s left)"
        net = x = optimizer = None
        try:
            torch.manual_seed(0)
            net = build_network(cfg.model, N_INPUTS, N_CLASSES, dt=cfg.data.step_seconds,
                                loop=p.run_plan(s.name).loop(), device="cuda",
                                crossovers=measured.crossovers).to(device)
            x = packed_batch(job["batch"], steps, job["density"], device)
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            F.cross_entropy(net(x).logits, torch.zeros(job["batch"], dtype=torch.long, device=device)).backward()
            optimizer.step()
            torch.cuda.synchronize()
            tries.append({"T": steps, "ms": (time.perf_counter() - start) * 1e3, "window": s.window,
                          "schedule": s.schedule, "peak_bytes": torch.cuda.max_memory_allocated()})
            return None
        except torch.OutOfMemoryError:
            tries.append({"T": steps, "out_of_memory": True})
            return f"T={steps} ran out of memory"
        finally:
            del net, x, optimizer
            torch.cuda.empty_cache()

    best, why = largest_steps(attempt, job["steps"], job["limit"])
    return {"largest_t": best, "stopped": why, "tries": tries, "load_before": load_average()[:1]}


WORKERS = {"measure": measure, "loss64": loss64, "max_t": max_t}


def fp32_only() -> None:
    """CUDA products in full fp32 (TF32 off), as the baselines of docs/workloads.md were measured."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def worker_main(spec: str) -> None:
    die_with_parent()
    job = json.loads(spec)
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    if job["device"] == "cuda":
        fp32_only()
    print("RESULT " + json.dumps(WORKERS[job["kind"]](job)), flush=True)


# ====================================================================== the parent: jobs, runs, docs


def sizes(args) -> dict:
    """Workload sizes per section; the CUDA defaults are W1 of docs/workloads.md (batch 128, 1024 neurons)."""
    cuda = args.device == "cuda"
    batch = args.batch or (128 if cuda else 32)
    hidden = args.hidden or (1024 if cuda else 256)
    steps = args.steps or ([50, 200] if args.quick else [1000, 4000] if cuda else [400, 1600, 6400])
    long_t = max(steps) if len(steps) > 1 else None
    return {"batch": batch, "hidden": hidden, "steps": sorted(steps), "long_t": long_t,
            "short_t": sorted(steps)[-2] if len(steps) > 1 else steps[0],
            "w1_steps": args.w1_steps or (50 if args.quick else 1000 if cuda else 200),
            "sparse_steps": args.sparse_steps or (200 if args.quick else 1000 if cuda else ISSUE_SHORT_T),
            "wide_hidden": args.wide_hidden or (256 if args.quick else 1024),
            "wide_steps": args.wide_steps or (200 if args.quick else 1000 if cuda else ISSUE_SHORT_T),
            "planner_steps": args.planner_steps or (200 if args.quick else ISSUE_SHORT_T)}


def make_jobs(args) -> list[dict]:
    """Every job of the run without repeats, those the targets need first, so that a --budget-s cut
    skips the others."""
    z = sizes(args)
    base = {"kind": "measure", "device": args.device, "batch": z["batch"], "hidden": z["hidden"], "net": "rlif",
            "density": DENSITY, "repeats": args.repeats, "warmup": args.warmup}
    wanted = set(args.sections)
    jobs = []

    def add(**fields):
        job = {**base, **fields}
        if args.only and job["kind"] == "measure" and not any(s in job["contender"] for s in args.only):
            return
        if args.targets:
            if job["density"] not in TARGET_JOBS.get((job["section"], job["contender"]), ()):
                return
            if job["contender"] in SLOW:
                job["memory"] = False
        if job["contender"] in SLOW and args.slow_repeats:
            job["repeats"] = args.slow_repeats
        if job not in jobs:
            jobs.append(job)

    if "w1" in wanted:
        for key in ("fused", "fused_sparse", "plain", "snntorch"):
            add(section="w1", contender=key, steps=z["w1_steps"])
    if "w1ff" in wanted:
        for key in ("fused", "spikingjelly", "plain"):
            add(section="w1ff", net="ff", contender=key, steps=z["w1_steps"])
    if "max_t" in wanted and args.device == "cuda":
        for schedule in ("store_all", "double"):
            add(section="max_t", kind="max_t", contender=f"max_t_{schedule}", schedule=schedule,
                steps=z["steps"][0], budget_gib=args.budget_gib, limit=args.max_t_limit, seconds=args.max_t_seconds)
    if "w2" in wanted:
        for steps in z["steps"]:
            ratio = 30 if steps == z["long_t"] else 10
            for key in ("fused", "fused_one_window", "double", "double_sparse", "revolve", "revolve_sparse",
                        "plain", "checkpoint", "snntorch"):
                add(section="w2", contender=key, steps=steps,
                    **({"memory_ratio": ratio} if key in MEMORY_SCHEDULES else {}))
    if "sparse" in wanted:
        for density in (0.05, 0.01):
            for key in ("fused", "fused_one_window", "fused_sparse", "fused_sparse_exact"):
                add(section="sparse", contender=key, steps=z["sparse_steps"], density=density)
            add(section="sparse", kind="loss64", contender="loss64", steps=z["sparse_steps"], density=density)
    if "wide" in wanted:  # W2-wide: 700 -> RLIF -> RLIF -> LI 20
        for density in (0.05, 0.01):
            for key in ("fused", "fused_sparse", "fused_sparse_exact", "snntorch"):
                add(section="wide", net="rlif2", hidden=z["wide_hidden"], contender=key, steps=z["wide_steps"],
                    density=density)
    if "planner" in wanted and args.device == "cpu":
        for schedule in SCHEDULES:
            add(section="planner", contender="planned", schedule=schedule, steps=z["planner_steps"])
    return sorted(jobs, key=lambda job: job["contender"] in OPTIONAL)  # stable: each group keeps its order


def same_job(a: dict, b: dict) -> bool:
    """Jobs that differ only in the section that asked for them measure the same thing."""
    return {k: v for k, v in a.items() if k != "section"} == {k: v for k, v in b.items() if k != "section"}


def run_jobs(args, jobs: list[dict], on_row=lambda rows: None) -> list[dict]:
    """Each job in its own process (``--no-isolate``: in this one), rows in the jobs' order; ``on_row(rows)``
    after each, so that what a run measured is kept if it is stopped."""
    rows, start = [], time.perf_counter()
    done: list[dict] = []
    for i, job in enumerate(jobs):
        previous = next((r for r in done if same_job(r["job"], job)), None)
        label = f"{job['section']:8} {job['contender']:17} T={job['steps']:<6} density={job['density']:.2f}"
        if previous is not None:
            rows.append({**previous, "job": job})
            continue
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            result = {"skipped": f"time budget of {args.budget_s:g} s spent"}
        elif args.isolate:
            child = run_child([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
                              log=args.logs / f"{i:02d}_{job['section']}_{job['contender']}_{job['steps']}.log",
                              timeout_s=args.job_timeout)
            line = next((ln for ln in reversed(child.output.splitlines()) if ln.startswith("RESULT ")), None)
            if child.returncode == 0 and line:
                result = json.loads(line[len("RESULT "):]) | {"process_peak_rss_bytes": child.peak_rss_bytes}
            else:
                why = "timed out" if child.timed_out else f"exit {child.returncode}"
                result = {"failed": f"{why}: {tail(child.output, 6)}"}
        else:
            try:
                result = WORKERS[job["kind"]](job)
            except Exception as error:  # a broken contender is reported, the run goes on
                result = {"failed": f"{type(error).__name__}: {error}"}
        row = {"job": job, **result}
        done.append(row)
        rows.append(row)
        print(f"  {label}  {summary_text(row)}", flush=True)
        on_row(rows)
    return rows


def summary_text(row: dict) -> str:
    if "skipped" in row or "failed" in row:
        return row.get("skipped") or "FAILED " + row["failed"].splitlines()[-1]
    if "median_ms" in row:
        growth = "" if row["growth_bytes"] is None else f"  {row['growth_bytes'] / MIB:8.1f} MiB growth"
        return f"{row['median_ms']:9.1f} ms{growth}"
    if "largest_t" in row:
        return f"largest T {row['largest_t']} ({row['stopped']})"
    return "; ".join(f"{k}: loss diff {v['loss_rel_diff']:.1e}, gradients {v['grad_rel_diff']:.1e}"
                     for k, v in row.items() if isinstance(v, dict) and "loss_rel_diff" in v)


# ---------------------------------------------------------------------- targets


def find(rows: list[dict], contender: str, steps: int, density: float = DENSITY, net: str = "rlif") -> dict | None:
    for r in rows:
        j = r["job"]
        if (j["contender"], j["steps"], j["density"], j["net"]) == (contender, steps, density, net) \
                and "median_ms" in r:
            return r
    return None


def fused_reference(rows, steps, density=DENSITY, net="rlif") -> dict | None:
    """Fused store_all as the targets compare with it: the faster of one window of T and the planner's window."""
    found = [r for r in (find(rows, k, steps, density, net) for k in FUSED_STORE_ALL) if r]
    return min(found, key=lambda r: r["median_ms"]) if found else None


def size_note(steps, issue_steps) -> str:
    return f"T={steps}" if steps == issue_steps else f"T={steps}, standing in for the issue's T={issue_steps}"


def cpu_targets(rows: list[dict], z: dict) -> list[Target]:
    """Issue 21's targets first, each listed whether measured or not; then the earlier issues' targets whose
    contenders this run measured."""
    targets, legacy = [], []

    def ratio(text, num, den, limit, at_most, what, into=targets):
        target = ratio_target(text, num, den, limit, at_most, lambda r: r[what], lambda r: describe(r, what),
                              "not measured in this run")
        if into is targets or target.value is not None:
            into.append(target)

    for density, need in ((0.05, 5.0), (0.01, 7.0)):
        steps = z["sparse_steps"]
        ratio(f"W2-small sparse exact (listed backward) over dense fused at {density:.0%} input "
              f"({size_note(steps, ISSUE_SHORT_T)})", fused_reference(rows, steps, density),
              find(rows, "fused_sparse_exact", steps, density), need, False, "median_ms")
    steps, wide = z["wide_steps"], f"{size_note(z['wide_steps'], ISSUE_SHORT_T)}, {z['wide_hidden']} neurons"
    exact_wide = find(rows, "fused_sparse_exact", steps, 0.05, "rlif2")
    ratio(f"W2-wide sparse exact over dense fused at 5% input ({wide})",
          fused_reference(rows, steps, 0.05, "rlif2"), exact_wide, 8.0, False, "median_ms")
    ratio(f"W2-wide snnTorch over sparse exact at 5% input ({wide})",
          find(rows, "snntorch", steps, 0.05, "rlif2"), exact_wide, 20.0, False, "median_ms")
    for steps, issue, mem in ((z["short_t"], ISSUE_SHORT_T, 10), (z["long_t"], ISSUE_LONG_T, 30)):
        if steps is None:
            continue
        ref, double, plain = fused_reference(rows, steps), find(rows, "double", steps), find(rows, "plain", steps)
        where = size_note(steps, issue)
        ratio(f"double (dense) time vs fused store_all ({where})", double, ref, 1.3, True, "median_ms")
        ratio(f"double (dense) memory: fused store_all's growth / double's ({where})", ref, double, mem, False,
              "growth_bytes")
        ratio(f"double faster than the plain loop: plain / double time ({where})", plain, double, 1.0, False,
              "median_ms", into=legacy)
    if z["long_t"] is not None:
        steps = z["long_t"]
        ref, ds = fused_reference(rows, steps), find(rows, "double_sparse", steps)
        where = size_note(steps, ISSUE_LONG_T)
        ratio(f"sparse exact + double faster than dense fused store_all: fused / (sparse + double) time ({where})",
              ref, ds, 2.0, False, "median_ms")
        ratio(f"sparse exact + double memory: fused store_all's growth / its growth ({where})", ref, ds, 30, False,
              "growth_bytes")
    targets += exact_targets(rows)
    for density, need in ((0.05, 3.0), (0.01, 5.0)):
        steps = z["sparse_steps"]
        ratio(f"sparse=auto store_all (dense adjoint) speed-up over dense fused at {density:.0%} input "
              f"({size_note(steps, ISSUE_SHORT_T)})", fused_reference(rows, steps, density),
              find(rows, "fused_sparse", steps, density), need, False, "median_ms", into=legacy)
    w1 = best_time_target(rows, f"small W1 ms/iter ({size_note(z['w1_steps'], 200)})", z["w1_steps"], "rlif", 30.0)
    legacy += [t for t in [w1] + planner_targets(rows) if t.value is not None]
    return targets + legacy


def exact_targets(rows: list[dict]) -> list[Target]:
    """Every exact combination of the float64 check (loss64) against dense store_all: the loss, and the
    gradients relative to their scale, each within 1e-12 (the worst over combinations and densities)."""
    checks = [r for r in rows if r["job"]["kind"] == "loss64" and "loss_dense" in r]
    combos = [(r["job"]["density"], name, c) for r in checks for name, c in r.items()
              if isinstance(c, dict) and "loss_rel_diff" in c]
    if not combos:
        return [Target("every exact combination in float64: loss relative difference", None, 1e-12, True,
                       "not measured in this run", ""),
                Target("every exact combination in float64: gradient difference / gradient scale", None, 1e-12,
                       True, "not measured in this run", "")]
    names = sorted({name for _, name, _ in combos})
    out = []
    for key, text in (("loss_rel_diff", "loss relative difference"),
                      ("grad_rel_diff", "gradient difference / gradient scale")):
        density, name, worst = max(combos, key=lambda c: c[2][key])
        out.append(Target(f"every exact combination in float64: {text}", worst[key], 1e-12, True,
                          f"worst: {name} at {density:.0%} input, over {len(combos)} checks ({', '.join(names)})",
                          ""))
    return out


def best_time_target(rows, text, steps, net, limit) -> Target:
    ours = [r for r in (find(rows, k, steps, net=net) for k in ("fused", "fused_sparse")) if r]
    if not ours:
        return Target(text, None, limit, True, "not measured in this run", " ms")
    best = min(ours, key=lambda r: r["median_ms"])
    return Target(text, best["median_ms"], limit, True, f"{CONTENDERS[best['job']['contender']]} "
                  f"(fastest ipu_snn contender)", " ms")


def planner_errors(rows) -> list[dict]:
    out = []
    for r in rows:
        if r["job"]["contender"] == "planned" and "median_ms" in r and r.get("local_bytes"):
            out.append({"schedule": r["job"]["schedule"], "window": r["window"],
                        "time": r["predicted_ms"] / r["median_ms"] - 1,
                        "bytes": r["predicted_local_bytes"] / r["local_bytes"] - 1})
    return out


def planner_targets(rows) -> list[Target]:
    errors = planner_errors(rows)
    if not errors:
        return [Target("ipu-snn plan time within 25% of measured, every schedule", None, 25, True,
                       "not measured in this run", "%"),
                Target("ipu-snn plan local bytes within 10% of measured, every schedule", None, 10, True,
                       "not measured in this run", "%")]
    out = []
    for what, limit, text in (("time", 25, "time"), ("bytes", 10, "local bytes")):
        worst = max(errors, key=lambda e: abs(e[what]))
        out.append(Target(f"ipu-snn plan {text} within {limit}% of measured, every schedule (the worst)",
                          100 * abs(worst[what]), limit, True,
                          f"{worst['schedule']} (window {worst['window']}): predicted {100 * worst[what]:+.0f}%",
                          "%"))
    return out


def cuda_targets(rows: list[dict], z: dict) -> list[Target]:
    targets = [best_time_target(rows, f"W1 ms/iter ({size_note(z['w1_steps'], 1000)})", z["w1_steps"], "rlif", 20.0),
               best_time_target(rows, f"W1-FF ms/iter ({size_note(z['w1_steps'], 1000)})", z["w1_steps"], "ff",
                                14.0)]
    ours, jelly = find(rows, "fused", z["w1_steps"], net="ff"), find(rows, "spikingjelly", z["w1_steps"], net="ff")
    targets.append(ratio_target("W1-FF memory: SpikingJelly's growth / ours", jelly, ours, 4.0, False,
                                lambda r: r["growth_bytes"], lambda r: describe(r, "growth_bytes")))
    ref, double = fused_reference(rows, z["short_t"]), find(rows, "double", z["short_t"])
    targets.append(ratio_target(f"double time vs fused store_all (T={z['short_t']})", double, ref, 1.3, True,
                                lambda r: r["median_ms"], lambda r: describe(r, "median_ms")))
    largest = {r["job"]["schedule"]: r for r in rows if "largest_t" in r}
    if "store_all" in largest and "double" in largest and largest["store_all"]["largest_t"]:
        a, b = largest["double"], largest["store_all"]
        targets.append(Target("largest T within the budget: double's / store_all's",
                              a["largest_t"] / b["largest_t"], 100, False,
                              f"{a['largest_t']} ({a['stopped']}) / {b['largest_t']} ({b['stopped']})"))
    else:
        targets.append(Target("largest T within the budget: double's / store_all's", None, 100, False,
                              "not measured"))
    return targets


def describe(row: dict, what: str) -> str:
    name = CONTENDERS[row["job"]["contender"]]
    value = f"{row[what]:.0f} ms" if what == "median_ms" else f"{row[what] / MIB:.1f} MiB"
    return f"{name} {value}"


# ---------------------------------------------------------------------- the doc


def cell_window(r: dict) -> str:
    if "window" not in r:
        return ""
    goal = f"; {r['memory_goal']}" if "memory_goal" in r else ""
    return f"{r['schedule']}, L={r['window']}{goal}"


def status_cell(r: dict) -> str | None:
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    if "failed" in r:
        return failed_cell(r["failed"])
    return None


def less_or_more(reference: float, value: float) -> str:
    ratio = reference / max(value, 1)
    return f"{ratio:.1f}x less" if ratio >= 1 else f"{1 / ratio:.1f}x more"


def measured_table(rows: list[dict], ref_of) -> list[str]:
    lines = ["| contender | T | ms/iter (min-max) | vs fused store_all | peak growth MiB | growth vs fused | "
             "executor local MiB | window and schedule | load |", "|---|---|---|---|---|---|---|---|---|"]
    order = list(CONTENDERS)
    for r in sorted(rows, key=lambda r: (r["job"]["steps"], order.index(r["job"]["contender"]))):
        j = r["job"]
        name = CONTENDERS[j["contender"]]
        bad = status_cell(r)
        if bad:
            lines.append(f"| {name} | {j['steps']} | {bad} | | | | | | |")
            continue
        ref = ref_of(j)
        speed = f"{r['median_ms'] / ref['median_ms']:.2f}x" if ref else ""
        measured = r["growth_bytes"] is not None and ref and ref["growth_bytes"] is not None
        mem = less_or_more(ref["growth_bytes"], r["growth_bytes"]) if measured else ""
        growth = "not measured" if r["growth_bytes"] is None else f"{r['growth_bytes'] / MIB:.1f}"
        local = f"{r['local_bytes'] / MIB:.1f}" if r.get("local_bytes") else ""
        products = "; ".join(f"{k}: {v}" for k, v in r.get("products", {}).items())
        window = cell_window(r) + (f" ({products})" if products else "")
        load = f"{r['load_before'][0]:.1f}" if r.get("load_before") else ""
        lines.append(f"| {name} | {j['steps']} | {r['median_ms']:.1f} ({r['min_ms']:.0f}-{r['max_ms']:.0f}) | "
                     f"{speed} | {growth} | {mem} | {local} | {window} | {load} |")
    return lines


def section_lines(data: dict) -> list[str]:
    rows, z, device = data["rows"], data["sizes"], data["device"]
    quick = data["quick"]
    title = f"## {device.upper()}" + (" — QUICK SMOKE RUN (reduced sizes; not the issue's measurement)" if quick else "")
    lines = [title, "", *machine_lines(data["machine"], data["command"]),
             f"- Load average (1, 5, 15 min) before: {data['load_before']}, after: {data['load_after']}; "
             f"the `load` column is the 1-minute load when each contender's process started",
             f"- Wall time of the run: {data['wall_s'] / 60:.1f} min; sparse=auto crossovers: {data['crossovers']} "
             "(each contender's products column shows them)", ""]
    if quick:
        lines += ["> This is a smoke run of the harness at reduced sizes: its numbers say nothing about the targets.",
                  ""]
    if not data["complete"]:
        lines += [f"> **Partial run**: it stopped after {len(rows)} jobs; what is missing is not measured.", ""]
    if not data["isolated"]:
        lines += ["> Contenders ran in one process (`--no-isolate`), so their memory figures share it.", ""]
    lines += ["### Targets", "",
              "As the run that made this section checked them (since issue 21: its targets first, each listed "
              "whether measured or not, then earlier issues' targets where measured). *Sparse exact*: `model.sparse: auto` with `model.sparse_grad: auto` (the listed "
              "backward, exact for a bounded surrogate); every ipu_snn contender, dense or sparse, uses the "
              f"`{SURROGATE['name']}` surrogate (scale {SURROGATE['scale']:g}). snnTorch keeps its fast sigmoid: its "
              "autograd loop costs the same whatever the surrogate (its `triangular` is not of bounded support).", "",
              *targets_table([Target.from_json(t) for t in data["targets"]]), ""]
    w2 = [r for r in rows if r["job"]["section"] == "w2"]
    if w2:
        lines += [f"### W2-small: 700 -> RLIF {z['hidden']} -> LI 20, batch {z['batch']}, {DENSITY:.0%} inputs", "",
                  "`vs fused store_all`: time over the faster fused store_all at the same T; `growth vs fused`: its "
                  "peak growth over this one's.", "",
                  *measured_table(w2, lambda j: fused_reference(rows, j["steps"])), ""]
    sparse = [r for r in rows if r["job"]["section"] == "sparse" and r["job"]["kind"] == "measure"]
    if sparse:
        lines += [f"### Sparse inputs: sparse=auto against dense, store_all, T={z['sparse_steps']}", ""]
        for density in (0.05, 0.01):
            mine = [r for r in sparse if r["job"]["density"] == density]
            lines += [f"Input density {density:.0%}:", "",
                      *measured_table(mine, lambda j: fused_reference(rows, j["steps"], j["density"])), ""]
        for r in (r for r in rows if r["job"]["kind"] == "loss64"):
            bad = status_cell(r)
            if bad:
                lines.append(f"- float64 check at {r['job']['density']:.0%}: {bad}")
                continue
            for name, c in ((k, v) for k, v in r.items() if isinstance(v, dict) and "loss_rel_diff" in v):
                products = "; ".join(f"{k}: {v}" for k, v in c["products"].items())
                lines.append(f"- float64, {r['job']['density']:.0%} input, {name}: loss {c['loss']:.15g} against "
                             f"dense store_all {r['loss_dense']:.15g} (relative difference {c['loss_rel_diff']:.1e}); "
                             f"largest gradient difference {c['grad_rel_diff']:.1e} of the largest gradient "
                             f"({products})")
        lines.append("")
    wide = [r for r in rows if r["job"]["section"] == "wide"]
    if wide:
        lines += [f"### W2-wide: 700 -> RLIF {z['wide_hidden']} -> RLIF {z['wide_hidden']} -> LI 20, batch "
                  f"{z['batch']}, store_all, T={z['wide_steps']}", ""]
        for density in (0.05, 0.01):
            mine = [r for r in wide if r["job"]["density"] == density]
            lines += [f"Input density {density:.0%}:", "",
                      *measured_table(mine, lambda j: fused_reference(rows, j["steps"], j["density"], j["net"])), ""]
    for section, title in (("w1", "Small W1: 700 -> RLIF -> LI 20" if device == "cpu" else "W1: 700 -> RLIF -> LI 20"),
                           ("w1ff", "W1-FF: 700 -> LIF -> LIF -> 20")):
        mine = [r for r in rows if r["job"]["section"] == section]
        if mine:
            lines += [f"### {title}, {z['hidden']} neurons per layer, batch {z['batch']}, T={z['w1_steps']}", "",
                      *measured_table(mine, lambda j: find(rows, "fused", j["steps"], net=j["net"])), ""]
    planned = [r for r in rows if r["job"]["contender"] == "planned"]
    if planned:
        lines += [f"### Planner: `ipu-snn plan` against measurement, T={z['planner_steps']}", "",
                  "Each schedule at the window the planner picks for it, with the window costs it measures here; "
                  "`local` is the executor's count of taped windows and local checkpoints, which the planner "
                  "predicts.", "",
                  "| schedule | window | predicted ms | measured ms | time error | predicted local MiB | "
                  "measured local MiB | bytes error |", "|---|---|---|---|---|---|---|---|"]
        for r in planned:
            bad = status_cell(r)
            if bad:
                lines.append(f"| {r['job']['schedule']} | {bad} | | | | | | |")
                continue
            local = r.get("local_bytes")
            bytes_error = f"{100 * (r['predicted_local_bytes'] / local - 1):+.1f}%" if local else "n/a"
            lines.append(f"| {r['schedule']} | {r['window']} | {r['predicted_ms']:.0f} | {r['median_ms']:.0f} | "
                         f"{100 * (r['predicted_ms'] / r['median_ms'] - 1):+.0f}% | "
                         f"{r['predicted_local_bytes'] / MIB:.2f} | {(local or 0) / MIB:.2f} | {bytes_error} |")
        lines.append("")
    largest = [r for r in rows if r["job"]["kind"] == "max_t"]
    if largest:
        lines += [f"### Largest T within {largest[0]['job']['budget_gib']} GiB (doubling from T={z['steps'][0]})", "",
                  "| schedule | largest T | stopped | tries |", "|---|---|---|---|"]
        for r in largest:
            bad = status_cell(r)
            tries = "; ".join(f"T={t['T']}: " + (f"{t['ms']:.0f} ms, {t['peak_bytes'] / MIB:.0f} MiB, L={t['window']}"
                                                   if "ms" in t else t.get("skipped", "out of memory"))
                              for t in r.get("tries", []))
            lines.append(f"| {r['job']['schedule']} | {bad or r['largest_t']} | {r.get('stopped', '')} | {tries} |")
        lines.append("")
    return lines


def render(out: Path, notes: Path) -> str:
    lines = ["# The unified time loop: benchmarks", "",
             "Made by `scripts/bench_unified.py` (CPU) and `scripts/gpu_check.sh` (CUDA); every number below "
             "comes from the run whose command, machine and date head its section. Each contender runs in its own "
             "process: one training iteration is forward + backward + Adam step, timed after a warm-up (median, "
             "with the range); the peak growth is that of one more iteration (CPU: peak RSS above the RSS before "
             "it, freed heap returned to the system first; CUDA: torch.cuda.max_memory_allocated above what was "
             "allocated before). Inputs are Bernoulli spikes, as packed bits for ipu_snn and float frames for the "
             "peers, allocated before the measurement. The through-the-CLI targets are in [cli.md](cli.md).", ""]
    for device in ("cpu", "cuda"):
        path = out / f"unified_loop_{device}.json"
        if path.exists():
            lines += section_lines(json.loads(path.read_text()))
        elif device == "cuda":
            lines += ["## CUDA", "", "Not measured: no GPU has run `scripts/gpu_check.sh` for this doc yet.", ""]
    lines += ["## Why (notes on the misses)", "", *notes_block(notes, "the targets above")]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the defaults that depend on other options (--quick, --targets) filled in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, labelled as such")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--only", nargs="+", help="contenders to run (substring of their keys)")
    parser.add_argument("--targets", action="store_true",
                        help="only the jobs issue 21's targets read (sections w2, sparse, wide; see TARGET_JOBS); "
                             "W2's T defaults to the issue's 1600 and 6400")
    parser.add_argument("--slow-repeats", type=int,
                        help="timed iterations of the slow contenders (plain loop, checkpoint, snnTorch); "
                             "--targets default 1")
    parser.add_argument("--steps", type=int, nargs="+", help="W2's T values (the last two stand for 1600, 6400)")
    parser.add_argument("--w1-steps", type=int)
    parser.add_argument("--sparse-steps", type=int)
    parser.add_argument("--planner-steps", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--wide-hidden", type=int, help="W2-wide's neurons per layer (default 1024)")
    parser.add_argument("--wide-steps", type=int, help="W2-wide's T (default: the issue's 1600)")
    parser.add_argument("--repeats", type=int, help="timed iterations per contender (default 3; quick 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads in every contender (default: torch's)")
    parser.add_argument("--budget-gib", type=float, default=4.0, help="max_t: the device-memory budget")
    parser.add_argument("--max-t-limit", type=int, default=1 << 20)
    parser.add_argument("--max-t-seconds", type=float, default=90.0, help="max_t: seconds per schedule's search")
    parser.add_argument("--budget-s", type=float, help="skip the jobs left once this many seconds have passed")
    parser.add_argument("--job-timeout", type=float, default=1800.0)
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="run every contender in this process (tests; memory figures then share it)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--notes", type=Path, help="hand-written notes (default: OUT/unified_loop_notes.md)")
    parser.add_argument("--logs", type=Path, default=Path("runs/bench_unified"), help="each contender's output")
    parser.add_argument("--reuse-crossovers", action="store_true",
                        help="sparse=auto reads this machine's cached dense/sparse crossovers (default: measured "
                             "anew in this run, in a cache of its own under --logs)")
    parser.add_argument("--render", action="store_true",
                        help="only rebuild unified_loop.md from the JSON files in --out (e.g. after a GPU run)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.targets:
        needed = ("w2", "sparse", "wide")
        args.sections = [s for s in args.sections if s in needed] if args.sections != list(SECTIONS) else list(needed)
        args.steps = args.steps or ([50, 200] if args.quick else [ISSUE_SHORT_T, ISSUE_LONG_T])
        args.slow_repeats = args.slow_repeats or 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        worker_main(args.worker)
        return
    notes = args.notes or args.out / "unified_loop_notes.md"
    if args.render:
        (args.out / "unified_loop.md").write_text(render(args.out, notes) + "\n")
        return
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("bench_unified.py --device cuda: torch sees no CUDA GPU here")
        fp32_only()
    if not args.reuse_crossovers:
        os.environ["IPU_SNN_CACHE"] = fresh_cache(args.logs / "cache")
    z = sizes(args)
    jobs = make_jobs(args)
    if args.threads:
        for job in jobs:
            job["threads"] = args.threads
    print(f"{len(jobs)} jobs on {args.device}; sizes {z}", flush=True)
    load_before, start = load_average(), time.perf_counter()

    def save(rows, complete):
        targets = (cuda_targets if args.device == "cuda" else cpu_targets)(rows, z)
        payload = {"device": args.device, "quick": args.quick, "complete": complete, "isolated": args.isolate,
                   "command": " ".join(["python"] + sys.argv), "machine": machine(), "load_before": load_before,
                   "load_after": load_average(), "wall_s": time.perf_counter() - start, "sizes": z, "rows": rows,
                   "crossovers": "this machine's cache" if args.reuse_crossovers else "measured in this run",
                   "targets": [t.to_json() for t in targets]}
        write_json(args.out / f"unified_loop_{args.device}.json", payload)
        (args.out / "unified_loop.md").write_text(render(args.out, notes) + "\n")
        return targets

    rows = run_jobs(args, jobs, on_row=lambda rows: save(rows, complete=False))
    print("\n".join(targets_table(save(rows, complete=True))))


if __name__ == "__main__":
    main()
