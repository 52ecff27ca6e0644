"""The network as PopTorch traces it: a loop over time that PopART can differentiate.

PopTorch records the forward pass only and PopART builds the backward pass from
it, so three things of the CPU/GPU model do not carry over as they are:

* ``torch.autograd.Function`` backward methods are never called. The surrogate
  spike function is one, so on the IPU it is rewritten as a straight-through
  sum: ``heaviside(x) + s(x) - detach(s(x))``, where ``s`` is the surrogate's
  smooth primitive. The forward value is the spike, and the derivative PopART
  takes is ``s'(x)``, the surrogate gradient.
* The sparse spike matmul (``model.sparse``) is one too. On the IPU a sparse
  ``SpikeLinear`` lists its input spikes with the PopART op SpikeSelect and
  multiplies them with the PopART op SpikeLinear, which takes the dense spikes
  as well, so that its grad ops give PopART the gradient of the spikes (BPTT
  through the layer) and not only of the weight. Spikes over a list's capacity
  cannot stop a compiled graph: they are counted per sample and returned with
  the statistics, and the trainer acts on ``model.sparse_overflow``.
* The BPTT engine runs schedules with its own backward; here the time loop is
  unrolled into the graph and the schedule becomes PopART recomputation: the
  states it keeps are marked with ``poptorch.recomputationCheckpoint``.

Where the ops run: given the tile plan (``ipu_snn.ipu.tiles``), each sparse
layer's SpikeLinear runs on the tiles of the population it feeds (that
population owns the weight columns) and its SpikeSelect on the tiles of the
population whose spikes it lists; without a plan both spread over the whole IPU.

The modules return sums per sample so that metrics add up over micro-batches,
replicas and device iterations, whatever PopTorch's output mode concatenates.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..layers import SpikeLinear, SpikingLayer
from ..network import REDUCTIONS, SpikingNetwork
from ..neurons import Surrogate
from . import custom_ops
from .custom_ops import ALL_TILES, TileRange
from .sdk import import_poptorch
from .tiles import TilePlan

# Smooth primitives whose derivatives are the surrogate gradients of ipu_snn.neurons.
_PRIMITIVES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "fast_sigmoid": lambda x, k: x / (1.0 + k * x.abs()),
    "atan": lambda x, k: torch.atan((math.pi / 2.0) * k * x) / math.pi,
    "triangle": lambda x, k: (lambda u: u - u * u.abs() / 2.0)(torch.clamp(k * x, -1.0, 1.0)),
    "boxcar": lambda x, k: torch.clamp(k * x, -0.5, 0.5),
}


class StraightThroughSurrogate(Surrogate):
    """The same spike and surrogate gradient as ``Surrogate``, from differentiable ops only."""

    __slots__ = ()

    def __call__(self, x: Tensor) -> Tensor:
        smooth = _PRIMITIVES[self.name](x, self.scale)
        return (x > 0).to(x.dtype) + (smooth - smooth.detach())


class TracedSpikeLinear(SpikeLinear):
    """A sparse ``SpikeLinear`` as PopTorch traces it: the PopART ops instead of the autograd Function.

    Same parameters, buffers and settings as the layer it replaces; only the
    forward differs. ``dropped`` holds the spikes over capacity per sample [B],
    summed over the calls since ``unroll`` started. ``matmul_tiles`` and
    ``select_tiles`` are the tile ranges of SpikeLinear and SpikeSelect
    (``map_tiles``); the whole IPU unless a tile plan gave them.
    """

    matmul_tiles: TileRange = ALL_TILES
    select_tiles: TileRange = ALL_TILES

    def forward(self, z: Tensor) -> Tensor:
        if self.sparse.enabled is not True:
            # "auto": ops.policy.prefer_sparse has measured no crossover on the IPU, so dense
            return F.linear(z, self.weight.t(), self.bias)
        poptorch = import_poptorch()
        flat = z.reshape(-1, z.shape[-1])
        # The list is data for the matmul: no gradient flows through the selection.
        ids, counts, _, dropped, _ = custom_ops.compact(poptorch, flat.detach(), None, self.capacity,
                                                        self.select_tiles)
        out = custom_ops.spike_linear(poptorch, flat, ids, counts, self.weight, dense_grad=self.sparse.dense_grad,
                                      tiles=self.matmul_tiles)
        # per sample: the batch is z's second-to-last axis ([B, n] in a step, [T, B, n] for a sequence)
        per_sample = dropped.to(out.dtype).reshape(z.shape[:-1])
        if per_sample.dim() > 1:
            per_sample = per_sample.flatten(0, -2).sum(0)
        self.dropped = per_sample if self.dropped is None else self.dropped + per_sample
        out = out.reshape(*z.shape[:-1], out.shape[-1])
        return out if self.bias is None else out + self.bias


def make_traceable(network: SpikingNetwork, tiles: TilePlan | None = None) -> SpikingNetwork:
    """Give every spiking layer the straight-through surrogate and every sparse ``SpikeLinear`` the
    PopART ops (in place; same parameters, values and gradients). With a sparse layer, the op
    library is loaded here, so that a missing build stops the run before anything is traced.
    ``tiles``: the network's tile plan, whose tile ranges the ops then run on (``map_tiles``);
    None spreads every op over the whole IPU."""
    # PopTorch never calls an autograd.Function's backward: no fused loop, no forward-mode AD steps
    network.fused = None
    for layer in network.modules():
        if isinstance(layer, SpikingLayer) and isinstance(getattr(layer, "spike", None), Surrogate):
            layer.spike = StraightThroughSurrogate(layer.spike.name, layer.spike.scale)
        if hasattr(layer, "forward_ad"):
            layer.forward_ad = None
    sparse = [m for m in network.modules() if type(m) is SpikeLinear and m.sparse.enabled]
    for linear in sparse:
        linear.__class__ = TracedSpikeLinear  # a subclass that only overrides forward
    if tiles is not None:
        map_tiles(network, tiles)
    if any(linear.sparse.enabled is True for linear in sparse):
        custom_ops.load_op_library()
    return network


def map_tiles(network: SpikingNetwork, plan: TilePlan) -> None:
    """Put each traced sparse layer's ops on the tiles the plan gives them.

    The plan's populations are the network's layers and then its readout, each
    fed by its matmuls in the order of ``Population.sources``: the input weights
    (``fc``), then the recurrent ones (``rec``). A matmul's SpikeLinear runs on
    the tiles of the population it feeds, which own its weight columns. Its
    SpikeSelect runs on the tiles of the population whose spikes it lists; the
    host's input spikes have no population, so theirs runs on the consumer's tiles.
    """
    modules = [*network.layers, network.readout]
    if len(plan.populations) != len(modules):
        raise ValueError(f"the tile plan has {len(plan.populations)} populations, the network "
                         f"{len(network.layers)} layers and a readout")
    owners = {p.population.name: p for p in plan.populations}
    for module, population in zip(modules, plan.populations):
        linears = [module.fc] + ([module.rec] if getattr(module, "rec", None) is not None else [])
        matmuls = plan.matmuls_into(population.population.name)
        if len(linears) != len(matmuls):
            raise ValueError(f"{population.population.name}: the tile plan has {len(matmuls)} matmuls into it, "
                             f"the network {len(linears)}")
        for linear, matmul in zip(linears, matmuls):
            if tuple(linear.weight.shape) != (matmul.source.n, matmul.n_out):
                raise ValueError(f"tile plan matmul {matmul.name} is {matmul.source.n} x {matmul.n_out}, the "
                                 f"network's weight {tuple(linear.weight.shape)}")
            if not isinstance(linear, TracedSpikeLinear):
                continue  # dense (e.g. spike counts in): PopART's own matmul, mapped by Poplar
            lister = owners.get(matmul.source.name, population)
            linear.matmul_tiles = TileRange(matmul.tile_begin, matmul.tile_end)
            linear.select_tiles = TileRange(lister.tile_begin, lister.tile_end)


def _traced_sparse(network: SpikingNetwork) -> list[TracedSpikeLinear]:
    return [m for m in network.modules() if isinstance(m, TracedSpikeLinear)]


def dropped_per_sample(network: SpikingNetwork, like: Tensor) -> Tensor:
    """Spikes the sparse layers left out over capacity in the last ``unroll``, per sample ([B], like ``like``)."""
    total = torch.zeros_like(like)
    for linear in _traced_sparse(network):
        if linear.dropped is not None:
            total = total + linear.dropped
    return total


def _keep(state: tuple, mark: Callable) -> tuple:
    leaves, spec = pytree.tree_flatten(state)
    kept = mark(*leaves)
    kept = [kept] if isinstance(kept, Tensor) else list(kept)
    return pytree.tree_unflatten(kept, spec)


def unroll(network: SpikingNetwork, x: Tensor, checkpoints: frozenset[int] = frozenset(),
           mark: Callable | None = None) -> tuple[Tensor, Tensor]:
    """Logits [B, classes] and per-sample spike rates [B, layers] of ``x`` [B, T, inputs], step by step.

    The state after n steps is passed through ``mark`` (``poptorch.recomputationCheckpoint``)
    for every n in ``checkpoints``.
    """
    like = network.readout.fc.weight
    for linear in _traced_sparse(network):
        linear.dropped = None  # counted afresh for this pass (dropped_per_sample)
    state = network.initial_state(x.shape[0], like)
    outputs = []
    for n, x_t in enumerate(x.transpose(0, 1).unbind(0)):
        if n in checkpoints:
            state = _keep(state, mark)
        state, y = network.step(state, x_t.to(like.dtype))
        outputs.append(y)
    ys = torch.stack(outputs)  # [T, B, classes + layers]
    n_classes = network.readout.n_out
    return REDUCTIONS[network.reduce](ys[..., :n_classes]), ys[..., n_classes:].mean(0)


def per_sample_stats(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy and correctness (0/1) of each sample."""
    return F.cross_entropy(logits, y, reduction="none"), (logits.argmax(1) == y).to(logits.dtype)


class TrainingStep(nn.Module):
    """Forward of one micro-batch for ``poptorch.trainingModel``.

    Returns the loss PopART differentiates (the micro-batch mean, so that mean
    reduction over accumulation and replicas gives the global-batch mean) and
    per-sample statistics [B, 4 + layers]: loss, correct, 1, spikes dropped over
    a sparse list's capacity, each layer's rate.
    """

    def __init__(self, network: SpikingNetwork, poptorch, checkpoints: frozenset[int] = frozenset()):
        super().__init__()
        self.network = network
        self.checkpoints = checkpoints
        self._poptorch = poptorch

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits, rates = unroll(self.network, x, self.checkpoints, self._poptorch.recomputationCheckpoint)
        losses, correct = per_sample_stats(logits, y)
        loss = self._poptorch.identity_loss(losses, reduction="mean")
        dropped = dropped_per_sample(self.network, correct)
        stats = torch.cat([torch.stack([losses, correct, torch.ones_like(correct), dropped], 1), rates], 1)
        return loss, stats.detach()


class Evaluation(nn.Module):
    """Forward of one batch for ``poptorch.inferenceModel``: per-sample [loss, correct, 1, dropped
    spikes], zero for padding samples (``valid`` = 0), so that a data set needs no partial last batch."""

    def __init__(self, network: SpikingNetwork):
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, y: Tensor, valid: Tensor) -> Tensor:
        logits, _ = unroll(self.network, x)
        losses, correct = per_sample_stats(logits, y)
        valid = valid.to(logits.dtype)
        dropped = dropped_per_sample(self.network, correct)
        return torch.stack([losses * valid, correct * valid, valid, dropped * valid], 1)
