"""The training loop for ``device: ipu`` and ``ipu-model``, through PopTorch 3.x.

The same recipe as ``ipu_snn.train`` and the same run folder (metrics.csv,
summary.json, curves.png, config.yaml, checkpoints/), with PopTorch doing the
device work: ``poptorch.trainingModel`` runs forward, PopART's backward and the
optimizer step on the IPU, ``poptorch.DataLoader`` feeds it batches of
micro-batch x accumulation x replicas x device iterations samples, and
``poptorch.inferenceModel`` evaluates. Under ``poprun`` each instance runs this
function; PopDist tells it its replicas, and only instance 0 prints and writes.
Checkpoints hold host copies of the weights, readable on any device
(``ipu-snn eval`` on a CPU).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import Dataset

from ..checkpoint import save_checkpoint
from ..config import Config, TrainingConfig, dump_config
from ..data import input_shape, load_splits
from ..devices import resolve_device
from ..errors import ConfigError, TrainingError
from ..files import replace_atomically
from ..network import SpikingNetwork, count_parameters
from ..optim import make_scheduler
from ..planner import plan_for_config
from ..reporting import percent, write_summary
from ..run_folder import check_can_start, claim_run_folder
from ..train import epoch_line, open_tensorboard, plan_time_loop, progress_bar, run_summary, write_reports, seed_everything
from .model import Evaluation, TrainingStep, build_traced
from .options import Replicas, micro_batch_size, poptorch_options, replicas
from .recomputation import recomputation_for
from .sdk import import_popdist, import_poptorch
from .tiles import TilePlan


def ipu_optimizer(cfg: TrainingConfig, params, poptorch):
    """The config's optimizer as its PopTorch twin; ``training.grad_clip`` becomes its ``max_grad_norm``
    (a clip of the global gradient norm, applied on the IPU)."""
    clip = cfg.grad_clip  # None: PopTorch's default, no clipping
    if cfg.optimizer == "adam":
        return poptorch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=clip)
    if cfg.optimizer == "adamw":
        return poptorch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=clip)
    return poptorch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              max_grad_norm=clip)


def check_ipu_config(cfg: Config) -> None:
    """What the IPU trainer cannot do yet is refused up front, naming the field."""
    if cfg.model.fused is True:
        raise ConfigError("model.fused: true asks for the fused CPU/CUDA time-loop kernels, which do not run on "
                          "the IPU (PopTorch unrolls the loop into the graph); set model.fused to auto or false")


def fitting_tile_plan(cfg: Config, micro_batch: int, reps: Replicas) -> TilePlan:
    """The per-tile plan of one replica (one IPU, ``micro_batch`` samples), or a ConfigError if it does not fit.

    Its tile ranges are where the sparse layers' ops run (``model.map_tiles``).
    A replica is one IPU: PopTorch's replication copies the model, it does not
    split it, so a network too big for one IPU is refused before anything compiles.
    """
    n_inputs, n_classes = input_shape(cfg.data)
    plan = plan_for_config(cfg, n_inputs, n_classes, micro_batch)
    if not plan.fits:
        accumulation = cfg.training.grad_accumulation
        split = (f"{reps.total} replicas x {accumulation} accumulation steps" if cfg.data.batch_scope == "global"
                 else f"{accumulation} accumulation steps")
        raise ConfigError(
            f"model: {plan.refusal()} The plan is one replica's: a micro-batch of {micro_batch} samples "
            f"(data.batch_size {cfg.data.batch_size} over {split}) and {plan.time.name} over {plan.time.windows} "
            f"windows of {plan.time.window} steps on the tiles. A replica runs on one IPU (ipus-per-replica 1: "
            "replication copies the model, it does not split it), so more IPUs do not make it fit.")
    return plan


def check_overflow(cfg: Config, dropped: float, where: str) -> None:
    """``model.sparse_overflow: error`` on the IPU: a compiled graph cannot stop at a full spike list, so the
    spikes left out are counted on the device and the run stops here, after the device call that dropped them."""
    if dropped > 0 and cfg.model.sparse_overflow == "error":
        raise TrainingError(
            f"{int(dropped)} spikes did not fit the sparse spike lists {where} (model.sparse_capacity = "
            f"{cfg.model.sparse_capacity} of each layer's inputs). Training stopped and the last checkpoint is "
            "kept (the IPU had already applied that call's updates). Raise model.sparse_capacity or set "
            "model.sparse_overflow=drop_and_count")


class PaddedDataset(Dataset):
    """``dataset`` padded to a multiple of ``multiple`` samples with flagged repeats of sample 0.

    A compiled IPU graph has one batch size, so the last batch cannot be short;
    the padding samples carry ``valid = 0`` and drop out of the sums.
    """

    def __init__(self, dataset: Dataset, multiple: int):
        self.dataset, self.n = dataset, len(dataset)
        self.length = -(-self.n // multiple) * multiple

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        x, y = self.dataset[i if i < self.n else 0]
        return x, y, torch.tensor(1.0 if i < self.n else 0.0)


class Evaluator:
    """Loss and accuracy of a data set through one ``poptorch.inferenceModel``, compiled on first use.

    Evaluation and training take turns on the same IPUs: the training model is
    detached before, and this one after, each evaluation; attaching uploads the
    host's current weights.
    """

    def __init__(self, poptorch, cfg: Config, popdist, network: SpikingNetwork, micro_batch: int, reps: Replicas):
        self.poptorch, self.micro_batch, self.cfg = poptorch, micro_batch, cfg
        self.options = poptorch_options(cfg, poptorch, popdist, training=False)
        self.per_call = micro_batch * cfg.ipu.device_iterations * reps.local
        self.inference_model = poptorch.inferenceModel(Evaluation(network), self.options)

    def __call__(self, dataset: Dataset) -> tuple[float, float]:
        # every instance evaluates the whole set, so all of them report the same numbers
        loader = self.poptorch.DataLoader(self.options, PaddedDataset(dataset, self.per_call),
                                          batch_size=self.micro_batch, shuffle=False, drop_last=True,
                                          auto_distributed_partitioning=False)
        totals = torch.zeros(4, dtype=torch.float64)
        for x, y, valid in loader:
            totals += self.inference_model(x, y, valid).reshape(-1, 4).sum(0).double()
        self.inference_model.detachFromDevice()
        loss, correct, seen, dropped = totals.tolist()
        check_overflow(self.cfg, dropped, "in an evaluation")
        return loss / seen, correct / seen

    def destroy(self) -> None:
        self.inference_model.destroy()


def train_epoch(training_model, loader, cfg: Config, epoch: int, progress, n_layers: int) -> dict:
    """One pass over the training data; the statistics are those of this instance's replicas."""
    task = progress.add_task(f"epoch {epoch}/{cfg.training.epochs}", total=len(loader), loss=0.0, acc=0.0, rate=0.0)
    totals = torch.zeros(4 + n_layers, dtype=torch.float64)
    start = time.perf_counter()
    for call, (x, y) in enumerate(loader):
        _, stats = training_model(x, y)
        step = stats.reshape(-1, totals.numel()).sum(0).double()
        check_overflow(cfg, step[3].item(), f"at epoch {epoch}, device call {call + 1}")
        if not np.isfinite(step[0].item()):
            raise TrainingError(
                f"the loss became {step[0].item() / step[2].item()} at epoch {epoch}, device call {call + 1}; "
                "training stopped and the last good checkpoint is kept. Lower training.lr, set "
                "training.grad_clip, or check the inputs")
        totals += step
        seen = totals[2].item()
        progress.update(task, advance=1, loss=totals[0].item() / seen, acc=totals[1].item() / seen,
                        rate=seen / (time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    loss, correct, seen, dropped, *rates = totals.tolist()
    row = {"train_loss": loss / seen, "train_accuracy": correct / seen, "samples_per_s": seen / elapsed,
           "epoch_s": elapsed}
    row |= {f"rate_layer{i}": r / seen for i, r in enumerate(rates)}
    if cfg.model.sparse is not False:
        row["spikes_dropped"] = int(dropped)  # as ipu_snn.train reports it
    return row


def train_ipu(cfg: Config, out_dir: str | Path, *, resume: bool = False, console: Console | None = None,
              on_epoch_end: Callable[[int, dict, SpikingNetwork], None] | None = None,
              initial_weights: dict | None = None) -> dict:
    """Train as the config says on IPUs (or the IPU Model); returns the summary also written to summary.json."""
    with ExitStack() as owned:  # the run folder's lock, held until the run ends
        return _train_ipu(cfg, Path(out_dir), resume, console, on_epoch_end, owned, initial_weights)


def _train_ipu(cfg: Config, out_dir: Path, resume: bool, console: Console | None, on_epoch_end,
               owned: ExitStack, initial_weights: dict | None = None) -> dict:
    resolve_device(cfg.device)  # without PopTorch: a DeviceError that names the Poplar SDK
    check_ipu_config(cfg)
    poptorch, popdist = import_poptorch(), import_popdist()
    if popdist is not None and popdist.isPopdistEnvSet():
        popdist.init()
    reps = replicas(cfg, popdist)
    console = console if reps.is_main and console is not None else Console(quiet=not reps.is_main)
    if resume:
        raise TrainingError("--resume is not supported on device ipu / ipu-model yet (PopTorch keeps the "
                            "optimizer state on the device); start a new --out")
    check_can_start(out_dir, resume=False, check_lock=reps.is_main)
    micro = micro_batch_size(cfg, reps.total)
    tile_plan = fitting_tile_plan(cfg, micro, reps)
    bptt, cfg = plan_time_loop(cfg, console, per_process_batch=micro)
    loop = bptt.loop()
    recomputation = recomputation_for(loop, cfg.data.num_steps)

    seed_everything(cfg.training.seed)
    splits = load_splits(cfg.data, cfg.training.seed)
    network = build_traced(cfg, splits.n_inputs, splits.n_classes, splits.dt, poptorch, loop, tile_plan)
    if initial_weights is not None:  # model.from_nir
        network.load_state_dict(initial_weights, strict=True)
    network.train()
    optimizer = ipu_optimizer(cfg.training, network.parameters(), poptorch)
    scheduler = make_scheduler(cfg.training, optimizer)
    options = poptorch_options(cfg, poptorch, popdist, recomputation=recomputation)
    # float frames: the traced graph multiplies them (or lists them with SpikeSelect); it does not unpack bits
    loader = poptorch.DataLoader(options, splits.train.as_dense(), batch_size=micro, shuffle=True, drop_last=True)
    if len(loader) == 0:
        per_call = micro * cfg.training.grad_accumulation * reps.local * cfg.ipu.device_iterations
        raise ConfigError(f"data: one device call takes {per_call} training samples per instance, more than "
                          f"the {len(splits.train)} there are; lower data.batch_size or ipu.device_iterations")
    training_model = poptorch.trainingModel(TrainingStep(network, poptorch), options, optimizer)
    evaluator = Evaluator(poptorch, cfg, popdist, network, micro, reps)
    console.print(f"training {count_parameters(network):,} parameters on {cfg.device} x {reps.total} replicas "
                  f"({reps.instances} instances), micro-batch {micro}, {len(splits.train)} train samples, "
                  f"T={cfg.data.num_steps}, {splits.n_inputs} inputs, {splits.n_classes} classes")

    if reps.is_main:
        owned.enter_context(claim_run_folder(out_dir, False, say=console.out))
        replace_atomically(out_dir / "config.yaml", dump_config(cfg).encode())
    tensorboard = open_tensorboard(cfg, out_dir) if reps.is_main else None
    history: list[dict] = []
    run_start = time.perf_counter()
    try:
        with progress_bar(console) as progress:
            for epoch in range(1, cfg.training.epochs + 1):
                row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
                row |= train_epoch(training_model, loader, cfg, epoch, progress, len(network.layers))
                optimizer_state = optimizer.state_dict()  # read from the device while attached
                training_model.detachFromDevice()  # also brings the weights to the host
                if splits.val is not None:
                    row["val_loss"], row["val_accuracy"] = evaluator(splits.val.as_dense())
                scheduler.step()
                training_model.setOptimizer(optimizer)  # the new learning rate goes with the next call
                history.append(row)
                wall = time.perf_counter() - run_start
                if reps.is_main:
                    write_reports(out_dir, history, run_summary(history, wall, cfg.device, network))
                    if tensorboard:
                        tensorboard.log(row, epoch)
                    state = {"epoch": epoch, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                             "rng": {"torch": torch.get_rng_state()}, "history": history, "wall_s": wall,
                             "config": cfg.model_dump(mode="json")}
                    save_checkpoint(out_dir, epoch, network, state, keep=cfg.training.keep_checkpoints)
                progress.console.print(epoch_line(row, cfg.training.epochs))
                if on_epoch_end is not None:
                    on_epoch_end(epoch, row, network)
        test_loss, test_accuracy = evaluator(splits.test.as_dense())
    finally:
        if tensorboard:
            tensorboard.close()
        training_model.destroy()
        evaluator.destroy()

    summary = run_summary(history, time.perf_counter() - run_start, cfg.device, network)
    summary |= {"test_loss": test_loss, "test_accuracy": test_accuracy, "replicas": reps.total,
                "instances": reps.instances, "processes": reps.instances}
    if reps.is_main:
        write_summary(out_dir / "summary.json", summary)
    console.print(f"done: val accuracy {percent(summary['val_accuracy'])}, test accuracy {test_accuracy:.1%}; "
                  f"results in {out_dir}")
    return summary
