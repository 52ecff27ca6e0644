"""The training loop's driver for torch devices: CPU, CUDA, and the CPU with the IPU tile emulator.

Under torchrun every process runs it (ipu_snn.distributed): gradients are
averaged by DDP, the statistics summed over the processes, and only rank 0
prints and writes. A plain ``ipu-snn train`` is the world-size-1 case.
"""

from __future__ import annotations

import importlib
from contextlib import nullcontext
from typing import Callable, Iterator, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from .config import Config
from .data import DataSplits, make_loader
from .devices import device as device_row, resolve_device
from .distributed import (DistContext, GlobalBatchSampler, all_reduce_sum, barrier, broadcast_object,
                          init_distributed, peers, shutdown)
from .errors import ConfigError
from .executor import TimeLoop
from .losses import Objective, make_objective
from .metrics import WorkloadTally
from .network import SpikingNetwork, build_network, count_parameters, step_mode
from .ops.registry import resolve_backend
from .optim import make_optimizer
from .taps import Taps

T = TypeVar("T")


def load_backends(device: str) -> None:
    """Import the package that registers the backends a config device needs from above the registries
    (ipu-emulator's live in ipu/), as the device table names it."""
    if device_row(device).registered_by is not None:
        importlib.import_module(device_row(device).registered_by)


def prepare_kernels(cfg: Config, device: torch.device) -> None:
    """Build or load the compiled kernels the network calls before any epoch clock starts, so a first-use
    build (the C++ kernels take about 30 s, and say so) is not counted in the first epoch's samples/s."""
    from .neuron.kernels import resolve

    if step_mode(cfg.model) == "fused":
        resolve(device_row(cfg.device).neurons, device)
    if cfg.model.sparse is not False:
        resolve_backend(device_row(cfg.device).spikes, device)


def _to_device(batch, device: torch.device):
    # inputs are packed bits (1 bit per channel and step), small enough to sit on the device whole
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: SpikingNetwork, dataset, batch_size: int, device, ctx: DistContext = DistContext(),
             tally: WorkloadTally | None = None, objective: Objective | None = None) -> tuple[float, float]:
    """Mean loss (``objective``'s; default the readout's cross-entropy) and accuracy over a dataset, sharded
    over the processes; ``tally`` also gathers the counts of the workload metrics (ipu_snn.metrics), summed
    over the processes."""
    model.eval()
    sampler = GlobalBatchSampler(len(dataset), batch_size, ctx, shuffle=False)
    totals = [0.0, 0.0, 0.0]
    for batch in make_loader(dataset, sampler):
        x, y = _to_device(batch, device)
        out = model(x, with_counts=tally is not None, taps=objective.taps if objective else Taps())
        loss, scores = objective(out, y, x.shape[1]) if objective else \
            (F.cross_entropy(out.logits, y, reduction="sum"), out.logits)
        totals[0] += loss.item()
        totals[1] += (scores.argmax(1) == y).sum().item()
        totals[2] += y.numel()
        if tally is not None:
            tally.add(x, out, model.n_inputs)
    loss, correct, seen = all_reduce_sum(ctx, totals, device)
    if tally is not None and ctx.active and tally.input_ac is not None:
        tally.load_flat(all_reduce_sum(ctx, tally.flat(), device), ctx.world_size)
    return loss / seen, correct / seen


class TorchDriver:
    """CPU/CUDA through plain torch: the global batch split over processes and accumulation steps."""

    step_name = "batch"

    def __init__(self, cfg: Config):
        load_backends(cfg.device)
        device = resolve_device(cfg.device)
        self.cfg = cfg
        self.timeout_s = cfg.distributed.timeout_s
        self.ctx = ctx = init_distributed(cfg.device, self.timeout_s)
        self.is_main = ctx.is_main
        self.device = torch.device("cuda", ctx.local_rank) if device.type == "cuda" and ctx.active else device
        scale = ctx.world_size if cfg.data.batch_scope == "per_device" else 1
        self.global_batch = cfg.data.batch_size * scale
        parts = ctx.world_size * cfg.training.grad_accumulation
        if self.global_batch < parts:
            shutdown(ctx, clean=False)
            raise ConfigError(f"data.batch_size: a global batch of {self.global_batch} cannot be split over "
                              f"{ctx.world_size} processes x {cfg.training.grad_accumulation} accumulation steps")
        self.micro_batch = -(-self.global_batch // parts)

    def decide(self, choose: Callable[[], T]) -> T:
        # every process runs what rank 0 chose, whatever its own measurements say
        choice = choose() if self.is_main else None
        with self.peers():
            return broadcast_object(self.ctx, choice)

    def peers(self):
        """Where this process waits on the others: a lost peer is a LostPeer error naming this rank."""
        return peers(self.ctx, self.timeout_s)

    def build(self, cfg: Config, splits: DataSplits, loop: TimeLoop, initial_weights: dict | None) -> None:
        self.cfg = cfg
        self.network = build_network(cfg.model, splits.n_inputs, splits.n_classes, splits.dt, loop=loop,
                                     binary_inputs=cfg.data.binary, device=cfg.device).to(self.device)
        if cfg.device == "ipu-emulator":  # the spiking layers as the IPU network op, on the host interpreter
            from .ipu.interpreted import adopt

            adopt(self.network)
        if initial_weights is not None:
            self.network.load_state_dict(initial_weights, strict=True)
        self.objective = make_objective(cfg.training, [layer.n_out for layer in self.network.layers],
                                        splits.n_classes)
        self.objective.prepare(self.network)
        self.optimizer = make_optimizer(cfg.training, self.network.parameters())

    def describe(self, splits: DataSplits) -> str:
        processes = f" x {self.ctx.world_size} processes" if self.ctx.active else ""
        return (f"training {count_parameters(self.network):,} parameters on {self.device}{processes} "
                f"({len(splits.train)} train / {len(splits.val) if splits.val else 0} val samples, "
                f"T={self.cfg.data.num_steps}, {splits.n_inputs} inputs, {splits.n_classes} classes, "
                f"global batch {self.global_batch})")

    def start(self, splits: DataSplits) -> None:
        device, ctx = self.device, self.ctx
        with self.peers():  # DDP's constructor broadcasts the weights
            self.model = DDP(self.network, device_ids=[device.index] if device.type == "cuda" else None) \
                if ctx.active else self.network
        self.sampler = GlobalBatchSampler(len(splits.train), self.global_batch, ctx,
                                          accumulation=self.cfg.training.grad_accumulation, seed=self.cfg.training.seed)
        self.loader = make_loader(splits.train, self.sampler)
        prepare_kernels(self.cfg, device)

    def steps_per_epoch(self) -> int:
        return len(self.sampler.steps())

    def train_steps(self, epoch: int) -> Iterator[Tensor]:
        model = self.model
        model.train()
        self.sampler.set_epoch(epoch)
        accumulation = self.cfg.training.grad_accumulation
        batches = iter(self.loader)
        for global_n in self.sampler.steps():
            with self.peers():  # DDP's gradient hooks and the statistics' sum wait on the other processes
                stats = self._step(model, batches, global_n, accumulation)
            yield stats

    def _step(self, model, batches, global_n: int, accumulation: int) -> Tensor:
        """One optimizer step over ``accumulation`` micro-batches; its statistics summed over the processes."""
        ctx, optimizer = self.ctx, self.optimizer
        optimizer.zero_grad(set_to_none=True)
        stats = None
        for micro in range(accumulation):
            x, y = _to_device(next(batches), self.device)
            # DDP averages gradients over processes; scaling the summed loss by
            # world/global_n makes the result the mean over the whole global batch
            sync = micro == accumulation - 1 or not ctx.active
            with model.no_sync() if not sync else nullcontext():
                out = model(x, taps=self.objective.taps)
                loss_sum, scores = self.objective(out, y, x.shape[1])
                (loss_sum * (ctx.world_size / global_n)).backward()
            micro_stats = torch.tensor([loss_sum.item(), (scores.argmax(1) == y).sum().item(), y.numel(),
                                        out.dropped.sum().item(), *out.rates.detach().sum(0).tolist()],
                                       dtype=torch.float64)
            stats = micro_stats if stats is None else stats + micro_stats
        stats = torch.tensor(all_reduce_sum(ctx, stats.tolist(), self.device), dtype=torch.float64)
        if self.cfg.training.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.training.grad_clip)
        optimizer.step()
        return stats

    def lr_changed(self) -> None:
        pass  # the optimizer's steps read its learning rate

    def end_training(self) -> dict:
        return self.optimizer.state_dict()

    def evaluate(self, dataset) -> dict:
        tally = WorkloadTally()
        with self.peers():
            loss, accuracy = evaluate(self.network, dataset, self.global_batch, self.device, self.ctx, tally,
                                      self.objective)
        return {"loss": loss, "accuracy": accuracy} | tally.metrics(self.network.state_dict())

    def barrier(self) -> None:
        with self.peers():
            barrier(self.ctx)

    def summary(self) -> dict:
        return {"device": str(self.device), "processes": self.ctx.world_size}

    def close(self, clean: bool) -> None:
        with self.peers():
            shutdown(self.ctx, clean=clean, release=self._release)

    def _release(self) -> None:
        """Drop DDP's module (its Reducer holds the process group) and the loader before the group goes."""
        self.model = self.loader = None
