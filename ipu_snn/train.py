"""The training loop: one readable recipe driven by the config.

Per epoch: train with a progress bar, validate, step the LR schedule, append a
row to metrics.csv, redraw curves.png, write summary.json, save a checkpoint.
Everything needed to continue (weights, optimizer, scheduler, RNG streams,
metric history) is in the checkpoint, so ``--resume`` ends where an
uninterrupted run would.
"""

from __future__ import annotations

import random
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .checkpoint import load_weights, save_checkpoint
from .config import Config, dump_config
from .data import input_shape, load_splits, make_loader
from .devices import device_spec, resolve_device, spike_backend
from .distributed import (DistContext, GlobalBatchSampler, all_reduce_sum, barrier, broadcast_object,
                          init_distributed, shutdown)
from .errors import ConfigError, TrainingError
from .files import replace_atomically
from .metrics import WorkloadTally, footprint_bytes
from .network import SpikingNetwork, build_network, count_parameters, step_mode
from .ops.registry import resolve_backend
from .optim import make_optimizer, make_scheduler
from .planner import Plan, calibrate, plan, refusal
from .reporting import RateColumn, TensorBoardLog, percent, plot_curves, rate_text, write_metrics_csv, write_summary
from .run_folder import check_can_start, claim_run_folder, newest_intact_checkpoint, out_dir_path

# Sections that must be unchanged for a checkpoint to be continued; training.epochs
# may grow, so a finished run can be extended with --resume training.epochs=N.
_RESUME_MUST_MATCH = ("model", "data", "bptt")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.1%}"), RateColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    )


def _to_device(batch, device: torch.device):
    # inputs are packed bits (1 bit per channel and step), small enough to sit on the device whole
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train_epoch(model, network: SpikingNetwork, loader, sampler: GlobalBatchSampler, optimizer, device,
                cfg: Config, ctx: DistContext, epoch: int, progress: Progress) -> dict:
    """One pass over the training data; metrics are summed over all processes."""
    model.train()
    step_sizes = sampler.steps()
    micro_per_step = cfg.training.grad_accumulation
    task = progress.add_task(f"epoch {epoch}/{cfg.training.epochs}", total=len(step_sizes), loss=0.0, acc=0.0,
                             rate=0.0)
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, samples
    rates, dropped = None, 0
    batches = iter(loader)
    start = time.perf_counter()
    for step, global_n in enumerate(step_sizes):
        optimizer.zero_grad(set_to_none=True)
        step_totals = torch.zeros(3, dtype=torch.float64)
        for micro in range(micro_per_step):
            x, y = _to_device(next(batches), device)
            # DDP averages gradients over processes; scaling the summed loss by
            # world/global_n makes the result the mean over the whole global batch
            sync = micro == micro_per_step - 1 or not ctx.active
            with model.no_sync() if not sync else nullcontext():
                out = model(x)
                loss_sum = F.cross_entropy(out.logits, y, reduction="sum")
                (loss_sum * (ctx.world_size / global_n)).backward()
            step_totals += torch.tensor([loss_sum.item(), (out.logits.argmax(1) == y).sum().item(), y.numel()],
                                        dtype=torch.float64)
            dropped += int(out.dropped.sum())
            layer_rates = out.rates.sum(0).cpu()
            rates = layer_rates if rates is None else rates + layer_rates
        step_totals = torch.tensor(all_reduce_sum(ctx, step_totals.tolist(), device), dtype=torch.float64)
        if not np.isfinite(step_totals[0].item()):  # every rank sees the same sum, so all stop together
            raise TrainingError(
                f"the loss became {step_totals[0].item() / step_totals[2].item()} at epoch {epoch}, batch {step + 1}; "
                "training stopped and the last good checkpoint is kept. Lower training.lr, set training.grad_clip, "
                "or check the inputs")
        if cfg.training.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
        optimizer.step()
        totals += step_totals
        progress.update(task, advance=1, loss=totals[0].item() / totals[2].item(),
                        acc=totals[1].item() / totals[2].item(), rate=totals[2].item() / (time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    loss, correct, seen = totals.tolist()
    *rate_sums, dropped = all_reduce_sum(ctx, rates.tolist() + [dropped], device)
    row = {"train_loss": loss / seen, "train_accuracy": correct / seen, "samples_per_s": seen / elapsed,
           "epoch_s": elapsed}
    row |= {f"rate_layer{i}": r / seen for i, r in enumerate(rate_sums)}
    if cfg.model.sparse is not False:
        row["spikes_dropped"] = int(dropped)
    return row


@torch.no_grad()
def evaluate(model: SpikingNetwork, dataset, batch_size: int, device, ctx: DistContext = DistContext(),
             tally: WorkloadTally | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a dataset, sharded over the processes; ``tally`` also
    gathers the counts of the workload metrics (ipu_snn.metrics), summed over the processes."""
    model.eval()
    sampler = GlobalBatchSampler(len(dataset), batch_size, ctx, shuffle=False)
    totals = [0.0, 0.0, 0.0]
    for batch in make_loader(dataset, sampler):
        x, y = _to_device(batch, device)
        out = model(x, with_counts=tally is not None)
        logits = out.logits
        totals[0] += F.cross_entropy(logits, y, reduction="sum").item()
        totals[1] += (logits.argmax(1) == y).sum().item()
        totals[2] += y.numel()
        if tally is not None:
            tally.add(x, out, model.n_inputs)
    loss, correct, seen = all_reduce_sum(ctx, totals, device)
    if tally is not None and ctx.active and tally.input_ac is not None:
        tally.load_flat(all_reduce_sum(ctx, tally.flat(), device), ctx.world_size)
    return loss / seen, correct / seen


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: devices whose window costs can be measured on this machine (the others are costed from their spec)
_MEASURABLE = ("cpu", "cuda", "ipu-emulator")


def input_density(dataset, samples: int = 16) -> float:
    """The mean spike density of the first samples of a dataset (packed bits or frames)."""
    from .neuron.bits import count_spikes

    total = active = 0
    for i in range(min(samples, len(dataset))):
        x, _ = dataset[i]
        if x.dtype == torch.uint8:
            active += int(count_spikes(x).sum())
            total += x.shape[0] * dataset.rec.n_channels // dataset.pooling
        else:
            active += int((x != 0).sum())
            total += x.numel()
    return active / max(total, 1)


def plan_time_loop(cfg: Config, console: Console, per_process_batch: int, density: float | None = None
                   ) -> tuple[Plan, Config]:
    """The executor's window and schedule for this run, and the config with them resolved.

    Bytes are predicted from shapes first, so a run that cannot fit is refused before anything is
    allocated. Where the choice depends on time (``bptt.schedule: auto``, or no ``bptt.window``), the
    window costs are measured here on the real shapes and batch. The resolved config records the choice,
    so that a resumed run and an evaluation run exactly the windows this run trained with."""
    n_inputs, n_classes = input_shape(cfg.data)
    spec = device_spec(cfg.device)
    p = plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, batch=per_process_batch, compare_all=True)
    if p.choice is None:
        raise ConfigError(refusal(p))
    if (cfg.bptt.schedule == "auto" or cfg.bptt.window is None) and cfg.device in _MEASURABLE:
        start = time.perf_counter()
        costs = calibrate(cfg, n_inputs, n_classes, per_process_batch, 0.05 if density is None else density,
                          device=cfg.device)
        p = plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, batch=per_process_batch, compare_all=True,
                 costs=costs)
        console.print(f"planning: window costs measured in {time.perf_counter() - start:.1f} s")
        if p.choice is None:
            raise ConfigError(refusal(p))
    chosen = p.chosen
    console.print(f"bptt: {chosen.schedule} over {chosen.windows} windows of {chosen.window} steps, predicted "
                  f"{chosen.peak_bytes / 2**20:,.0f} MiB and {chosen.predicted_s * 1e3:,.0f} ms per iteration on "
                  f"{p.device}")
    bptt = cfg.bptt.model_copy(update={"schedule": chosen.name, "window": chosen.window})
    return p, cfg.model_copy(update={"bptt": bptt})


def _check_resumable(saved: dict, cfg: Config, folder: Path) -> None:
    current = cfg.model_dump(mode="json")
    # the planner's choices (bptt.schedule: auto, no bptt.window) are resolved in the saved config
    for key, unset in (("schedule", "auto"), ("window", None)):
        if current["bptt"].get(key) == unset:
            current["bptt"][key] = saved.get("bptt", {}).get(key)
    changed = [k for k in _RESUME_MUST_MATCH if saved.get(k) != current.get(k)]
    saved_training = {k: v for k, v in saved.get("training", {}).items() if k != "epochs"}
    changed += [f"training.{k}" for k, v in saved_training.items() if current["training"].get(k) != v]
    if changed:
        raise TrainingError(f"cannot resume from {folder}: the config differs in {', '.join(changed)}; "
                            "resume with the run's own config.yaml or start a new --out folder")


def prepare_kernels(cfg: Config, device: torch.device) -> None:
    """Build or load the compiled kernels the network calls before any epoch clock starts, so a first-use
    build (the C++ kernels take about 30 s, and say so) is not counted in the first epoch's samples/s."""
    from .neuron.kernels import resolve

    if step_mode(cfg.model) == "fused":
        resolve(None, device)
    if cfg.model.sparse is not False:
        resolve_backend(spike_backend(cfg.device), device)


def open_tensorboard(cfg: Config, out_dir: Path) -> TensorBoardLog | None:
    if not cfg.training.tensorboard:
        return None
    try:
        return TensorBoardLog(out_dir / "tensorboard")
    except ImportError:
        raise ConfigError("training.tensorboard: true needs the tensorboard package "
                          "(pip install 'ipu_snn[tensorboard]')") from None


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, console: Console | None = None,
          on_epoch_end: Callable[[int, dict, SpikingNetwork], None] | None = None) -> dict:
    """Train as the config says; returns the summary also written to summary.json.

    Under torchrun every process runs this function; only rank 0 prints and writes.
    IPUs have their own loop (PopTorch), launched by poprun instead of torchrun.
    """
    out_dir = out_dir_path(out_dir)
    initial_weights = None
    if cfg.model.from_nir is not None:  # the graph gives the layers, the readout and their first weights
        from .interop.nir import resolve_from_nir

        cfg, initial_weights = resolve_from_nir(cfg)
    if cfg.device in ("ipu", "ipu-model"):
        from .ipu.trainer import train_ipu

        return train_ipu(cfg, out_dir, resume=resume, console=console, on_epoch_end=on_epoch_end,
                         initial_weights=initial_weights)
    if cfg.device == "ipu-emulator":
        import ipu_snn.ipu  # noqa: F401  (registers the emulator's spike backend)
    ctx = init_distributed(cfg.device)
    try:
        with ExitStack() as owned:  # the run folder's lock, held until the run ends
            summary = _train(cfg, out_dir, resume, console, on_epoch_end, ctx, owned, initial_weights)
    except BaseException:
        shutdown(ctx, clean=False)
        raise
    shutdown(ctx)
    return summary


def _train(cfg: Config, out_dir: Path, resume: bool, console: Console | None, on_epoch_end, ctx: DistContext,
           owned: ExitStack, initial_weights: dict | None = None) -> dict:
    console = console if ctx.is_main and console is not None else Console(quiet=not ctx.is_main)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and ctx.active:
        device = torch.device("cuda", ctx.local_rank)
    global_batch = cfg.data.batch_size * (ctx.world_size if cfg.data.batch_scope == "per_device" else 1)
    if global_batch < ctx.world_size * cfg.training.grad_accumulation:
        raise ConfigError(f"data.batch_size: a global batch of {global_batch} cannot be split over "
                          f"{ctx.world_size} processes x {cfg.training.grad_accumulation} accumulation steps")
    micro_batch = -(-global_batch // (ctx.world_size * cfg.training.grad_accumulation))
    n_inputs, n_classes = input_shape(cfg.data)
    # bytes from shapes before anything is loaded or allocated: a run that cannot fit stops here
    bytes_plan = plan(cfg, device_spec(cfg.device), n_inputs=n_inputs, n_classes=n_classes, batch=micro_batch,
                      compare_all=True)
    if bytes_plan.choice is None:
        raise ConfigError(refusal(bytes_plan))
    check_can_start(out_dir, resume, check_lock=ctx.is_main)
    splits = load_splits(cfg.data, cfg.training.seed)  # before writing anything: bad data leaves no run folder
    if ctx.is_main:
        owned.enter_context(claim_run_folder(out_dir, resume, say=console.out))
    tensorboard = open_tensorboard(cfg, out_dir) if ctx.is_main else None

    seed_everything(cfg.training.seed)
    if resume:
        previous = newest_intact_checkpoint(out_dir)
        for note in previous.notes:
            console.out(f"note: {note}", style="yellow")
        state = previous.state
        _check_resumable(state["config"], cfg, previous.folder)
        # the windows and schedule the run trained with, as its saved config resolved them
        cfg = cfg.model_copy(update={"bptt": type(cfg.bptt).model_validate(state["config"]["bptt"])})
    else:
        # every process runs the windows rank 0 chose, whatever its own measurements say
        cfg = broadcast_object(ctx, plan_time_loop(cfg, console, micro_batch, input_density(splits.train))[1]
                               if ctx.is_main else None)
    bptt = plan(cfg, device_spec(cfg.device), n_inputs=n_inputs, n_classes=n_classes, batch=micro_batch,
                compare_all=True)
    seed_everything(cfg.training.seed)
    network = build_network(cfg.model, splits.n_inputs, splits.n_classes, splits.dt, loop=bptt.loop(),
                            binary_inputs=cfg.data.binary, device=cfg.device).to(device)
    if initial_weights is not None:
        network.load_state_dict(initial_weights, strict=True)
    optimizer = make_optimizer(cfg.training, network.parameters())
    scheduler = make_scheduler(cfg.training, optimizer)
    history: list[dict] = []
    wall_before = 0.0
    if resume:
        load_weights(network, previous.weights, previous.folder)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        history, wall_before = state["history"], state["wall_s"]
        console.print(f"resuming {out_dir} after epoch {len(history)} ({previous.folder.name})")
    model = DDP(network, device_ids=[device.index] if device.type == "cuda" else None) if ctx.active else network
    sampler = GlobalBatchSampler(len(splits.train), global_batch, ctx, accumulation=cfg.training.grad_accumulation,
                                 seed=cfg.training.seed)
    train_loader = make_loader(splits.train, sampler)
    if ctx.is_main:
        replace_atomically(out_dir / "config.yaml", dump_config(cfg).encode())
    console.print(f"training {count_parameters(network):,} parameters on {device}"
                  f"{f' x {ctx.world_size} processes' if ctx.active else ''} "
                  f"({len(splits.train)} train / {len(splits.val) if splits.val else 0} val samples, "
                  f"T={cfg.data.num_steps}, {splits.n_inputs} inputs, {splits.n_classes} classes, "
                  f"global batch {global_batch})")
    prepare_kernels(cfg, device)

    run_start = time.perf_counter()
    try:
        with progress_bar(console) as progress:
            for epoch in range(len(history) + 1, cfg.training.epochs + 1):
                sampler.set_epoch(epoch)
                row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
                row |= train_epoch(model, network, train_loader, sampler, optimizer, device, cfg, ctx, epoch,
                                   progress)
                if splits.val is not None:
                    tally = WorkloadTally()
                    row["val_loss"], row["val_accuracy"] = evaluate(network, splits.val, global_batch, device, ctx,
                                                                    tally)
                    row |= tally.metrics(network.state_dict(), prefix="val_")
                scheduler.step()
                history.append(row)
                wall = wall_before + time.perf_counter() - run_start
                if ctx.is_main:
                    write_reports(out_dir, history, run_summary(history, wall, device, network))
                    if tensorboard:
                        tensorboard.log(row, epoch)
                    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "rng": _rng_state(), "history": history, "wall_s": wall,
                             "config": cfg.model_dump(mode="json")}
                    save_checkpoint(out_dir, epoch, network, state, keep=cfg.training.keep_checkpoints)
                barrier(ctx)  # no process starts the next epoch before the checkpoint exists
                progress.console.print(epoch_line(row, cfg.training.epochs))
                if on_epoch_end is not None:
                    on_epoch_end(epoch, row, network)
    finally:
        if tensorboard:
            tensorboard.close()

    tally = WorkloadTally()
    test_loss, test_accuracy = evaluate(network, splits.test, global_batch, device, ctx, tally)
    summary = run_summary(history, wall_before + time.perf_counter() - run_start, device, network)
    summary |= {"test_loss": test_loss, "test_accuracy": test_accuracy, "processes": ctx.world_size}
    summary |= tally.metrics(network.state_dict(), prefix="test_")
    if ctx.is_main:
        write_summary(out_dir / "summary.json", summary)
    console.print(f"done: val accuracy {percent(summary['val_accuracy'])}, test accuracy {test_accuracy:.1%}; "
                  f"results in {out_dir}")
    return summary


def run_summary(history: list[dict], wall: float, device, model) -> dict:
    last = history[-1]
    train_time = sum(r["epoch_s"] for r in history)
    samples = sum(r["samples_per_s"] * r["epoch_s"] for r in history)
    val = [r["val_accuracy"] for r in history if r.get("val_accuracy") is not None]
    return {
        "val_accuracy": last.get("val_accuracy"),
        "best_val_accuracy": max(val) if val else None,
        "train_loss": last["train_loss"],
        "train_accuracy": last["train_accuracy"],
        "samples_per_s": samples / train_time,
        "wall_s": wall,
        "epochs": last["epoch"],
        "device": str(device),
        "parameters": count_parameters(model),
        "footprint_bytes": footprint_bytes(model),  # NeuroBench's: parameters and buffers
    }


def write_reports(out_dir: Path, history: list[dict], summary: dict) -> None:
    write_metrics_csv(out_dir / "metrics.csv", history)
    write_summary(out_dir / "summary.json", summary)
    plot_curves(out_dir / "curves.png", history)


def epoch_line(row: dict, epochs: int) -> str:
    val = (f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.1%}"
           if row.get("val_accuracy") is not None else "")
    return (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.1%}"
            f"{val}  {rate_text(row['samples_per_s'])} samples/s  lr {row['lr']:.2e}")
