"""Running under torchrun: process group, data sharding and metric reduction.

Launching is left to the standard engines (``torchrun`` on CPU/GPU, ``poprun``
on IPU-PODs); this module only reads the environment they set up. A plain
``ipu-snn train`` is the world-size-1 case of the same code path.
"""

from __future__ import annotations

import gc
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .errors import DeviceError, TrainingError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process prints and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str, timeout_s: float = 300.0) -> DistContext:
    """Join the process group torchrun describes in the environment, if any.

    ``timeout_s`` bounds every wait on the other processes (joining, each collective): a peer that died or
    was stopped ends this process with a ``LostPeer`` error instead of a hang."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device == "cuda":
            if torch.cuda.device_count() <= local_rank:
                raise DeviceError(f"rank {rank} has local rank {local_rank}, but only "
                                  f"{torch.cuda.device_count()} CUDA devices are visible")
            torch.cuda.set_device(local_rank)
        elif device != "cpu":
            raise DeviceError(f"device: {device} does not run under torchrun; IPU-PODs are launched with poprun")
        with peers(DistContext(rank, world, local_rank), timeout_s):
            dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local_rank)


class LostPeer(TrainingError):
    """Another process of the run died, or stopped answering for longer than the timeout."""


@contextmanager
def peers(ctx: DistContext, timeout_s: float) -> Iterator[None]:
    """Turn the backend's error for a peer that died or stopped answering into one ``LostPeer`` message
    naming this process's rank (torch raises a ``DistError``, or a plain RuntimeError from DDP's hooks)."""
    try:
        yield
    except (dist.DistError, RuntimeError) as exc:
        text = str(exc)
        if not isinstance(exc, dist.DistError) and not any(
                word in text for word in ("Gloo", "gloo", "Connection", "NCCL", "Timed out", "timed out")):
            raise
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        raise LostPeer(f"rank {ctx.rank} of {ctx.world_size}: lost contact with the other processes of the run (one "
                       f"died, or stopped answering for {timeout_s:g} s, distributed.timeout_s): {first[:300]}") from None


def shutdown(ctx: DistContext, clean: bool = True, release: Callable[[], None] | None = None) -> None:
    """Leave the process group, in one fixed order on every rank.

    1. ``release()`` drops what holds the group (DDP's module and its Reducer), and the garbage collector
       frees it now: freed later, in whatever frame drops it last, the group's destructor joins gloo's
       worker thread while holding the GIL, and that thread may be waiting for the GIL itself (a hang
       after a run that succeeded).
    2. After a clean run every rank meets at a barrier, so that none tears down while a peer still sends
       (gloo aborts such a process); after an error a peer may never arrive, so then no barrier.
    3. A pause without the GIL lets gloo's worker thread finish with the barrier's work.
    4. ``destroy_process_group``, before the interpreter exits.
    """
    if release is not None:
        release()
    if ctx.active and dist.is_initialized():
        gc.collect()  # a process group only (a second in a large heap: not for a single-process run)
        if clean:
            dist.barrier()
        time.sleep(0.05)
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 (after an error: the error on its way out is the one to report)
            if clean:
                raise


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    if not ctx.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(ctx: DistContext, obj):
    """Rank 0's value of ``obj`` on every rank (e.g. a decision only the main process can make)."""
    if not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class GlobalBatchSampler(Sampler[list[int]]):
    """Micro-batches of one rank, carved from seeded global batches.

    Epoch e permutes the dataset with seed (seed, e) and cuts it into global
    batches; each global batch is split evenly over the ranks and then over the
    accumulation steps. One process and N processes therefore see the same
    global batches, which is what makes their training equal, and the order
    depends on the epoch alone, so a resumed run needs no sampler state.
    A last global batch too small to give every rank and micro-step a sample is
    dropped in training; evaluation (``shuffle=False``) keeps every sample.
    """

    def __init__(self, n: int, global_batch: int, ctx: DistContext, *, accumulation: int = 1,
                 shuffle: bool = True, seed: int = 0):
        self.n, self.global_batch, self.ctx = n, global_batch, ctx
        self.accumulation, self.shuffle, self.seed = accumulation, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[np.ndarray]:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        batches = [order[i:i + self.global_batch] for i in range(0, self.n, self.global_batch)]
        parts = self.ctx.world_size * self.accumulation
        if self.shuffle and batches and len(batches[-1]) < parts:
            batches.pop()
        return batches

    def __iter__(self):
        for batch in self._global_batches():
            mine = np.array_split(batch, self.ctx.world_size)[self.ctx.rank]
            for micro in np.array_split(mine, self.accumulation):
                if len(micro):
                    yield micro.tolist()

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def steps(self) -> list[int]:
        """Global batch size of each optimizer step this epoch (for loss scaling)."""
        return [len(b) for b in self._global_batches()]
