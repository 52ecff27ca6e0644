"""The training objective from the config: ``training.loss`` and ``training.rate_regularization``.

A loss reads what a forward pass returns (`ipu_snn.network.NetworkOutput`); the
ones that need the spiking layers' per-step output ask for it through `Taps`, so
it flows through the executor's window outputs and every BPTT schedule and
sparse product still applies. The formulas are in docs/python_api.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LossConfig, RateBound, TrainingConfig
from .errors import ConfigError
from .network import NetworkOutput, SpikingNetwork
from .taps import Taps, widths

#: Losses that read the last spiking layer, its neurons split into one equal group per class
SPIKE_LOSSES = ("count_ce", "count_mse", "first_spike_ce")


@dataclass(frozen=True)
class Objective:
    """A loss and its rate regularisers, summed over the batch.

    ``objective(out, y, steps) -> (loss, scores)``: the loss summed over the samples (the driver scales
    it to the mean over the global batch), and class scores [B, C] whose argmax is the prediction."""

    loss: LossConfig
    bounds: tuple[RateBound, ...]
    n_classes: int
    last: int  # the last spiking layer

    @property
    def taps(self) -> Taps:
        """What the forward pass must return for this objective, with gradients."""
        layers = {b.layer for b in self.bounds}
        if self.loss.name in ("count_ce", "count_mse"):
            layers.add(self.last)
        first = (self.last, self.n_classes) if self.loss.name == "first_spike_ce" else None
        if not layers and first is None:
            return Taps()
        return Taps(grad=True, neuron_layers=tuple(sorted(layers)), first_spike=first)

    def __call__(self, out: NetworkOutput, y: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        scores = class_scores(self.loss.name, out, self.last, self.n_classes, steps)
        if self.loss.name == "count_mse":
            target = torch.full_like(scores, self.loss.incorrect_rate * steps)
            target.scatter_(1, y[:, None], self.loss.correct_rate * steps)
            loss = ((scores - target) ** 2).mean(1).sum() / steps
        else:
            loss = F.cross_entropy(scores, y, reduction="sum")
        for bound in self.bounds:
            loss = loss + rate_penalty(out.neuron_rates[bound.layer], bound).sum()
        return loss, scores

    def prepare(self, network: SpikingNetwork) -> None:
        """A loss of the spiking layers leaves the readout unused: it is frozen, so that no optimizer or
        DDP waits for its gradients."""
        if self.loss.name in SPIKE_LOSSES:
            network.readout.requires_grad_(False)


def class_scores(name: str, out: NetworkOutput, last: int, n_classes: int, steps: int) -> Tensor:
    """[B, C]: the readout's logits (readout_ce); each class group's mean spike count (count_ce,
    count_mse); minus its first-spike time in steps (first_spike_ce)."""
    if name == "readout_ce":
        return out.logits
    if name == "first_spike_ce":
        return -out.first_spike
    counts = out.neuron_rates[last] * steps
    return counts.reshape(counts.shape[0], n_classes, -1).mean(-1)


def rate_penalty(rates: Tensor, bound: RateBound) -> Tensor:
    """Per sample [B]: ``lower_weight * mean_i relu(lower - r_i)^2 + upper_weight * relu(mean_i r_i - upper)^2``
    over a layer's per-neuron rates ``rates`` [B, N] (spikes per step)."""
    penalty = rates.new_zeros(rates.shape[0])
    if bound.lower is not None:
        penalty = penalty + bound.lower_weight * F.relu(bound.lower - rates).pow(2).mean(1)
    if bound.upper is not None:
        penalty = penalty + bound.upper_weight * F.relu(rates.mean(1) - bound.upper).pow(2)
    return penalty


def make_objective(training: TrainingConfig, sizes: list[int], n_classes: int) -> Objective:
    """The objective of ``training`` for spiking layers of ``sizes`` and ``n_classes`` classes; a
    ConfigError names a setting the network cannot take."""
    check_objective(training, sizes, n_classes)
    return Objective(training.loss, tuple(training.rate_regularization), n_classes, len(sizes) - 1)


def output_columns(training: TrainingConfig, sizes: list[int], n_classes: int) -> tuple[int, int]:
    """For the planner's bytes, per sample: the columns the objective's taps add to each window's output, and
    the floats per step a taped window keeps for their backward (first-spike times: each neuron's
    ``1 - z``, and per group its silence and survival)."""
    if not sizes:
        return 0, 0
    taps = Objective(training.loss, tuple(training.rate_regularization), n_classes, len(sizes) - 1).taps
    kept = 0 if taps.first_spike is None else sizes[taps.first_spike[0]] + 2 * taps.first_spike[1]
    return sum(widths(taps, sizes, 0)), kept


def check_objective(training: TrainingConfig, sizes: list[int], n_classes: int) -> None:
    """Refuse, naming the field, a loss or bound the network of ``sizes`` cannot take."""
    name = training.loss.name
    if name in SPIKE_LOSSES and sizes[-1] % n_classes:
        raise ConfigError(f"training.loss: {name} reads the last spiking layer as {n_classes} equal groups of "
                          f"neurons, one per class, but it has {sizes[-1]} neurons: make model.layers."
                          f"{len(sizes) - 1}.size a multiple of {n_classes}")
    for i, bound in enumerate(training.rate_regularization):
        if bound.layer >= len(sizes):
            raise ConfigError(f"training.rate_regularization.{i}.layer: the model has spiking layers "
                              f"0..{len(sizes) - 1}, not {bound.layer}")


__all__ = ["Objective", "SPIKE_LOSSES", "check_objective", "class_scores", "make_objective", "output_columns", "rate_penalty"]
