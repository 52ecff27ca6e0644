"""The network as PopTorch traces it: the executor's windows, unrolled, for PopART to differentiate.

PopTorch records the forward pass only and PopART builds the backward pass from
it, so the network is built in the ``straight_through`` step mode
(ipu_snn.layers), decided once in `build_traced`:

* ``torch.autograd.Function`` backward methods are never called, so neither the
  fused kernels nor the surrogate spike Function can run: the neuron update is
  the autograd step (ipu_snn.neuron.reference.step) with the straight-through
  spike ``heaviside(x) + s(x) - detach(s(x))``, whose derivative PopART takes is
  the surrogate's (``s`` is its primitive from the surrogate table);
* sparse products (``model.sparse: true``) are `traced_products`: a spike list by
  the PopART op SpikeSelect and the PopART op SpikeLinear, which takes the dense
  spikes as well so that its grad ops give PopART the spikes' gradient (BPTT
  through the layer) as well as the weight's. Spikes over a list's capacity
  cannot stop a compiled graph: they are counted per sample and returned with
  the statistics, and the trainer acts on ``model.sparse_overflow``. ``auto`` is
  dense: no sparse/dense crossover has been measured on an IPU;
* the BPTT schedule runs as the executor's windows unrolled into the graph
  (ipu_snn.executor.unroll_windows): the window states the schedule keeps
  become ``poptorch.recomputationCheckpoint``s, and PopART recomputes the rest;
  where the schedule keeps states off chip, each segment of windows from one
  off-chip checkpoint to the next is a ``poptorch.Block``, one execution phase
  (`PhaseMarks`, ipu_snn.ipu.recomputation).

Where the ops run: given the tile plan (``ipu_snn.ipu.tiles``), each product's
SpikeLinear runs on the tiles of the population it feeds (which owns the weight
columns) and its SpikeSelect on the tiles of the population whose spikes it
lists; without a plan both spread over the whole IPU.

The modules return sums per sample so that metrics add up over micro-batches,
replicas and device iterations, whatever PopTorch's output mode concatenates.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..executor import TimeLoop
from ..layers import Inputs, Site, Synapses
from ..network import SpikingNetwork, build_network
from ..ops.policy import SparsePolicy
from . import custom_ops
from .custom_ops import ALL_TILES, TileRange
from .recomputation import Recomputation, phase_block, recomputation_for
from .tiles import TilePlan


def tile_ranges(plan: TilePlan | None, site: Site) -> tuple[TileRange, TileRange]:
    """(SpikeLinear's tiles, SpikeSelect's tiles) of the product at ``site``: the consumer's
    population owns the weight columns; the lists are built on the tiles of the population whose
    spikes they list (the host's inputs have none, so on the consumer's)."""
    if plan is None:
        return ALL_TILES, ALL_TILES
    matmul = plan.matmul(f"{site.source}->{site.target}")
    names = {p.population.name: p for p in plan.populations}
    lister = names.get(site.source, names[site.target])
    return TileRange(matmul.tile_begin, matmul.tile_end), TileRange(lister.tile_begin, lister.tile_end)


def traced_products(poptorch: ModuleType, plan: TilePlan | None = None):
    """The products of the traced network: PopART's spike ops where ``model.sparse: true``, dense elsewhere."""

    def products(inputs: Inputs, synapses: Synapses, policy: SparsePolicy, site: Site):
        x = inputs if isinstance(inputs, Tensor) else inputs.z
        if policy.mode != "sparse":
            return F.linear(x, synapses.weight.t(), synapses.bias), None
        matmul_tiles, select_tiles = tile_ranges(plan, site)
        flat = x.reshape(-1, x.shape[-1])
        # the list is data for the matmul: no gradient flows through the selection
        ids, counts, _, dropped, _ = custom_ops.compact(poptorch, flat.detach(), None, policy.capacity, select_tiles)
        out = custom_ops.spike_linear(poptorch, flat, ids, counts, synapses.weight,
                                      dense_grad=not policy.listed_grad, tiles=matmul_tiles)
        out = out.reshape(*x.shape[:-1], out.shape[-1])
        # per sample: the batch is the second-to-last axis ([B, n] in a step, [L, B, n] in a window)
        per_sample = dropped.to(out.dtype).reshape(x.shape[:-1])
        if per_sample.dim() > 1:
            per_sample = per_sample.flatten(0, -2).sum(0)
        return (out if synapses.bias is None else out + synapses.bias), per_sample

    return products


def build_traced(cfg: Config, n_inputs: int, n_classes: int, dt: float, poptorch: ModuleType,
                 loop: TimeLoop = TimeLoop(), plan: TilePlan | None = None) -> SpikingNetwork:
    """The config's network in the straight-through step mode with PopART's products (same parameters,
    values and gradients as on the CPU). With a sparse product the op library is loaded here, so that a
    missing build stops the run before anything is traced."""
    if cfg.model.sparse is True:
        custom_ops.load_op_library()
    return build_network(cfg.model, n_inputs, n_classes, dt, loop=loop, binary_inputs=cfg.data.binary,
                         device=cfg.device, mode="straight_through", products=traced_products(poptorch, plan))


def per_sample_stats(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy and correctness (0/1) of each sample."""
    return F.cross_entropy(logits, y, reduction="none"), (logits.argmax(1) == y).to(logits.dtype)


class PhaseMarks:
    """``mark`` for the unrolled windows (ipu_snn.executor.unroll_windows), which calls it with the state
    each kept window starts from, in window order: the state becomes a recomputation checkpoint, and where
    the window starts an execution phase (an off-chip checkpoint) a new Block starts first, so that the
    checkpoint and every op up to the next phase's are that phase's.

    ``poptorch.Block.start`` begins a block until the next one starts, as ``poptorch.BeginBlock`` does for
    a module (the unrolled loop has no module per window to wrap); `begin` starts the first phase's."""

    def __init__(self, poptorch: ModuleType, recomputation: Recomputation):
        self._poptorch = poptorch
        self._kept = iter(sorted(recomputation.checkpoints))
        self._phases = frozenset(recomputation.phase_starts)

    def begin(self) -> None:
        if self._phases:
            self._poptorch.Block.start(phase_block(0))

    def __call__(self, *tensors: Tensor):
        window = next(self._kept)
        if window in self._phases:
            self._poptorch.Block.start(phase_block(window))
        return self._poptorch.recomputationCheckpoint(*tensors)


class TrainingStep(nn.Module):
    """Forward of one micro-batch for ``poptorch.trainingModel``.

    Returns the loss PopART differentiates (the micro-batch mean, so that mean
    reduction over accumulation and replicas gives the global-batch mean) and
    per-sample statistics [B, 4 + layers]: loss, correct, 1, spikes dropped over
    a sparse list's capacity, each layer's rate. The network's time loop marks
    its checkpoints and phases (`PhaseMarks`) as ``options.poptorch_options``
    sets them up from the same loop and T (``recomputation_for``).
    """

    def __init__(self, network: SpikingNetwork, poptorch: ModuleType):
        super().__init__()
        self.network = network
        self._poptorch = poptorch

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        recomputation = recomputation_for(self.network.loop, x.shape[1])
        marks = None
        if recomputation is not None:
            marks = PhaseMarks(self._poptorch, recomputation)
            marks.begin()
        out = self.network(x, mark=marks)
        losses, correct = per_sample_stats(out.logits, y)
        loss = self._poptorch.identity_loss(losses, reduction="mean")
        stats = torch.cat([torch.stack([losses, correct, torch.ones_like(correct), out.dropped], 1), out.rates], 1)
        return loss, stats.detach()


class Evaluation(nn.Module):
    """Forward of one batch for ``poptorch.inferenceModel``: per-sample [loss, correct, 1, dropped
    spikes], zero for padding samples (``valid`` = 0), so that a data set needs no partial last batch."""

    def __init__(self, network: SpikingNetwork):
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, y: Tensor, valid: Tensor) -> Tensor:
        out = self.network(x)
        losses, correct = per_sample_stats(out.logits, y)
        valid = valid.to(out.logits.dtype)
        return torch.stack([losses * valid, correct * valid, valid, out.dropped * valid], 1)
