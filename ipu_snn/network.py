"""The network a config describes: spiking layers, then a leaky-integrator readout."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from .config import ModelConfig
from .layers import ALIF, LIF, LIReadout, RecurrentLIF, SpikingLayer
from .neurons import surrogate

_REDUCE = {
    "max": lambda v: v.amax(dim=0),
    "mean": lambda v: v.mean(dim=0),
    "sum": lambda v: v.sum(dim=0),
    "last": lambda v: v[-1],
}


class NetworkOutput(NamedTuple):
    logits: Tensor  # [B, classes]
    rates: list[Tensor]  # mean spikes per neuron and step, one scalar per spiking layer


class SpikingNetwork(nn.Module):
    def __init__(self, layers: list[SpikingLayer], readout: LIReadout, reduce: str = "max"):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.readout = readout
        self.reduce = reduce

    def forward(self, x: Tensor) -> NetworkOutput:
        """``x``: [B, T, inputs], batch-first as loaders give it."""
        h = x.transpose(0, 1)
        rates = []
        for layer in self.layers:
            h = layer(h)
            rates.append(h.detach().mean())
        membrane = self.readout(h)
        return NetworkOutput(_REDUCE[self.reduce](membrane), rates)


def build_network(cfg: ModelConfig, n_inputs: int, n_classes: int, dt: float) -> SpikingNetwork:
    """``dt`` (seconds per step) turns time constants given as ``tau`` into per-step decays."""
    layers: list[SpikingLayer] = []
    n_in = n_inputs
    for layer_cfg in cfg.layers:
        common = dict(
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
    readout = LIReadout(n_in, n_classes, beta=cfg.readout.resolve_beta(dt, default=0.95),
                        learn_decay=cfg.readout.learn_decay)
    return SpikingNetwork(layers, readout, cfg.readout.reduce)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["NetworkOutput", "SpikingNetwork", "build_network", "count_parameters"]
