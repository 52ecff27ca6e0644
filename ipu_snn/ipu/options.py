"""From the config to ``poptorch.Options``, under poprun or alone.

Written against the PopTorch 3.x API (Poplar SDK 3.x). The modules are passed
in rather than imported here so that the mapping is testable without the SDK.
Every call made here is listed, with the public source it was checked against,
in ``ipu_snn/ipu/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from ..config import Config
from ..errors import ConfigError


def poptorch_options(cfg: Config, poptorch: ModuleType, popdist: ModuleType | None = None, *,
                     training: bool = True):
    """Options of the training model (``training=True``) or of the evaluation model.

    Under ``poprun`` the replication factor and this instance's share of it come
    from the launcher (``popdist.poptorch.Options``); alone, from ``ipu.replication``.
    Gradients are averaged over accumulation steps and replicas, as DDP does on
    CPU/GPU, so a config trains the same on either. The BPTT schedule needs no
    option: it runs inside the network op (``model.py``), off-chip checkpoints included.
    """
    if popdist is not None and popdist.isPopdistEnvSet():
        opts = popdist.poptorch.Options()
    else:
        opts = poptorch.Options()
        opts.replicationFactor(cfg.ipu.replication)
    opts.deviceIterations(cfg.ipu.device_iterations)
    opts.randomSeed(cfg.training.seed)
    if cfg.device == "ipu-model":
        opts.useIpuModel(True)
    if cfg.ipu.available_memory_proportion is not None:
        opts.setAvailableMemoryProportion({"IPU0": cfg.ipu.available_memory_proportion})
    if cfg.ipu.executable_cache:
        opts.enableExecutableCaching(cfg.ipu.executable_cache)
    if not training:
        # one row of statistics per sample of every batch the call ran
        opts.outputMode(poptorch.OutputMode.All)
        return opts
    opts.Training.gradientAccumulation(cfg.training.grad_accumulation)
    opts.Training.accumulationAndReplicationReductionType(poptorch.ReductionType.Mean)
    # the statistics a call returns are summed over its micro-batches and device
    # iterations, so an epoch's metrics cover every sample, not the last batch
    opts.outputMode(poptorch.OutputMode.Sum)
    return opts


@dataclass(frozen=True)
class Replicas:
    """How many model replicas train, and which PopRun instance this process is."""

    local: int  # replicas this process drives
    total: int  # replicas of the whole run
    instance: int = 0
    instances: int = 1

    @property
    def is_main(self) -> bool:
        """Only the first instance prints and writes files."""
        return self.instance == 0


def replicas(cfg: Config, popdist: ModuleType | None = None) -> Replicas:
    if popdist is not None and popdist.isPopdistEnvSet():
        return Replicas(popdist.getNumLocalReplicas(), popdist.getNumTotalReplicas(),
                        popdist.getInstanceIndex(), popdist.getNumInstances())
    return Replicas(cfg.ipu.replication, cfg.ipu.replication)


def micro_batch_size(cfg: Config, total_replicas: int) -> int:
    """Samples one replica takes per micro-batch: a compiled IPU graph has one static batch size.

    ``data.batch_scope: global`` splits ``data.batch_size`` over all replicas and
    accumulation steps; ``per_device`` gives each replica ``data.batch_size`` per
    optimizer step, split over its accumulation steps.
    """
    accumulation = cfg.training.grad_accumulation
    parts = accumulation * (total_replicas if cfg.data.batch_scope == "global" else 1)
    if cfg.data.batch_size % parts:
        split = f"{total_replicas} replicas x {accumulation}" if cfg.data.batch_scope == "global" else f"{accumulation}"
        raise ConfigError(f"data.batch_size: {cfg.data.batch_size} cannot be split evenly into {split} "
                          f"accumulation steps (data.batch_scope: {cfg.data.batch_scope}); an IPU graph has one "
                          f"fixed micro-batch size, so use a multiple of {parts}")
    return cfg.data.batch_size // parts


def samples_per_step(cfg: Config, replicas: int) -> int:
    """Samples consumed by one ``poptorch.trainingModel`` call of the whole run:
    micro-batch x accumulation x replicas x device iterations."""
    return micro_batch_size(cfg, replicas) * cfg.training.grad_accumulation * replicas * cfg.ipu.device_iterations
