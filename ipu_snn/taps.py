"""What a forward pass gives beyond the logits (`Taps`), computed per window so that schedules still apply.

Every quantity here is a sum or a product over time steps, so each window
computes its own part from its spikes and the executor stacks the parts with
the logits' ([W, B, ...]); `collect` combines them after the scan. Gradients
reach the spikes through the window's output under any BPTT schedule, as the
readout's do. docs/python_api.md describes what recording costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .dropout import rescale
from .neuron.reference import step
from .neuron.window import SpikeTrain


@dataclass(frozen=True)
class Taps:
    """Which per-window quantities a forward pass adds to its output.

    Parameters
    ----------
    grad : bool
        Rates, per-neuron rates, first-spike times and recorded spikes carry gradients (otherwise they are
        detached, and the fused backward reads no spike gradient).
    neuron_layers : tuple of int
        Spiking layers whose per-neuron rates [B, N] are returned (``NetworkOutput.neuron_rates``).
    first_spike : (layer, groups) or None
        The first-spike time of each of ``groups`` equal groups of the layer's neurons
        (``NetworkOutput.first_spike``, [B, groups], in steps; T where a group never fires).
    record : tuple of int
        Spiking layers whose per-step spikes (and membranes) are recorded (``NetworkOutput.record``).
    membranes : bool
        Record the membranes too (detached; replayed from the layer's currents and spikes).
    """

    grad: bool = False
    neuron_layers: tuple[int, ...] = ()
    first_spike: tuple[int, int] | None = None
    record: tuple[int, ...] = ()
    membranes: bool = True

    def merge(self, other: "Taps") -> "Taps":
        """Both sets of quantities (gradients where either asks; membranes where neither declines)."""
        firsts = {f for f in (self.first_spike, other.first_spike) if f is not None}
        if len(firsts) > 1:
            raise ValueError(f"one first-spike readout per forward, got {sorted(firsts)}")
        return Taps(self.grad or other.grad, tuple(sorted(set(self.neuron_layers) | set(other.neuron_layers))),
                    next(iter(firsts), None), tuple(sorted(set(self.record) | set(other.record))),
                    self.membranes and other.membranes)

    def check(self, sizes: list[int]) -> None:
        """Refuse layers the network does not have, and groups that do not divide their layer."""
        for what, layers in (("neuron rates", self.neuron_layers), ("record", self.record),
                             ("first spike", () if self.first_spike is None else (self.first_spike[0],))):
            for i in layers:
                if not 0 <= i < len(sizes):
                    raise ValueError(f"{what}: the network has spiking layers 0..{len(sizes) - 1}, not {i}")
        if self.first_spike is not None:
            layer, groups = self.first_spike
            if groups < 1 or sizes[layer] % groups:
                raise ValueError(f"first spike: layer {layer}'s {sizes[layer]} neurons do not split into "
                                 f"{groups} equal groups")


class Recording:
    """Per-step spikes and membranes of one layer: [T, B, N] views formed when read.

    ``spikes`` carries gradients where the forward had ``Taps.grad``; ``membranes`` (the membrane after
    each step's reset) never does, and is None unless recorded."""

    def __init__(self, spikes: Tensor, membranes: Tensor | None, steps: int, n: int):
        self._spikes, self._membranes, self._steps, self._n = spikes, membranes, steps, n

    def _time_major(self, flat: Tensor) -> Tensor:
        windows, batch, _ = flat.shape
        per = flat.reshape(windows, batch, -1, self._n).transpose(1, 2)
        return per.reshape(-1, batch, self._n)[: self._steps]

    @property
    def spikes(self) -> Tensor:
        return self._time_major(self._spikes)

    @property
    def membranes(self) -> Tensor | None:
        return None if self._membranes is None else self._time_major(self._membranes.detach())


def window_taps(taps: Taps, layers, inputs: list, trains: list[SpikeTrain], states: list, steps: int) -> list[Tensor]:
    """One window's columns per sample, in the order `collect` reads them.

    ``inputs[i]``, ``trains[i]``, ``states[i]``: what layer i read, the spikes it made, its state at the
    window's start; ``steps``: the longest window's length (shorter windows' records are padded)."""
    out = []

    def z_of(i):
        return trains[i].z if taps.grad else trains[i].z.detach()

    for i in taps.neuron_layers:
        out.append(z_of(i).sum(0))
    if taps.first_spike is not None:
        layer, groups = taps.first_spike
        z = z_of(layer)
        alive = (1.0 - z).reshape(z.shape[0], z.shape[1], groups, -1).prod(-1)  # no neuron of the group fired
        survival = torch.cumprod(alive, 0)  # ... up to and including each step of the window
        out += [survival.sum(0), survival[-1]]
    for i in taps.record:
        z = z_of(i)
        out.append(_pad(z, steps))
        if taps.membranes:
            out.append(_pad(replay_membranes(layers[i], inputs[i], z.detach(), states[i]), steps))
    return out


def _pad(per_step: Tensor, steps: int) -> Tensor:
    """[L, B, N] -> [B, steps * N], zeros after the window's L steps."""
    length, batch, n = per_step.shape
    flat = per_step.transpose(0, 1).reshape(batch, length * n)
    return flat if length == steps else torch.nn.functional.pad(flat, (0, (steps - length) * n))


@torch.no_grad()
def replay_membranes(layer, inputs, z: Tensor, state) -> Tensor:
    """The membrane after each step's reset [L, B, N], through the autograd ground truth
    (`neuron.reference.step`) with the window's own spikes: the same currents, resets and recurrent input."""
    currents, _ = layer.products(inputs, layer.fc, layer.policies.input, layer.input_site)
    if layer.training and layer.input_scale != 1.0:
        currents = rescale(currents, layer.fc.bias, layer.input_scale)
    beta, rho = layer.decays()
    v, a, prev = state.v, state.a, state.z
    membranes = []
    for t in range(currents.shape[0]):
        current = currents[t]
        if layer.rec is not None:
            current = current + prev.to(current.dtype) @ layer.rec.weight
        v, a, _ = step(layer.spec, beta, rho, v, a, current, lambda x, name, scale, t=t: z[t].to(x.dtype))
        prev = z[t]
        membranes.append(v)
    return torch.stack(membranes)


def widths(taps: Taps, sizes: list[int], steps: int) -> list[int]:
    """The widths of `window_taps`'s columns, in order."""
    w = [sizes[i] for i in taps.neuron_layers]
    if taps.first_spike is not None:
        w += [taps.first_spike[1]] * 2
    for i in taps.record:
        w += [steps * sizes[i]] * (2 if taps.membranes else 1)
    return w


def collect(taps: Taps, parts: list[Tensor], sizes: list[int], steps: int, total_steps: int) -> dict:
    """The per-window columns [W, B, width] combined over windows: ``neuron_rates`` {layer: [B, N]},
    ``first_spike`` [B, groups] and ``record`` {"layerI": Recording}."""
    parts = iter(parts)
    found = {"neuron_rates": {i: next(parts).sum(0) / total_steps for i in taps.neuron_layers}}
    if taps.first_spike is not None:
        partial, survival = next(parts), next(parts)
        # steps before the first spike: the windows' partial sums, each scaled by the survival before it
        before = torch.cat([torch.ones_like(survival[:1]), torch.cumprod(survival[:-1], 0)])
        found["first_spike"] = (before * partial).sum(0)
    found["record"] = {}
    for i in taps.record:
        spikes = next(parts)
        membranes = next(parts) if taps.membranes else None
        found["record"][f"layer{i}"] = Recording(spikes, membranes, total_steps, sizes[i])
    return found
