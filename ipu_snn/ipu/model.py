"""The network as PopTorch traces it: one PopART network op for every spiking layer and the readout
over all T steps, then the readout's reduction over time, the loss and the statistics in PopTorch.

The spiking layers run inside the op (``custom_ops/poplar/network_op.cpp`` over
``network_graph.cpp``): each layer's neurons on their own tiles, the steps in a
``program::Repeat``, the BPTT schedule of the network's time loop as the op's action
list (checkpoints on the tiles or in streaming memory, as the schedule says), and its
grad op returning one gradient per weight and bias. PopTorch sees one custom op per
call whatever T (`ipu_snn.ipu.custom_ops.network`); PopART differentiates the rest
(the reduction over time and the loss) itself.

What the op cannot run is refused before anything is traced (`check_network_op`).
The modules return sums per sample so that metrics add up over micro-batches,
replicas and device iterations, whatever PopTorch's output mode concatenates.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..errors import ConfigError
from ..executor import TimeLoop
from ..network import _COMBINE, _WINDOW_REDUCE, SpikingNetwork, build_network
from . import custom_ops
from .custom_ops import NetworkOpSpec, network_params, network_spec
from .interpreted import _refuse


def check_network_op(cfg: Config, network: SpikingNetwork) -> None:
    """Refuse, naming the field, what the network op cannot run: learned decays of ALIF and cuba layers, an
    attached reset, spikes listed other than exactly, float16 saved derivatives, float inputs."""
    _refuse(network)
    if cfg.model.fused_saved_dtype != "float32":
        raise ConfigError(f"model.fused_saved_dtype: {cfg.model.fused_saved_dtype}; the IPU network op keeps its "
                          "surrogate derivatives in float32 (set fused_saved_dtype: float32)")
    if not cfg.data.binary:
        raise ConfigError("data.binary: false; the IPU network op takes the inputs as packed bits "
                          "(set data.binary: true)")


def build_traced(cfg: Config, n_inputs: int, n_classes: int, dt: float, loop: TimeLoop = TimeLoop()
                 ) -> SpikingNetwork:
    """The config's network (same parameters and values as on the CPU) for the network op, which runs its
    spiking layers and readout; checked first. The op library is loaded here, so that a missing build
    stops the run before anything is traced."""
    network = build_network(cfg.model, n_inputs, n_classes, dt, loop=loop, binary_inputs=cfg.data.binary,
                            device=cfg.device, mode="autograd")
    check_network_op(cfg, network)
    custom_ops.load_op_library()
    return network


def per_sample_stats(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy and correctness (0/1) of each sample."""
    return F.cross_entropy(logits, y, reduction="none"), (logits.argmax(1) == y).to(logits.dtype)


class OpNetwork(nn.Module):
    """Logits [B, classes] and each spiking layer's rate [B, layers] of packed input bits uint8
    [B, T, ceil(n_in / 8)]: the network op (its output is the readout's membrane trace), then the
    readout's reduction over time. ``samples_per_pass``: the op's samples per input-gradient pass (0: the
    whole micro-batch; the trainer passes the plan's)."""

    def __init__(self, network: SpikingNetwork, poptorch: ModuleType, samples_per_pass: int = 0):
        super().__init__()
        self.network = network
        self._poptorch = poptorch
        self.samples_per_pass = samples_per_pass
        self._specs: dict[int, NetworkOpSpec] = {}

    def spec(self, steps: int) -> NetworkOpSpec:
        if steps not in self._specs:
            self._specs[steps] = network_spec(self.network, steps, self.samples_per_pass)
        return self._specs[steps]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.dtype != torch.uint8:
            raise ConfigError("the IPU network op takes binary inputs as packed bits uint8 [B, T, ceil(n / 8)] "
                              "(data.binary: true)")
        net = self.network
        batch, steps = x.shape[0], x.shape[1]
        trace, counts = custom_ops.network(self._poptorch, x, network_params(net), self.spec(steps))
        logits = _COMBINE[net.reduce](_WINDOW_REDUCE[net.reduce](trace)[None], steps)
        rates = torch.stack([c.sum(1) / (steps * l.n_out) for c, l in zip(counts, net.layers)], 1)
        return logits, rates.to(logits.dtype)


class TrainingStep(nn.Module):
    """Forward of one micro-batch for ``poptorch.trainingModel``.

    Returns the loss PopART differentiates (the micro-batch mean, so that mean reduction over
    accumulation and replicas gives the global-batch mean) and per-sample statistics
    [B, 4 + layers]: loss, correct, 1, spikes dropped (0: the op lists every spike), each layer's rate.
    """

    def __init__(self, network: SpikingNetwork, poptorch: ModuleType, samples_per_pass: int = 0):
        super().__init__()
        self.model = OpNetwork(network, poptorch, samples_per_pass)
        self._poptorch = poptorch

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits, rates = self.model(x)
        losses, correct = per_sample_stats(logits, y)
        loss = self._poptorch.identity_loss(losses, reduction="mean")
        stats = torch.cat([torch.stack([losses, correct, torch.ones_like(correct), torch.zeros_like(correct)], 1),
                           rates], 1)
        return loss, stats.detach()


class Evaluation(nn.Module):
    """Forward of one batch for ``poptorch.inferenceModel``: per-sample [loss, correct, 1, dropped
    spikes (0)], zero for padding samples (``valid`` = 0), so that a data set needs no partial last batch."""

    def __init__(self, network: SpikingNetwork, poptorch: ModuleType, samples_per_pass: int = 0):
        super().__init__()
        self.model = OpNetwork(network, poptorch, samples_per_pass)

    def forward(self, x: Tensor, y: Tensor, valid: Tensor) -> Tensor:
        logits, _ = self.model(x)
        losses, correct = per_sample_stats(logits, y)
        valid = valid.to(logits.dtype)
        return torch.stack([losses * valid, correct * valid, valid, torch.zeros_like(valid)], 1)
