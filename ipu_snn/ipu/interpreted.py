"""``device: ipu-emulator``: the spiking layers and the leaky-integrator readout run as the IPU network
op's Poplar graph on the host interpreter (`ipu_snn.ipu.interpreter`); the readout's reduction over time,
the loss and the optimizer stay in torch, as they stay in PopTorch around the op on an IPU."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ipu_snn.errors import ConfigError
from ipu_snn.ipu.custom_ops import network_params, network_spec
from ipu_snn.ipu.interpreter import MK2_TILES, HostNetwork, network_trace
from ipu_snn.network import NetworkOutput, SpikingNetwork, _COMBINE, _WINDOW_REDUCE
from ipu_snn.taps import Taps


def _refuse(net: SpikingNetwork) -> None:
    for i, layer in enumerate(net.layers):
        where = f"model.layers.{i}"
        if layer.spec.neuron.n_state > 1 and isinstance(layer.beta, torch.nn.Parameter):
            raise ConfigError(f"{where}.learn_decay: the network op does not learn an {layer.spec.model.upper()} "
                              "layer's decays yet (the second state's decay has no gradient there); set "
                              "learn_decay: false")
        if not layer.spec.detach_reset:
            raise ConfigError(f"{where}.detach_reset: the network op's neuron vertices detach the reset")
        if layer.settings.near_min_d is not None:
            raise ConfigError("model.sparse_grad_min_derivative: the network op lists spikes only")
        for policy, n_in in ((layer.policies.input, layer.fc.weight.shape[0]),
                             (layer.policies.recurrent, layer.n_out)):
            if policy is None or policy.mode == "dense":
                continue
            if policy.listed_grad:
                raise ConfigError("model.sparse_grad: spikes; the network op computes the exact input gradient, "
                                  "listed where the surrogate is bounded (set sparse_grad: auto or dense on device "
                                  "ipu-emulator)")
            if policy.capacity < n_in:
                raise ConfigError(f"model.sparse_capacity: the network op lists every spike of {where}'s "
                                  f"{n_in} inputs (capacity {policy.capacity}); set sparse_capacity: 1.0")


class InterpretedNetwork(SpikingNetwork):
    """A `SpikingNetwork` whose spiking layers run in the network op's graph on the host interpreter.

    Same parameters and state dict; `adopt` turns a built network into one."""

    tiles = MK2_TILES  # the emulated IPU's tiles (a test may take fewer, to put several neurons on a tile)

    def _host(self, batch: int, steps: int) -> HostNetwork:
        key = (batch, steps)
        cache = self.__dict__.setdefault("_hosts", {})
        if key not in cache:
            spec = network_spec(self, steps)  # the op's spec, as PopART's op would take it
            cache.clear()  # one shape at a time: the graph holds the micro-batch's tapes
            cache[key] = HostNetwork.from_actions(batch, steps, self.n_inputs, spec.layers, spec.readout,
                                                  spec.samples_per_pass, spec.actions, spec.tape_slots,
                                                  spec.local_slots, spec.offchip_slots, tiles=self.tiles)
        return cache[key]

    def forward(self, x: Tensor, mark=None, with_counts: bool = False, record=(), taps: Taps = Taps()
                ) -> NetworkOutput:
        if record or taps != Taps():
            raise ConfigError("device ipu-emulator: the network op returns no per-step spikes, so it runs "
                              "training.loss readout_ce without rate_regularization, and no record= or taps")
        if x.dim() != 3 or x.dtype != torch.uint8:
            raise ConfigError("device ipu-emulator takes binary inputs as packed bits (data.binary: true)")
        batch, steps = x.shape[0], x.shape[1]
        host = self._host(batch, steps)
        trace = network_trace(host, x.cpu(), network_params(self))
        dropped = None  # the op adds every spike: nothing is dropped
        logits = _COMBINE[self.reduce](_WINDOW_REDUCE[self.reduce](trace)[None], steps)
        sizes = [layer.n_out for layer in self.layers]
        spikes = [torch.from_numpy(host.read(f"spike_count.{i}", (batch, n))) for i, n in enumerate(sizes)]
        rates = torch.stack([s.sum(1) / (steps * n) for s, n in zip(spikes, sizes)], 1).to(logits.dtype)
        lost = logits.new_zeros(batch) if dropped is None else dropped.to(logits.dtype)
        counts = None
        if with_counts:
            last = [torch.from_numpy(host.read(f"state_z.{i}", (batch, n))) for i, n in enumerate(sizes)]
            counts = [torch.stack([s.sum(0), l.sum(0)]).to(logits.dtype) for s, l in zip(spikes, last)]
        return NetworkOutput(logits, rates, lost, counts)


def adopt(net: SpikingNetwork) -> InterpretedNetwork:
    """Run ``net``'s spiking layers on the host interpreter from now on (the same module, its class changed)."""
    _refuse(net)
    net.__class__ = InterpretedNetwork
    return net


__all__ = ["InterpretedNetwork", "adopt"]
