"""Spiking layers: thin nn.Modules over the pure step functions in ``neurons``.

Layers are time-major: they map ``[T, B, n_in]`` to ``[T, B, n_out]``. The input
projection never depends on a layer's own state, so it runs as one matrix
product over all T steps before the time loop; only the recurrent product and
the element-wise update run per step.
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from . import neurons
from .neurons import ALIFParams, ALIFState, LIFParams, LIFState, LIParams, LIState

if TYPE_CHECKING:
    from .fused import FusedLoop

# The fused loop and the forward-mode AD steps register torch.library custom ops (torch >= 2.4), so
# they are imported where they run: the plain loop, which PopTorch's torch 2.0 traces, needs neither.


def _decay(n: int, beta: float, learn: bool, module: nn.Module, name: str) -> None:
    value = torch.full((n,), float(beta))
    if learn:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


class SparseMode(NamedTuple):
    """How a SpikeLinear multiplies spikes: densely, or as a gather-add over spike lists."""

    enabled: bool | str = False  # True, False, or "auto": sparse where ops.prefer_sparse expects it to win
    capacity: float = 0.25  # list length K as a fraction of the presynaptic neurons
    overflow: str = "error"  # or "drop_and_count"
    dense_grad: bool = True  # exact gradient for every surrogate; False: only at spiking neurons
    backend: str | None = None  # spike-matmul backend (ops.registry); None: the default for the tensors' device


class SpikeLinear(nn.Module):
    """``z @ weight + bias`` with the weight stored [n_in, n_out], as spike ops want it.

    With sparse mode on, z (0/1 spikes) is compacted to fixed-capacity spike
    lists and multiplied by gathering weight rows (``ipu_snn.ops``); the
    parameters are the same either way, so a checkpoint and an initialisation
    serve both paths. ``dropped`` accumulates what overflow left out.
    """

    def __init__(self, n_in: int, n_out: int, *, std: float, bias: bool = True, sparse: SparseMode = SparseMode()):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * std)
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.sparse = sparse
        self.capacity = max(1, math.ceil(sparse.capacity * n_in))
        self.dropped: Tensor | None = None

    def uses_sparse(self, z: Tensor) -> bool:
        if self.sparse.enabled != "auto":
            return bool(self.sparse.enabled)
        from .ops import prefer_sparse

        return prefer_sparse(z.device, z.numel() // z.shape[-1], self.weight.shape[0], self.capacity)

    def forward(self, z: Tensor) -> Tensor:
        if not self.uses_sparse(z):
            return torch.nn.functional.linear(z, self.weight.t(), self.bias)
        from .ops import sparse_linear  # builds the C++ extension on first use
        from .ops.spikes import SpikeOverflowError

        try:
            out, spikes = sparse_linear(z, self.weight, self.capacity, overflow=self.sparse.overflow,
                                        dense_grad=self.sparse.dense_grad, backend=self.sparse.backend)
        except SpikeOverflowError as exc:
            raise type(exc)(f"{exc}\nIn the config: raise model.sparse_capacity (now {self.sparse.capacity}, "
                            f"K={self.capacity} of {self.weight.shape[0]} neurons) or set "
                            "model.sparse_overflow=drop_and_count") from None
        if spikes.dropped is not None:
            dropped = spikes.total_dropped()
            self.dropped = dropped if self.dropped is None else self.dropped + dropped
        return out if self.bias is None else out + self.bias


def _input_weight(n_in: int, n_out: int, gain: float, sparse: SparseMode) -> SpikeLinear:
    # Spiking inputs are sparse and non-negative: a plain fan-in init leaves the
    # first layer silent. Scaling by the expected leak integration (gain) makes
    # neurons reach threshold at the start of training.
    return SpikeLinear(n_in, n_out, std=gain / math.sqrt(n_in), sparse=sparse)


def _recurrent_weight(n: int, sparse: SparseMode) -> SpikeLinear:
    return SpikeLinear(n, n, std=1.0 / math.sqrt(n), bias=False, sparse=sparse)


class SpikingLayer(nn.Module, abc.ABC):
    """A layer run by an explicit loop over time: ``project`` once, then ``step`` T times."""

    n_out: int

    def project(self, x: Tensor) -> Tensor:
        return self.fc(x)

    @abc.abstractmethod
    def initial_state(self, batch: int, like: Tensor) -> tuple:
        """The state before the first step (zeros), on ``like``'s device and dtype."""

    @abc.abstractmethod
    def step(self, state: tuple, current: Tensor) -> tuple[tuple, Tensor]:
        """One time step: the new state and this step's output."""

    def forward(self, x: Tensor) -> Tensor:
        currents = self.project(x)
        state = self.initial_state(x.shape[1], currents)
        outputs = []
        for current in currents.unbind(0):
            state, out = self.step(state, current)
            outputs.append(out)
        return torch.stack(outputs)


class _SpikingNeurons(SpikingLayer):
    """What LIF and ALIF layers share: input weights, optional recurrent weights, a leak.

    The layer state is ``(neuron state, previous spikes)``; the previous spikes
    feed the recurrent weights and are what the next layer receives.
    """

    def __init__(self, n_in: int, n_out: int, *, beta: float, threshold: float, reset: str,
                 detach_reset: bool, learn_decay: bool, spike: neurons.Surrogate, recurrent: bool,
                 input_sparse: SparseMode, sparse: SparseMode):
        super().__init__()
        self.n_out = n_out
        self.fc = _input_weight(n_in, n_out, gain=2.0 * threshold, sparse=input_sparse)
        self.rec = _recurrent_weight(n_out, sparse) if recurrent else None
        _decay(n_out, beta, learn_decay, self, "beta")
        self.threshold, self.reset, self.detach_reset, self.spike = threshold, reset, detach_reset, spike
        # step by step (the BPTT engine): keep each step's derivatives, not its inputs (bptt.fwdad_neurons);
        # a FusedLoop names their dtype, None runs the plain step functions
        self.forward_ad: FusedLoop | None = None

    @abc.abstractmethod
    def neuron_step(self, neuron_state: tuple, current: Tensor) -> tuple[tuple, Tensor]:
        """The pure step function of this neuron type, with this layer's parameters."""

    def step(self, state, current):
        neuron_state, z_prev = state
        if self.rec is not None:
            current = current + self.rec(z_prev)
        neuron_state, z = self.neuron_step(neuron_state, current)
        return (neuron_state, z), z

    def fused_decays(self) -> tuple[Tensor, Tensor | None]:
        """(beta, rho or None) as the fused kernels take them, clamped like the step functions."""
        return self.beta.clamp(0.0, 1.0), None

    def forward_fused(self, x: Tensor, loop: FusedLoop, spikes_in: bool) -> Tensor:
        """``forward`` through the fused time loop (ipu_snn.fused): same result and gradients,
        a few bytes per neuron-step kept for backward. ``spikes_in``: x is 0/1, keep it as bits."""
        from .fused import FusedSpec, binary_linear, spiking_scan

        if spikes_in:
            currents = binary_linear(x, self.fc.weight, self.fc.bias)
        else:
            # x is the [B, T, in] input batch seen time-major: projecting it batch-major lets the product
            # keep a view of the caller's batch for backward instead of a time-major copy of it
            currents = self.fc(x.transpose(0, 1)).transpose(0, 1).contiguous()
        beta, rho = self.fused_decays()
        spec = FusedSpec(rho is not None, float(self.threshold), float(getattr(self, "adapt_strength", 0.0)),
                         self.reset, self.spike.name, self.spike.scale)
        return spiking_scan(currents, None if self.rec is None else self.rec.weight, beta, rho, spec, loop)


class LIF(_SpikingNeurons):
    """Leaky integrate-and-fire layer, feed-forward unless ``recurrent``."""

    def __init__(self, n_in: int, n_out: int, *, beta: float = 0.9, threshold: float = 1.0,
                 reset: str = "subtract", detach_reset: bool = True, learn_decay: bool = False,
                 spike: neurons.Surrogate = neurons.Surrogate(), recurrent: bool = False,
                 input_sparse: SparseMode = SparseMode(), sparse: SparseMode = SparseMode()):
        super().__init__(n_in, n_out, beta=beta, threshold=threshold, reset=reset, detach_reset=detach_reset,
                         learn_decay=learn_decay, spike=spike, recurrent=recurrent, input_sparse=input_sparse,
                         sparse=sparse)

    def initial_state(self, batch: int, like: Tensor) -> tuple[LIFState, Tensor]:
        zeros = like.new_zeros(batch, self.n_out)
        return LIFState(zeros), zeros

    def neuron_step(self, neuron_state, current):
        params = LIFParams(self.beta.clamp(0.0, 1.0), self.threshold, self.reset, self.detach_reset, self.spike)
        if self.forward_ad is not None:
            from .bptt.fwdad_neurons import lif_step_fwdad

            return lif_step_fwdad(params, neuron_state, current, saved_dtype=self.forward_ad.saved_dtype)
        return neurons.lif_step(params, neuron_state, current)


class RecurrentLIF(LIF):
    """LIF layer with all-to-all recurrent weights from its own previous spikes."""

    def __init__(self, n_in: int, n_out: int, **kwargs):
        super().__init__(n_in, n_out, recurrent=True, **kwargs)


class ALIF(_SpikingNeurons):
    """Adaptive-threshold LIF layer (Bellec et al. 2018), recurrent by default."""

    def __init__(self, n_in: int, n_out: int, *, beta: float = 0.9, rho: float = 0.98,
                 adapt_strength: float = 1.8, threshold: float = 1.0, reset: str = "subtract",
                 detach_reset: bool = True, learn_decay: bool = False,
                 spike: neurons.Surrogate = neurons.Surrogate(), recurrent: bool = True,
                 input_sparse: SparseMode = SparseMode(), sparse: SparseMode = SparseMode()):
        super().__init__(n_in, n_out, beta=beta, threshold=threshold, reset=reset, detach_reset=detach_reset,
                         learn_decay=learn_decay, spike=spike, recurrent=recurrent, input_sparse=input_sparse,
                         sparse=sparse)
        _decay(n_out, rho, learn_decay, self, "rho")
        self.adapt_strength = adapt_strength

    def initial_state(self, batch: int, like: Tensor) -> tuple[ALIFState, Tensor]:
        zeros = like.new_zeros(batch, self.n_out)
        return ALIFState(zeros, zeros), zeros

    def fused_decays(self):
        return self.beta.clamp(0.0, 1.0), self.rho.clamp(0.0, 1.0)

    def neuron_step(self, neuron_state, current):
        params = ALIFParams(self.beta.clamp(0.0, 1.0), self.rho.clamp(0.0, 1.0), self.adapt_strength,
                            self.threshold, self.reset, self.detach_reset, self.spike)
        if self.forward_ad is not None:
            from .bptt.fwdad_neurons import alif_step_fwdad

            return alif_step_fwdad(params, neuron_state, current, saved_dtype=self.forward_ad.saved_dtype)
        return neurons.alif_step(params, neuron_state, current)


class LIReadout(SpikingLayer):
    """Leaky-integrator readout; its membrane trace over time is the output."""

    def __init__(self, n_in: int, n_out: int, *, beta: float = 0.95, learn_decay: bool = False,
                 input_sparse: SparseMode = SparseMode()):
        super().__init__()
        self.n_out = n_out
        self.fc = SpikeLinear(n_in, n_out, std=1.0 / math.sqrt(3 * n_in), sparse=input_sparse)
        _decay(n_out, beta, learn_decay, self, "beta")

    def initial_state(self, batch: int, like: Tensor) -> LIState:
        return LIState(like.new_zeros(batch, self.n_out))

    def step(self, state, current):
        return neurons.li_step(LIParams(self.beta.clamp(0.0, 1.0)), state, current)

    def forward_fused(self, z: Tensor) -> Tensor:
        """``forward`` for 0/1 spikes z [T, B, n_in], keeping z as bits and the trace as a scan."""
        from .fused import binary_linear, leaky_integrate

        return leaky_integrate(binary_linear(z, self.fc.weight, self.fc.bias), self.beta.clamp(0.0, 1.0))
