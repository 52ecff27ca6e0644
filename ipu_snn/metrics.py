"""NeuroBench's metrics of a spiking network, from spike counts and weights.

Definitions follow NeuroBench 2.x (neurobench-project/neurobench, ``neurobench/metrics``):
- **activation sparsity** (``workload/activation_sparsity*.py``): zero activations over all
  activations of the spiking layers, over every step and sample; per layer and over all of them.
  The readout's membrane is an output, not an activation, and is left out.
- **synaptic operations** (``workload/synaptic_operations.py``, ``utils/layers/macs.py``): for every
  connection (each layer's input weights, its recurrent weights, the readout's weights) at every
  step, inputs and weights are binarised (non-zero -> 1, bias ignored) and the binary product
  counts the operations: ``sum_j [x_j != 0] * (non-zero weights of row j)``. A step whose inputs
  are all in {-1, 0, 1} counts accumulates (ACs), any other step multiply-accumulates (MACs);
  ``Dense`` counts every weight at every step (inputs and weights all ones). All three are
  averaged per sample. The recurrent weights see the previous step's spikes (none at step 0).
- **parameter count** and **footprint** (``static/parameter_count.py``, ``static/footprint.py``):
  the parameters' elements; the bytes of the parameters and buffers.

The counts come from :class:`WorkloadTally`, which sums what the network's forward reports
(``NetworkOutput.counts``, with ``with_counts``) and the input batches over an evaluation; everything
else here is a pure function of counts and weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def footprint_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def static_metrics(model: nn.Module) -> dict:
    return {"parameter_count": parameter_count(model), "footprint_bytes": footprint_bytes(model)}


def activation_sparsity(spikes: float, activations: float) -> float:
    """Zero activations over all activations (0 for none, as NeuroBench)."""
    return (activations - spikes) / activations if activations else 0.0


def row_nonzeros(weight: Tensor) -> Tensor:
    """Non-zero weights leaving each presynaptic neuron; ``weight`` is stored [n_in, n_out]."""
    return (weight != 0).sum(dim=1).to(torch.float64)


def effective_ops(presynaptic: Tensor, weight: Tensor) -> float:
    """Binarised operations: ``presynaptic[j]`` non-zero inputs from neuron j, each reaching the non-zero
    weights of row j."""
    return float((presynaptic.to(torch.float64) * row_nonzeros(weight).cpu()).sum())


def dense_ops(weight: Tensor, steps: int) -> int:
    """Every weight at every step, per sample."""
    return weight.shape[0] * weight.shape[1] * steps


def synaptic_operations(connections: list[tuple[Tensor, Tensor, Tensor, int]], samples: int) -> dict:
    """NeuroBench's SynapticOperations per sample. Each connection: (weight [n_in, n_out], non-zero
    inputs per presynaptic neuron on accumulate steps, the same on multiply-accumulate steps, steps)."""
    acs = sum(effective_ops(ac, w) for w, ac, _, _ in connections)
    macs = sum(effective_ops(mac, w) for w, _, mac, _ in connections)
    dense = sum(dense_ops(w, steps) for w, _, _, steps in connections)
    return {"synops_effective_acs": acs / samples, "synops_effective_macs": macs / samples, "synops_dense": dense}


class WorkloadTally:
    """Sums over an evaluation what the workload metrics need: input non-zeros per channel (split by
    whether a step's inputs are spikes), and per spiking layer the spikes per neuron over all steps
    and at the last step. ``available`` turns false for a forward that reports no counts."""

    def __init__(self):
        self.samples, self.steps, self.available = 0, 0, True
        self.input_ac: Tensor | None = None
        self.input_mac: Tensor | None = None
        self.spikes: list[Tensor] = []
        self.last: list[Tensor] = []

    def add(self, x: Tensor, out, n_inputs: int | None = None) -> None:
        """``x`` [B, T, channels] as the network got it (packed bits need ``n_inputs``); ``out`` its
        NetworkOutput, from a forward with_counts."""
        counts = getattr(out, "counts", None)
        if counts is None:
            self.available = False
            return
        if x.dtype == torch.uint8:
            # packed bits are binary, so every step is an accumulate step; unpacked a few steps at a time,
            # since a whole long batch unpacked would outweigh the training step it follows
            from .core.bits import unpack_spikes

            ac = sum(unpack_spikes(chunk, n_inputs, torch.uint8).sum(dim=(0, 1), dtype=torch.float64).cpu()
                     for chunk in x.detach().split(64, dim=1))
            mac = torch.zeros_like(ac)
        else:
            x = x.detach().to(torch.float64)
            nonzero = x != 0
            # per step, as NeuroBench's calls
            spiking = ((x == 0) | (x == 1) | (x == -1)).flatten(2).all(dim=2).all(dim=0)
            ac = nonzero[:, spiking].sum(dim=(0, 1)).cpu().to(torch.float64)
            mac = nonzero[:, ~spiking].sum(dim=(0, 1)).cpu().to(torch.float64)
        layer_counts = [c.detach().cpu().to(torch.float64) for c in counts]
        if self.input_ac is None:
            self.input_ac, self.input_mac = ac, mac
            self.spikes = [c[0] for c in layer_counts]
            self.last = [c[1] for c in layer_counts]
        else:
            self.input_ac, self.input_mac = self.input_ac + ac, self.input_mac + mac
            self.spikes = [s + c[0] for s, c in zip(self.spikes, layer_counts)]
            self.last = [s + c[1] for s, c in zip(self.last, layer_counts)]
        self.samples += x.shape[0]
        self.steps = x.shape[1]

    def flat(self) -> list[float]:
        parts = [self.input_ac, self.input_mac, *self.spikes, *self.last]
        return [float(self.samples), float(self.available)] + torch.cat(parts).tolist()

    def load_flat(self, values: list[float], processes: int) -> None:
        """Take back :meth:`flat` summed over ``processes`` (after an all-reduce)."""
        self.samples, self.available = int(values[0]), values[1] == processes
        sizes = [len(self.input_ac), len(self.input_mac), *map(len, self.spikes), *map(len, self.last)]
        parts = torch.tensor(values[2:], dtype=torch.float64).split(sizes)
        n = len(self.spikes)
        self.input_ac, self.input_mac = parts[0], parts[1]
        self.spikes, self.last = list(parts[2:2 + n]), list(parts[2 + n:])

    def metrics(self, weights: dict[str, Tensor], prefix: str = "") -> dict:
        """Activation sparsity (overall and per layer) and synaptic operations per sample, from the
        network's weights by state_dict key; empty when the forward reported no counts."""
        if not self.available or self.input_ac is None:
            return {}
        sizes = [s.numel() for s in self.spikes]
        per_layer = {f"activation_sparsity_layer{i}": activation_sparsity(float(s.sum()), self.samples * self.steps * n)
                     for i, (s, n) in enumerate(zip(self.spikes, sizes))}
        overall = activation_sparsity(float(sum(s.sum() for s in self.spikes)), self.samples * self.steps * sum(sizes))
        connections = [(weights["layers.0.fc.weight"], self.input_ac, self.input_mac, self.steps)]
        for i, spikes in enumerate(self.spikes):
            zeros = torch.zeros_like(spikes)
            if f"layers.{i}.rec.weight" in weights:  # sees step t-1's spikes: all but the last step's
                connections.append((weights[f"layers.{i}.rec.weight"], spikes - self.last[i], zeros, self.steps))
            following = weights[f"layers.{i + 1}.fc.weight" if i + 1 < len(self.spikes) else "readout.fc.weight"]
            connections.append((following, spikes, zeros, self.steps))
        values = {"activation_sparsity": overall, **per_layer, **synaptic_operations(connections, self.samples)}
        return {prefix + k: v for k, v in values.items()}
