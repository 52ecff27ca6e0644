"""The network a config describes: spiking layers, then a leaky-integrator readout."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .bptt import Schedule, ScanStats, scan
from .config import ModelConfig
from .devices import spike_backend
from .errors import ConfigError
from .layers import ALIF, LIF, LIReadout, RecurrentLIF, SparseMode, SpikeLinear, SpikingLayer
from .neurons import surrogate

if TYPE_CHECKING:
    from .fused import FusedLoop

REDUCTIONS = {
    "max": lambda v: v.amax(dim=0),
    "mean": lambda v: v.mean(dim=0),
    "sum": lambda v: v.sum(dim=0),
    "last": lambda v: v[-1],
}


class NetworkOutput(NamedTuple):
    logits: Tensor  # [B, classes]
    rates: list[Tensor]  # mean spikes per neuron and step, one scalar per spiking layer
    dropped: int = 0  # spikes left out by sparse ops over capacity (sparse_overflow: drop_and_count)
    # per spiking layer [2, n]: spikes per neuron over batch and steps, and at the last step (ipu_snn.metrics);
    # None from the BPTT engine's step-by-step forward, which keeps no per-neuron history
    counts: list[Tensor] | None = None


def spike_counts(h: Tensor) -> Tensor:
    h = h.detach()
    return torch.stack([h.sum((0, 1)), h[-1].sum(0)])


class SpikingNetwork(nn.Module):
    """Spiking layers and a readout, run in one of two ways.

    Without a schedule, layer by layer: each layer's input projection is one
    matrix product over all T steps, and autograd keeps every step (store_all).
    With a schedule, step by step through the BPTT engine: the whole network is
    one recurrent cell, so only checkpoints of its state and the steps the
    schedule tapes are held, and memory no longer grows with T at full rate.
    """

    def __init__(self, layers: list[SpikingLayer], readout: LIReadout, reduce: str = "max",
                 schedule: Callable[[int], Schedule] | None = None, fused: FusedLoop | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.readout = readout
        self.reduce = reduce
        self.schedule = schedule
        self.fused = fused  # the fused time loop's settings, or None for the plain loop
        self.last_scan: ScanStats | None = None  # accounting of the latest scheduled forward

    def forward(self, x: Tensor) -> NetworkOutput:
        """``x``: [B, T, inputs], batch-first as loaders give it."""
        sparse = [m for m in self.modules() if isinstance(m, SpikeLinear) and m.sparse.enabled]
        for m in sparse:
            m.dropped = None
        out = self._forward(x)
        # read before backward: the engine's recomputations must not count twice
        dropped = sum(int(m.dropped) for m in sparse if m.dropped is not None)
        return out._replace(dropped=dropped)

    def _forward(self, x: Tensor) -> NetworkOutput:
        if self.schedule is not None:
            return self._forward_scheduled(x.transpose(0, 1))
        if self.fused is not None:
            return self._forward_fused(x.transpose(0, 1))
        h = x.transpose(0, 1)
        rates, counts = [], []
        for layer in self.layers:
            h = layer(h)
            rates.append(h.detach().mean())
            counts.append(spike_counts(h))
        membrane = self.readout(h)
        return NetworkOutput(REDUCTIONS[self.reduce](membrane), rates, counts=counts)

    def _forward_fused(self, h: Tensor) -> NetworkOutput:
        rates, counts = [], []
        for i, layer in enumerate(self.layers):
            h = layer.forward_fused(h, self.fused, spikes_in=i > 0)
            rates.append(h.detach().mean())
            counts.append(spike_counts(h))
        return NetworkOutput(REDUCTIONS[self.reduce](self.readout.forward_fused(h)), rates, counts=counts)

    def initial_state(self, batch: int, like: Tensor) -> tuple:
        return tuple(layer.initial_state(batch, like) for layer in self.layers) + (
            self.readout.initial_state(batch, like),)

    def step(self, state: tuple, x_t: Tensor) -> tuple[tuple, Tensor]:
        """One time step of the whole network; the output packs the readout
        membrane [B, classes] and each layer's per-sample spike rate [B, layers]."""
        new_state, rates, h = [], [], x_t
        for layer, layer_state in zip(self.layers, state):
            layer_state, h = layer.step(layer_state, layer.project(h))
            new_state.append(layer_state)
            rates.append(h.detach().mean(1))
        readout_state, v = self.readout.step(state[-1], self.readout.project(h))
        return tuple(new_state) + (readout_state,), torch.cat([v, torch.stack(rates, 1)], 1)

    def _forward_scheduled(self, xs: Tensor) -> NetworkOutput:
        """``xs`` may stay in host memory while the network is on a GPU: each step
        copies its own slice over, so long inputs need not fit on the device."""
        like = self.readout.fc.weight
        flat0, spec = pytree.tree_flatten(self.initial_state(xs.shape[1], like))
        names, params = zip(*self.named_parameters())
        step = _Step(self)

        def cell(params, flat_state, x_t):
            # the engine passes the parameters explicitly so it can differentiate
            # with respect to them when it replays a step in backward
            state, y = torch.func.functional_call(
                step, {f"net.{n}": p for n, p in zip(names, params)},
                (pytree.tree_unflatten(list(flat_state), spec), x_t.to(like, non_blocking=True)))
            return tuple(pytree.tree_leaves(state)), y

        self.last_scan = ScanStats()
        ys, _ = scan(cell, params, flat0, xs, self.schedule, stats=self.last_scan)
        n_classes = self.readout.n_out
        rates = ys[..., n_classes:].detach().mean((0, 1))
        return NetworkOutput(REDUCTIONS[self.reduce](ys[..., :n_classes]), list(rates.unbind()))


class _Step(nn.Module):
    # torch.func.functional_call calls forward(); this gives it the network's step
    def __init__(self, net: SpikingNetwork):
        super().__init__()
        self.net = net

    def forward(self, state, x_t):
        return self.net.step(state, x_t)


def build_network(cfg: ModelConfig, n_inputs: int, n_classes: int, dt: float,
                  schedule: Callable[[int], Schedule] | None = None, binary_inputs: bool = True,
                  device: str = "cpu") -> SpikingNetwork:
    """``dt`` (seconds per step) turns time constants given as ``tau`` into per-step decays;
    ``schedule`` (T -> Schedule) runs the network through the BPTT engine. Spike counts
    (``binary_inputs=False``) are multiplied densely even in sparse mode. ``device``: the
    config's; a device with its own spike-matmul backend (devices.spike_backend, e.g.
    ipu-emulator) gets it in every sparse layer, and needs model.sparse: true."""
    layers: list[SpikingLayer] = []
    n_in = n_inputs
    backend = spike_backend(device)
    if backend is not None and cfg.sparse is not True:
        raise ConfigError(f"model.sparse: device {device} runs every spike matmul on the {backend} backend, "
                          f"so it needs model.sparse: true (got {cfg.sparse!r})")
    sparse = SparseMode(cfg.sparse, cfg.sparse_capacity, cfg.sparse_overflow, cfg.sparse_grad == "dense", backend)
    input_sparse = sparse if binary_inputs else SparseMode()
    for layer_cfg in cfg.layers:
        common = dict(
            input_sparse=input_sparse,
            sparse=sparse,
            beta=layer_cfg.resolve_beta(dt, default=0.9),
            threshold=layer_cfg.threshold,
            reset=layer_cfg.reset,
            detach_reset=layer_cfg.detach_reset,
            learn_decay=layer_cfg.learn_decay,
            spike=surrogate(layer_cfg.surrogate.name, layer_cfg.surrogate.scale),
        )
        if layer_cfg.type == "lif":
            layer = LIF(n_in, layer_cfg.size, **common)
        elif layer_cfg.type == "rlif":
            layer = RecurrentLIF(n_in, layer_cfg.size, **common)
        else:
            layer = ALIF(n_in, layer_cfg.size, rho=layer_cfg.resolve_rho(dt),
                         adapt_strength=layer_cfg.adapt_strength, recurrent=layer_cfg.recurrent, **common)
        layers.append(layer)
        n_in = layer_cfg.size
        input_sparse = sparse
    readout = LIReadout(n_in, n_classes, beta=cfg.readout.resolve_beta(dt, default=0.95),
                        learn_decay=cfg.readout.learn_decay, input_sparse=sparse)
    fused = None
    if use_fused(cfg, schedule):
        from .fused import SAVED_DTYPES, FusedLoop  # custom ops: torch >= 2.4 (see layers.py)

        loop = FusedLoop(SAVED_DTYPES[cfg.fused_saved_dtype])
        if schedule is None:
            fused = loop  # whole layers as fused time loops
        else:
            for layer in layers:  # the engine runs the network step by step: each step keeps derivatives only
                layer.forward_ad = loop
    return SpikingNetwork(layers, readout, cfg.readout.reduce, schedule, fused)


def fused_obstacles(cfg: ModelConfig, schedule) -> list[str]:
    """Why this model cannot run fused (empty: it can). Without a schedule that is the fused time loop;
    under the BPTT engine's schedules, the step-by-step forward-mode AD of the neuron updates."""
    reasons = []
    if cfg.sparse is not False and schedule is None:
        reasons.append(f"model.sparse is {cfg.sparse!r} (the fused time loop multiplies densely)")
    for i, layer in enumerate(cfg.layers):
        if not layer.detach_reset:
            reasons.append(f"model.layers.{i}.detach_reset is false (the fused backward needs a detached reset)")
    return reasons


def use_fused(cfg: ModelConfig, schedule=None) -> bool:
    """model.fused: auto runs fused wherever it can; true insists, naming what prevents it."""
    if cfg.fused is False:
        return False
    reasons = fused_obstacles(cfg, schedule)
    if reasons and cfg.fused is True:
        raise ConfigError("model.fused is true, but " + "; ".join(reasons)
                          + ". Set model.fused to auto or false, or change those settings.")
    return not reasons


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["NetworkOutput", "SpikingNetwork", "build_network", "count_parameters", "fused_obstacles", "use_fused"]
