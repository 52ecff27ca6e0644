"""``model.init``: how the spiking layers' weights are first drawn (the choices are in `InitConfig`).

The fluctuation-driven choice (Rossbroich, Gygax & Zenke 2022) in discrete time: a
neuron with decay beta summing n inputs that spike at ``rate`` per step through
centred weights of variance s^2 has a membrane variance of
``n rate s^2 / (1 - beta^2)`` (before resets); setting that to ``(threshold / xi)^2``
gives s. A recurrent layer splits the variance: ``recurrent_share`` from its
recurrent weights, the rest from its inputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import InitConfig


@torch.no_grad()
def initialize(layers, init: InitConfig) -> None:
    """Draw the weights of ``layers`` (SpikingLayers) as ``init`` says; ``default`` leaves them as built."""
    if init.name == "default":
        return
    for layer in layers:
        for synapses, share in ((layer.fc, 1.0), (layer.rec, None)):
            if synapses is None:
                continue
            fan_in = synapses.weight.shape[0]
            if init.name == "uniform":
                bound = init.gain / math.sqrt(fan_in)
                nn.init.uniform_(synapses.weight, -bound, bound)
            elif init.name == "normal":
                nn.init.normal_(synapses.weight, 0.0, init.gain / math.sqrt(fan_in))
            else:
                if layer.rec is not None:
                    share = init.recurrent_share if synapses is layer.rec else 1.0 - init.recurrent_share
                nn.init.normal_(synapses.weight, 0.0, fluctuation_std(fan_in, share, layer, init))
            if synapses.bias is not None:
                synapses.bias.zero_()


def fluctuation_std(fan_in: int, share: float, layer, init: InitConfig) -> float:
    """The weight standard deviation that gives ``share`` of the membrane variance (threshold / xi)^2."""
    beta = float(layer.decays()[0].mean())
    target = (layer.spec.threshold / init.xi) ** 2 * share
    return math.sqrt(target * (1.0 - beta ** 2) / (fan_in * init.rate)) if share > 0 else 0.0
