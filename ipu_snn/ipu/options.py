"""From the config to ``poptorch.Options``, under poprun or alone.

Written against the PopTorch 3.x API (Poplar SDK 3.x). The modules are passed
in rather than imported here so that the mapping is testable without the SDK.
"""

from __future__ import annotations

from types import ModuleType

from ..config import Config


def poptorch_options(cfg: Config, poptorch: ModuleType, popdist: ModuleType | None = None):
    """Replication, gradient accumulation and device iterations of a run.

    Under ``poprun`` the replication factor and this instance's share of it come
    from the launcher (``popdist.poptorch.Options``); alone, from ``ipu.replication``.
    Gradients are averaged over accumulation steps and replicas, as DDP does on
    CPU/GPU, so a config trains the same on either.
    """
    if popdist is not None and popdist.isPopdistEnvSet():
        opts = popdist.poptorch.Options()
    else:
        opts = poptorch.Options()
        opts.replicationFactor(cfg.ipu.replication)
    opts.deviceIterations(cfg.ipu.device_iterations)
    opts.Training.gradientAccumulation(cfg.training.grad_accumulation)
    opts.Training.accumulationAndReplicationReductionType(poptorch.ReductionType.Mean)
    opts.randomSeed(cfg.training.seed)
    if cfg.device == "ipu-model":
        opts.useIpuModel(True)
    if cfg.ipu.available_memory_proportion is not None:
        opts.setAvailableMemoryProportion({"IPU0": cfg.ipu.available_memory_proportion})
    if cfg.ipu.executable_cache:
        opts.enableExecutableCaching(cfg.ipu.executable_cache)
    return opts


def samples_per_step(cfg: Config, replicas: int) -> int:
    """Samples consumed by one ``poptorch.trainingModel`` call: micro-batch x accumulation x replicas x iterations."""
    return cfg.data.batch_size * cfg.training.grad_accumulation * replicas * cfg.ipu.device_iterations
