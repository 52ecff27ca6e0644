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
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .checkpoint import latest_checkpoint, load_weights, read_checkpoint, save_checkpoint
from .config import Config, dump_config
from .data import input_shape, load_splits, make_loader
from .devices import device_spec, resolve_device
from .errors import ConfigError, TrainingError
from .network import SpikingNetwork, build_network, count_parameters
from .optim import make_optimizer, make_scheduler
from .planner import Plan, plan, refusal
from .reporting import TensorBoardLog, plot_curves, write_metrics_csv, write_summary

# Sections that must be unchanged for a checkpoint to be continued; training.epochs
# may grow, so a finished run can be extended with --resume training.epochs=N.
_RESUME_MUST_MATCH = ("model", "data", "bptt")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.1%}  {task.fields[rate]:.0f} samples/s"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    )


def _step_loss(model: SpikingNetwork, x: torch.Tensor, y: torch.Tensor):
    out = model(x)
    return F.cross_entropy(out.logits, y), out


def train_epoch(model, loader, optimizer, device, cfg: Config, epoch: int, progress: Progress) -> dict:
    model.train()
    total_loss, correct, seen, rates = 0.0, 0, 0, None
    task = progress.add_task(f"epoch {epoch}/{cfg.training.epochs}", total=len(loader), loss=0.0, acc=0.0, rate=0.0)
    start = time.perf_counter()
    for batch, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss, out = _step_loss(model, x, y)
        loss_value = loss.item()
        if not np.isfinite(loss_value):
            raise TrainingError(
                f"the loss became {loss_value} at epoch {epoch}, batch {batch + 1}; training stopped and the last "
                "good checkpoint is kept. Lower training.lr, set training.grad_clip, or check the inputs")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.training.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
        optimizer.step()

        n = y.numel()
        total_loss += loss_value * n
        correct += (out.logits.argmax(1) == y).sum().item()
        seen += n
        layer_rates = torch.stack(out.rates)
        rates = layer_rates * n if rates is None else rates + layer_rates * n
        progress.update(task, advance=1, loss=total_loss / seen, acc=correct / seen,
                        rate=seen / (time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    row = {"train_loss": total_loss / seen, "train_accuracy": correct / seen,
           "samples_per_s": seen / elapsed, "epoch_s": elapsed}
    row |= {f"rate_layer{i}": r for i, r in enumerate((rates / seen).tolist())}
    return row


@torch.no_grad()
def evaluate(model: SpikingNetwork, loader, device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a loader."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss, out = _step_loss(model, x, y)
        total_loss += loss.item() * y.numel()
        correct += (out.logits.argmax(1) == y).sum().item()
        seen += y.numel()
    return total_loss / seen, correct / seen


def _rng_state(shuffle: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict, shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def choose_schedule(cfg: Config, console: Console) -> Plan:
    n_inputs, n_classes = input_shape(cfg.data)
    p = plan(cfg, device_spec(cfg.device), n_inputs=n_inputs, n_classes=n_classes)
    if p.choice is None:
        raise ConfigError(refusal(p))
    chosen = next(s for s in p.strategies if s.name == p.choice)
    console.print(f"bptt: {chosen.schedule}, predicted {chosen.local_bytes / 2**20:.0f} MiB on {p.device}")
    return p


def _check_resumable(saved: dict, cfg: Config, folder: Path) -> None:
    current = cfg.model_dump(mode="json")
    changed = [k for k in _RESUME_MUST_MATCH if saved.get(k) != current.get(k)]
    saved_training = {k: v for k, v in saved.get("training", {}).items() if k != "epochs"}
    changed += [f"training.{k}" for k, v in saved_training.items() if current["training"].get(k) != v]
    if changed:
        raise TrainingError(f"cannot resume from {folder}: the config differs in {', '.join(changed)}; "
                            "resume with the run's own config.yaml or start a new --out folder")


def _open_tensorboard(cfg: Config, out_dir: Path) -> TensorBoardLog | None:
    if not cfg.training.tensorboard:
        return None
    try:
        return TensorBoardLog(out_dir / "tensorboard")
    except ImportError:
        raise ConfigError("training.tensorboard: true needs the tensorboard package "
                          "(pip install 'ipu_snn[tensorboard]')") from None


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, console: Console | None = None,
          on_epoch_end: Callable[[int, dict, SpikingNetwork], None] | None = None) -> dict:
    """Train as the config says; returns the summary also written to summary.json."""
    console = console or Console()
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    bptt = choose_schedule(cfg, console)  # refuses a config that cannot fit, before allocating anything
    previous = latest_checkpoint(out_dir)
    if previous is not None and not resume:
        raise TrainingError(f"{out_dir} already holds a run (checkpoint {previous.name}); pass --resume to "
                            "continue it, or choose another --out")
    if resume and previous is None:
        raise TrainingError(f"--resume: no checkpoint in {out_dir}/checkpoints to continue from")
    out_dir.mkdir(parents=True, exist_ok=True)
    tensorboard = _open_tensorboard(cfg, out_dir)

    seed_everything(cfg.training.seed)
    splits = load_splits(cfg.data, cfg.training.seed)
    model = build_network(cfg.model, splits.n_inputs, splits.n_classes, splits.dt, bptt.schedule).to(device)
    optimizer = make_optimizer(cfg.training, model.parameters())
    scheduler = make_scheduler(cfg.training, optimizer)
    shuffle = torch.Generator().manual_seed(cfg.training.seed)
    train_loader = make_loader(splits.train, cfg.data.batch_size, shuffle=True, generator=shuffle)
    val_loader = make_loader(splits.val, cfg.data.batch_size) if splits.val is not None else None

    history: list[dict] = []
    wall_before = 0.0
    if resume:
        weights, state = read_checkpoint(previous)
        _check_resumable(state["config"], cfg, previous)
        load_weights(model, weights, previous)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"], shuffle)
        history, wall_before = state["history"], state["wall_s"]
        console.print(f"resuming {out_dir} after epoch {len(history)} ({previous.name})")
    (out_dir / "config.yaml").write_text(dump_config(cfg))
    console.print(f"training {count_parameters(model):,} parameters on {device} "
                  f"({len(splits.train)} train / {len(splits.val) if splits.val else 0} val samples, "
                  f"T={cfg.data.num_steps}, {splits.n_inputs} inputs, {splits.n_classes} classes)")

    run_start = time.perf_counter()
    try:
        with _progress(console) as progress:
            for epoch in range(len(history) + 1, cfg.training.epochs + 1):
                row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
                row |= train_epoch(model, train_loader, optimizer, device, cfg, epoch, progress)
                if val_loader is not None:
                    row["val_loss"], row["val_accuracy"] = evaluate(model, val_loader, device)
                scheduler.step()
                history.append(row)
                wall = wall_before + time.perf_counter() - run_start
                _write_reports(out_dir, history, _summary(history, wall, cfg, device, model))
                if tensorboard:
                    tensorboard.log(row, epoch)
                state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "rng": _rng_state(shuffle), "history": history, "wall_s": wall,
                         "config": cfg.model_dump(mode="json")}
                save_checkpoint(out_dir, epoch, model, state, keep=cfg.training.keep_checkpoints)
                progress.console.print(_epoch_line(row, cfg.training.epochs))
                if on_epoch_end is not None:
                    on_epoch_end(epoch, row, model)
    finally:
        if tensorboard:
            tensorboard.close()

    test_loss, test_accuracy = evaluate(model, make_loader(splits.test, cfg.data.batch_size), device)
    summary = _summary(history, wall_before + time.perf_counter() - run_start, cfg, device, model)
    summary |= {"test_loss": test_loss, "test_accuracy": test_accuracy}
    write_summary(out_dir / "summary.json", summary)
    console.print(f"done: val accuracy {summary['val_accuracy']:.1%}, test accuracy {test_accuracy:.1%}; "
                  f"results in {out_dir}")
    return summary


def _summary(history: list[dict], wall: float, cfg: Config, device, model) -> dict:
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
    }


def _write_reports(out_dir: Path, history: list[dict], summary: dict) -> None:
    write_metrics_csv(out_dir / "metrics.csv", history)
    write_summary(out_dir / "summary.json", summary)
    plot_curves(out_dir / "curves.png", history)


def _epoch_line(row: dict, epochs: int) -> str:
    val = (f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.1%}"
           if row.get("val_accuracy") is not None else "")
    return (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.1%}"
            f"{val}  {row['samples_per_s']:.0f} samples/s  lr {row['lr']:.2e}")
