"""The training loop, one for every device: epochs, validation, metrics, checkpoints, summary, NaN guard, resume.

Per epoch: run the driver's optimizer steps with a progress bar, step the LR
schedule, validate, save a checkpoint, then append a row to metrics.csv, redraw
curves.png and write summary.json (results never describe an epoch without a
checkpoint, so a folder is always resumable or restartable). Everything needed to continue (weights,
optimizer, scheduler, RNG streams, metric history) is in the checkpoint, so
``--resume`` ends where an uninterrupted run would.

A :class:`Driver` is the thin, device-specific part: it joins the processes,
builds the model, runs the optimizer steps of an epoch, evaluates a data set
and moves the data. ``ipu_snn.torch_driver`` drives CPU/CUDA (and torchrun);
``ipu_snn.ipu.trainer`` drives PopTorch. This module imports neither: drivers
import it, and ``ipu_snn.training`` picks one.
"""

from __future__ import annotations

import random
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator, Protocol, TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from .checkpoint import load_weights, point_latest, save_checkpoint
from .config import BPTT_SECTIONS, Config, dump_config
from .data import DataSplits, input_shape, load_splits
from .devices import POPTORCH_DEVICES, device_spec, host_device
from .errors import ConfigError, TrainingError
from .files import replace_atomically
from .metrics import footprint_bytes
from .executor import TimeLoop
from .network import SpikingNetwork, build_network, count_parameters
from .optim import make_scheduler, resumed_scheduler
from .planner import Plan, RunPlan, check_fits, plan
from .reporting import (RateColumn, TensorBoardLog, percent, plot_curves, rate_text, write_activity_plots,
                        write_metrics_csv, write_summary)
from .run_folder import check_can_start, claim_run_folder, newest_intact_checkpoint, out_dir_path, storage_faults
from .losses import check_objective
from .selection import BEST, is_best_epoch, selection_metric, should_stop

T = TypeVar("T")

# Sections that must be unchanged for a checkpoint to be continued; training.epochs
# may grow, so a finished run can be extended with --resume training.epochs=N.
_RESUME_MUST_MATCH = ("model", "data", "bptt")

#: Columns of the statistics a driver reports per optimizer step, summed over its samples; one rate
#: column per spiking layer follows them.
STEP_STATS = ("loss", "correct", "samples", "spikes_dropped")

OnEpochEnd = Callable[[int, dict, SpikingNetwork], None]


class Driver(Protocol):
    """How the loop runs on one kind of device. Constructing one joins the run's processes (torchrun,
    PopRun) and refuses, as a ConfigError naming the field, what the device cannot run."""

    is_main: bool  #: this process prints and writes the run folder
    micro_batch: int  #: samples per forward pass of one process, as the planner sizes the windows
    step_name: str  #: what one item of ``train_steps`` is, as messages name it ("batch", "device call")
    network: SpikingNetwork  #: the host's network, whose weights the checkpoints hold (set by ``build``)
    optimizer: torch.optim.Optimizer  #: set by ``build``; the loop attaches the LR schedule to it

    def decide(self, choose: Callable[[], T]) -> T:
        """``choose()`` as the main process makes it, the same on every process."""

    def build(self, cfg: Config, splits: DataSplits, run_plan: RunPlan, initial_weights: dict | None) -> None:
        """Build the network on the device as ``run_plan`` says (its windows, schedule and product policies)
        and its optimizer (the loop then restores them to resume)."""

    def describe(self, splits: DataSplits) -> str:
        """One line for the log: what trains where."""

    def start(self, splits: DataSplits) -> None:
        """Everything between the restored state and the first step (wrapping, loaders, kernels), so that
        the epoch clock counts only training."""

    def steps_per_epoch(self) -> int: ...

    def train_steps(self, epoch: int) -> Iterator[Tensor]:
        """Run the epoch's optimizer steps; after each, yield its statistics (``STEP_STATS``, then each
        layer's spike rate), summed over its samples."""

    def lr_changed(self) -> None:
        """The LR schedule has stepped: the next step takes the optimizer's new learning rate."""

    def end_training(self) -> dict:
        """The optimizer state to checkpoint, read at the end of the epoch's training (which leaves the
        device to evaluation)."""

    def evaluate(self, dataset) -> dict:
        """``loss`` and ``accuracy`` over ``dataset``, with any workload metrics (ipu_snn.metrics)."""

    def barrier(self) -> None:
        """Wait for every process (no process starts an epoch before the checkpoint exists)."""

    def summary(self) -> dict:
        """The device and the processes (replicas) of the run, for summary.json."""

    def close(self, clean: bool) -> None:
        """Release the device and the processes; ``clean`` is false after an error."""


def run(driver: Driver, cfg: Config, out_dir: str | Path, *, resume: bool = False, console: Console | None = None,
        on_epoch_end: OnEpochEnd | None = None, initial_weights: dict | None = None) -> dict:
    """Train as the config says through ``driver``; returns the summary also written to summary.json.

    Every process of the run calls this; only the main one prints and writes."""
    try:
        with ExitStack() as owned:  # the run folder's lock, held until the run ends
            summary = _run(driver, cfg, out_dir_path(out_dir), resume, console, on_epoch_end, owned, initial_weights)
    except BaseException:
        driver.close(clean=False)
        raise
    driver.close(clean=True)
    return summary


def _run(driver: Driver, cfg: Config, out_dir: Path, resume: bool, console: Console | None,
         on_epoch_end: OnEpochEnd | None, owned: ExitStack, initial_weights: dict | None) -> dict:
    console = console if driver.is_main and console is not None else Console(quiet=not driver.is_main)
    n_inputs, n_classes = input_shape(cfg.data)
    spec = device_spec(cfg.device)
    check_objective(cfg.training, [layer.size for layer in cfg.model.layers], n_classes)
    # bytes from shapes before anything is loaded or allocated: a run that cannot fit stops here
    check_fits(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, batch=driver.micro_batch)
    bytes_plan = plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, batch=driver.micro_batch, compare_all=True)
    bytes_plan.run_plan()  # refuses, saying what would fit, when nothing does
    if check_can_start(out_dir, resume, check_lock=driver.is_main):
        console.out(f"note: {out_dir} holds no checkpoint (its run stopped in the first epoch); starting from "
                    "epoch 1", style="yellow")
        resume = False
    splits = load_splits(cfg.data, cfg.training.seed)  # before writing anything: bad data leaves no run folder
    if splits.val is None and (cfg.training.keep_best or cfg.training.early_stopping is not None):
        raise ConfigError("training.keep_best and training.early_stopping rank epochs by their validation "
                          "metrics, but the run has no validation split: set data.val_split above 0")
    if driver.is_main:
        owned.enter_context(claim_run_folder(out_dir, resume, say=console.out))
        owned.enter_context(storage_faults(out_dir))
    tensorboard = open_tensorboard(cfg, out_dir) if driver.is_main else None

    seed_everything(cfg.training.seed)
    if resume:
        previous = newest_intact_checkpoint(out_dir)
        for note in previous.notes:
            console.out(f"note: {note}", style="yellow")
        state = previous.state
        check_resumable(state["config"], cfg, previous.folder)
        run_plan = stored_plan(state, cfg, driver.micro_batch)  # the windows and schedule the run trained with
    else:
        density = input_density(splits.train)
        run_plan = driver.decide(lambda: plan_time_loop(cfg, console, driver.micro_batch, density, bytes_plan))
    seed_everything(cfg.training.seed)
    driver.build(cfg, splits, run_plan, initial_weights)
    scheduler = make_scheduler(cfg.training, driver.optimizer)
    history: list[dict] = []
    wall_before = 0.0
    if resume:
        load_weights(driver.network, previous.weights, previous.folder)
        driver.optimizer.load_state_dict(state["optimizer"])
        scheduler = resumed_scheduler(cfg.training, driver.optimizer, state["scheduler"], len(state["history"]))
        restore_rng(state["rng"])
        history, wall_before = state["history"], state["wall_s"]
        console.print(f"resuming {out_dir} after epoch {len(history)} ({previous.folder.name})")
    if driver.is_main:
        replace_atomically(out_dir / "config.yaml", dump_config(cfg).encode())
    console.print(driver.describe(splits))
    driver.start(splits)

    run_start = time.perf_counter()
    try:
        with progress_bar(console) as progress:
            epochs_run = 0
            for epoch in range(len(history) + 1, cfg.training.epochs + 1):
                if should_stop(history, cfg.training):
                    progress.console.print(f"early stopping after epoch {epoch - 1}: "
                                           f"{cfg.training.early_stopping.metric} has not improved for "
                                           f"{cfg.training.early_stopping.patience} epochs")
                    break
                epochs_run += 1
                row = {"epoch": epoch, "lr": driver.optimizer.param_groups[0]["lr"]}
                splits.train.set_epoch(epoch)  # data.augment: new augmentations each epoch, the same on resume
                row |= train_epoch(driver, cfg, epoch, progress)
                scheduler.step()
                driver.lr_changed()
                optimizer_state = driver.end_training()
                if splits.val is not None:
                    row |= prefixed("val_", driver.evaluate(splits.val))
                history.append(row)
                wall = wall_before + time.perf_counter() - run_start
                if driver.is_main:  # the checkpoint first: results never describe an epoch that has none
                    state = {"epoch": epoch, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                             "rng": rng_state(), "history": history, "wall_s": wall,
                             "config": cfg.model_dump(mode="json"), "plan": run_plan.to_json()}
                    save_checkpoint(out_dir, epoch, driver.network, state, keep=cfg.training.keep_checkpoints)
                    if cfg.training.keep_best and is_best_epoch(history, selection_metric(cfg.training)):
                        (out_dir / BEST).mkdir(exist_ok=True)  # in the run folder, which is never recreated
                        save_checkpoint(out_dir / BEST, epoch, driver.network, state, keep=1)
                    write_reports(out_dir, history, run_summary(history, wall, driver.network) | driver.summary())
                    if tensorboard:
                        tensorboard.log(row, epoch)
                driver.barrier()
                progress.console.print(epoch_line(row, cfg.training.epochs))
                if on_epoch_end is not None:
                    on_epoch_end(epoch, row, driver.network)
        if resume and driver.is_main and epochs_run == 0:
            # nothing left to train: LATEST and the kept checkpoints still become what a run leaves
            point_latest(out_dir, previous.folder, cfg.training.keep_checkpoints)
        test = driver.evaluate(splits.test)
    finally:
        if tensorboard:
            tensorboard.close()

    summary = run_summary(history, wall_before + time.perf_counter() - run_start, driver.network)
    summary |= driver.summary() | prefixed("test_", test)
    if driver.is_main:
        write_summary(out_dir / "summary.json", summary)
        write_activity_plots(out_dir, last_checkpoint_network(cfg, splits, out_dir), splits.test, splits.dt)
    console.print(f"done: val accuracy {percent(summary['val_accuracy'])}, test accuracy "
                  f"{percent(summary['test_accuracy'])}; results in {out_dir}")
    return summary


def train_epoch(driver: Driver, cfg: Config, epoch: int, progress: Progress) -> dict:
    """One pass of the driver over the training data, with the NaN guard; returns the epoch's metrics row."""
    task = progress.add_task(f"epoch {epoch}/{cfg.training.epochs}", total=driver.steps_per_epoch(), loss=0.0,
                             acc=0.0, rate=0.0)
    totals = None
    backward_visits = getattr(driver.network, "backward_visits", dict)  # the listed backward's, per layer
    backward_visits()  # counts start with the epoch
    start = time.perf_counter()
    for number, step in enumerate(driver.train_steps(epoch), 1):
        step = step.detach().to("cpu", torch.float64)
        where = f"at epoch {epoch}, {driver.step_name} {number}"
        check_overflow(cfg, step[3].item(), where)
        if not np.isfinite(step[0].item()):  # every process sees the same sums, so all stop together
            raise TrainingError(
                f"the loss became {step[0].item() / step[2].item()} {where}; training stopped and the last good "
                "checkpoint is kept. Lower training.lr, set training.grad_clip, or check the inputs")
        totals = step if totals is None else totals + step
        seen = totals[2].item()
        progress.update(task, advance=1, loss=totals[0].item() / seen, acc=totals[1].item() / seen,
                        rate=seen / (time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    loss, correct, seen, dropped, *rates = totals.tolist()
    row = {"train_loss": loss / seen, "train_accuracy": correct / seen, "samples_per_s": seen / elapsed,
           "epoch_s": elapsed}
    row |= {f"rate_layer{i}": r / seen for i, r in enumerate(rates)}
    row |= backward_visits()
    if cfg.model.sparse is True:  # auto's lists never drop a spike
        row["spikes_dropped"] = int(dropped)
    return row


def check_overflow(cfg: Config, dropped: float, where: str) -> None:
    """``model.sparse_overflow: error`` where spikes over a list's capacity are counted rather than raised
    (a compiled graph cannot stop at a full list): the run stops after the step that dropped them."""
    if dropped > 0 and cfg.model.sparse_overflow == "error":
        raise TrainingError(
            f"{int(dropped)} spikes did not fit the sparse spike lists {where} (model.sparse_capacity = "
            f"{cfg.model.sparse_capacity} of each layer's inputs). Training stopped and the last checkpoint is "
            "kept (that step's updates were already applied). Raise model.sparse_capacity or set "
            "model.sparse_overflow=drop_and_count")


def prefixed(prefix: str, metrics: dict) -> dict:
    return {prefix + k: v for k, v in metrics.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.1%}"), RateColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    )


#: devices whose window costs can be measured on this machine (the others are costed from their spec)
_MEASURABLE = ("cpu", "cuda")  # ipu-emulator: planned on the tiles of a Mk2


def input_density(dataset, samples: int = 16) -> float:
    """The mean spike density of the first samples of a dataset (packed bits or frames)."""
    from .core.bits import count_spikes

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


def plan_time_loop(cfg: Config, console: Console, per_process_batch: int, density: float | None = None,
                   bytes_plan: Plan | None = None) -> RunPlan:
    """The run's plan, made once: windows, schedule and product policies (`RunPlan`).

    Bytes are predicted from shapes first, so a run that cannot fit is refused before anything is
    allocated. Then the calibration step (ipu_snn.calibration): where the choice depends on time
    (``bptt.schedule: auto``, or no ``bptt.window``) the window costs, and for ``model.sparse: auto`` the
    products' crossovers, measured on the real shapes and batch (or read from the cache of this machine).
    The checkpoints store the plan, so that a resumed run and an evaluation run exactly what this run
    planned. ``bytes_plan``: that first plan, when the caller has made it already."""
    from .calibration import calibrate

    n_inputs, n_classes = input_shape(cfg.data)
    spec = device_spec(cfg.device)
    p = bytes_plan or plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, batch=per_process_batch,
                           compare_all=True)
    p.run_plan()  # refuses, saying what would fit, when nothing does
    timed = cfg.bptt.schedule == "auto" or cfg.bptt.window is None
    if cfg.device in _MEASURABLE and (timed or cfg.model.sparse == "auto"):
        start = time.perf_counter()
        measured = calibrate(cfg, n_inputs, n_classes, per_process_batch, 0.05 if density is None else density,
                             device=cfg.device, window_costs=timed)
        p = plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, batch=per_process_batch, compare_all=True,
                 costs=measured.costs, crossovers=measured.crossovers)
        console.print(f"calibration: {measured.describe()} ({time.perf_counter() - start:.1f} s)")
    run_plan = p.run_plan()
    console.print(f"bptt: {run_plan.describe()}")
    return run_plan


def stored_plan(state: dict, cfg: Config, per_process_batch: int) -> RunPlan:
    """The RunPlan a checkpoint's run trained with (one written before plans were stored: its saved
    config's resolved window and schedule, planned again)."""
    if "plan" in state:
        return RunPlan.from_json(state["plan"])
    bptt = _set_fields(state["config"]["bptt"])
    fields = BPTT_SECTIONS[bptt.get("schedule", "store_all")].model_fields
    section = BPTT_SECTIONS[bptt.get("schedule", "store_all")].model_validate(
        {k: v for k, v in bptt.items() if k in fields})
    n_inputs, n_classes = input_shape(cfg.data)
    return plan(cfg.model_copy(update={"bptt": section}), device_spec(cfg.device), n_inputs=n_inputs,
                n_classes=n_classes, batch=per_process_batch).run_plan()


def _set_fields(section: dict) -> dict:
    return {k: v for k, v in section.items() if v is not None}


def check_resumable(saved: dict, cfg: Config, folder: Path) -> None:
    """A TrainingError naming what differs if a checkpoint written with config ``saved`` cannot continue as
    ``cfg`` says."""
    current = cfg.model_dump(mode="json")
    saved = {**saved, "bptt": _set_fields(saved.get("bptt", {}))}
    current["bptt"] = _set_fields(current["bptt"])
    # a checkpoint written before plans were stored resolved the planner's choices (bptt.schedule: auto,
    # no bptt.window) in its config
    for key, unset in (("schedule", "auto"), ("window", None)):
        if current["bptt"].get(key) == unset and key in saved["bptt"]:
            current["bptt"][key] = saved["bptt"][key]
    changed = [k for k in _RESUME_MUST_MATCH if saved.get(k) != current.get(k)]
    saved_training = {k: v for k, v in saved.get("training", {}).items() if k != "epochs"}
    changed += [f"training.{k}" for k, v in saved_training.items() if current["training"].get(k) != v]
    # PopTorch keeps an optimizer state of its own making, which only PopTorch reads back
    if (saved.get("device") in POPTORCH_DEVICES) != (cfg.device in POPTORCH_DEVICES):
        changed.append(f"device ({saved.get('device')} and {cfg.device} keep different optimizer states)")
    if changed:
        raise TrainingError(f"cannot resume from {folder}: the config differs in {', '.join(changed)}; "
                            "resume with the run's own config.yaml or start a new --out folder")


def open_tensorboard(cfg: Config, out_dir: Path) -> TensorBoardLog | None:
    if not cfg.training.tensorboard:
        return None
    try:
        return TensorBoardLog(out_dir / "tensorboard")
    except ImportError:
        raise ConfigError("training.tensorboard: true needs the tensorboard package "
                          "(pip install 'ipu_snn[tensorboard]')") from None


def run_summary(history: list[dict], wall: float, model) -> dict:
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
        "parameters": count_parameters(model),
        "footprint_bytes": footprint_bytes(model),  # NeuroBench's: parameters and buffers
    } | {k: v for k, v in last.items() if k.startswith("backward_visited_layer")}  # the last epoch's


def last_checkpoint_network(cfg: Config, splits: DataSplits, out_dir: Path) -> SpikingNetwork:
    """The run's newest intact checkpoint as a network on the host CPU, whatever device trained it."""
    found = newest_intact_checkpoint(out_dir)
    run_plan = stored_plan(found.state, cfg, cfg.data.batch_size)
    model = build_network(cfg.model, splits.n_inputs, splits.n_classes, splits.dt, loop=TimeLoop(run_plan.window),
                          binary_inputs=cfg.data.binary, device=host_device(cfg.device), crossovers=run_plan.crossovers)
    load_weights(model, found.weights, found.folder)
    return model


def write_reports(out_dir: Path, history: list[dict], summary: dict) -> None:
    write_metrics_csv(out_dir / "metrics.csv", history)
    write_summary(out_dir / "summary.json", summary)
    plot_curves(out_dir / "curves.png", history)


def epoch_line(row: dict, epochs: int) -> str:
    val = (f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.1%}"
           if row.get("val_accuracy") is not None else "")
    return (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.1%}"
            f"{val}  {rate_text(row['samples_per_s'])} samples/s  lr {row['lr']:.2e}")
