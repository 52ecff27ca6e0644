"""The training loop's driver for ``device: ipu`` and ``ipu-model``, through PopTorch 3.x.

The loop (ipu_snn.loop) is the same as on CPU/GPU and so is the run folder; PopTorch does the
device work: ``poptorch.trainingModel`` runs forward, PopART's backward and the
optimizer step on the IPU, ``poptorch.DataLoader`` feeds it batches of
micro-batch x accumulation x replicas x device iterations samples, and
``poptorch.inferenceModel`` evaluates. Under ``poprun`` each instance runs the
loop; PopDist tells it its replicas, and only instance 0 prints and writes.
Checkpoints hold host copies of the weights, readable on any device
(``ipu-snn eval`` on a CPU), and PopTorch's optimizer state, which a resumed
run writes back to the IPU when it compiles.
"""

from __future__ import annotations

from typing import Callable, Iterator, TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import Config, TrainingConfig
from ..data import DataSplits, input_shape
from ..devices import resolve_device
from ..errors import ConfigError, TrainingError
from ..loop import STEP_STATS, check_overflow
from ..network import SpikingNetwork, count_parameters
from ..planner import RunPlan
from .custom_ops import op_schedule
from .tile_planning import GraphTilePlan, plan_for_config
from .model import Evaluation, TrainingStep, build_traced
from .options import Replicas, micro_batch_size, poptorch_options, replicas
from .sdk import import_popdist, import_poptorch

T = TypeVar("T")


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
                          "the IPU (the network op runs the time loop in Poplar); set model.fused to auto or false")


def fitting_tile_plan(cfg: Config, micro_batch: int, reps: Replicas) -> GraphTilePlan:
    """The network op's graph count of one replica (one IPU, ``micro_batch`` samples), or a ConfigError if it
    does not fit.

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
            f"(data.batch_size {cfg.data.batch_size} over {split}) and {plan.schedule} over {plan.windows} "
            f"windows of {plan.window} steps on the tiles. A replica runs on one IPU (ipus-per-replica 1: "
            "replication copies the model, it does not split it), so more IPUs do not make it fit.")
    return plan


def plan_samples_per_pass(plan: GraphTilePlan, network: SpikingNetwork, steps: int) -> int:
    """The network op's samples per input-gradient pass: the tile plan's (as ``ipu-snn plan --device ipu-mk2``
    reports it), so the op PopART builds is the program the plan counted. A TrainingError where the network's
    time loop over ``steps`` (its windows and schedule, `op_schedule`) is not the one the plan counted."""
    bounds, schedule = op_schedule(network, steps)
    graph = plan.tiles["graph"]
    runs = (steps, min(network.loop.window or steps, steps), len(bounds), schedule.name,
            max(schedule.max_local_slots, 0), max(schedule.max_offchip_slots, 0))
    planned = (plan.steps, plan.window, plan.windows, plan.schedule, graph["local_slots"], graph["offchip_slots"])
    if runs != planned:
        raise TrainingError(f"the network op would run T, window, windows, schedule, local and off-chip slots "
                            f"{runs}, but the tile plan counted {planned}: the plan would not be of the program "
                            "that runs")
    return graph["samples_per_pass"]


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

    def __init__(self, poptorch, cfg: Config, popdist, network: SpikingNetwork, micro_batch: int, reps: Replicas,
                 samples_per_pass: int = 0):
        self.poptorch, self.micro_batch, self.cfg = poptorch, micro_batch, cfg
        self.options = poptorch_options(cfg, poptorch, popdist, training=False)
        self.per_call = micro_batch * cfg.ipu.device_iterations * reps.local
        self.inference_model = poptorch.inferenceModel(Evaluation(network, poptorch, samples_per_pass), self.options)

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



class PopTorchDriver:
    """IPUs (or the IPU Model) through PopTorch: one compiled training graph and one inference graph,
    taking turns on the same IPUs."""

    step_name = "device call"

    def __init__(self, cfg: Config):
        resolve_device(cfg.device)  # without PopTorch: a DeviceError that names the Poplar SDK
        check_ipu_config(cfg)
        self.poptorch, self.popdist = import_poptorch(), import_popdist()
        if self.popdist is not None and self.popdist.isPopdistEnvSet():
            self.popdist.init()
        self.cfg = cfg
        self.reps = replicas(cfg, self.popdist)
        self.is_main = self.reps.is_main
        self.micro_batch = micro_batch_size(cfg, self.reps.total)
        self.tile_plan = fitting_tile_plan(cfg, self.micro_batch, self.reps)
        self.training_model = self.evaluator = None

    def decide(self, choose: Callable[[], T]) -> T:
        # the instances have no channel of their own here, and need none: nothing is measured for an IPU
        # (the planner costs it from its spec), so every instance makes the same choice
        return choose()

    def build(self, cfg: Config, splits: DataSplits, run_plan: RunPlan, initial_weights: dict | None) -> None:
        self.cfg = cfg
        loop = run_plan.loop()
        per_call = self.micro_batch * cfg.training.grad_accumulation * self.reps.local * cfg.ipu.device_iterations
        if per_call > len(splits.train):
            raise ConfigError(f"data: one device call takes {per_call} training samples per instance, more than "
                              f"the {len(splits.train)} there are; lower data.batch_size or ipu.device_iterations")
        self.network = build_traced(cfg, splits.n_inputs, splits.n_classes, splits.dt, loop)
        self.samples_per_pass = plan_samples_per_pass(self.tile_plan, self.network, cfg.data.num_steps)
        if initial_weights is not None:  # model.from_nir
            self.network.load_state_dict(initial_weights, strict=True)
        self.network.train()
        self.optimizer = ipu_optimizer(cfg.training, self.network.parameters(), self.poptorch)

    def describe(self, splits: DataSplits) -> str:
        return (f"training {count_parameters(self.network):,} parameters on {self.cfg.device} x {self.reps.total} "
                f"replicas ({self.reps.instances} instances), micro-batch {self.micro_batch}, {len(splits.train)} "
                f"train samples, T={self.cfg.data.num_steps}, {splits.n_inputs} inputs, {splits.n_classes} classes")

    def start(self, splits: DataSplits) -> None:
        poptorch, cfg = self.poptorch, self.cfg
        options = poptorch_options(cfg, poptorch, self.popdist)
        # packed bits uint8 [B, T, ceil(n / 8)]: the network op unpacks them on the tiles, step by step
        self.loader = poptorch.DataLoader(options, splits.train, batch_size=self.micro_batch,
                                          shuffle=True, drop_last=True)
        # compiled on its first call, with the optimizer state a resumed run loaded into the optimizer
        self.training_model = poptorch.trainingModel(TrainingStep(self.network, poptorch, self.samples_per_pass),
                                                     options, self.optimizer)
        self.evaluator = Evaluator(poptorch, cfg, self.popdist, self.network, self.micro_batch, self.reps,
                                   self.samples_per_pass)

    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def train_steps(self, epoch: int) -> Iterator[Tensor]:
        # the statistics are those of this instance's replicas, summed over the call's micro-batches
        width = len(STEP_STATS) + len(self.network.layers)
        for x, y in self.loader:
            _, stats = self.training_model(x, y)
            yield stats.reshape(-1, width).sum(0)

    def lr_changed(self) -> None:
        # while still attached, so that the state end_training reads holds the IPU's new learning rate
        self.training_model.setOptimizer(self.optimizer)

    def end_training(self) -> dict:
        state = self.optimizer.state_dict()  # PopTorch reads it from the IPU while attached
        self.training_model.detachFromDevice()  # also brings the weights to the host, for evaluation
        return state

    def evaluate(self, dataset) -> dict:
        loss, accuracy = self.evaluator(dataset)
        return {"loss": loss, "accuracy": accuracy}

    def barrier(self) -> None:
        pass  # each instance writes nothing another reads

    def summary(self) -> dict:
        return {"device": self.cfg.device, "replicas": self.reps.total, "instances": self.reps.instances,
                "processes": self.reps.instances}

    def close(self, clean: bool) -> None:
        for executor in (self.training_model, self.evaluator):
            if executor is not None:
                executor.destroy()
