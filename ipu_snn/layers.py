"""Spiking layers: their parameters, and how each runs a window of time steps.

A layer maps a window of inputs, time-major [L, B, n_in], to a window of spikes
[L, B, n_out], carrying its state from one window to the next. How it runs is
the network's *step mode*, fixed when the network is built (`build_network`):

* ``fused``: the input product over the whole window, then the fused window loop
  (`ipu_snn.neuron.window`), which keeps spikes as bits and the surrogate
  derivatives, a few bytes per neuron-step;
* ``autograd``: a plain loop over the window's steps through the autograd step
  (`ipu_snn.neuron.reference.step`): the ground truth, and the only mode with an
  attached reset (``detach_reset: false``).

Products between populations (input to layer, recurrent, layer to readout) go
through a `Products` function, which picks dense or sparse per product as its
`SparsePolicy` says (`ipu_snn.ops.product`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .core.bits import pack_spikes
from .neuron.reference import li_step, step
from .neuron.spec import NeuronSpec
from .neuron.surrogates import spike
from .neuron.window import LayerState, SpikeTrain, WindowSettings, leaky_integrate, spiking_window
from .dropout import rescale
from .ops.policy import SparsePolicy

StepMode = Literal["autograd", "fused"]
STEP_MODES = ("autograd", "fused")

#: What a population receives: another layer's spikes, or dense input frames [L, B, n_in]
#: (spike counts, or any float input; binary inputs arrive as a SpikeTrain without z).
Inputs = Union[SpikeTrain, Tensor]


class Synapses(nn.Module):
    """A weight [n_in, n_out] (stored [from, to], as spike products want it) and an optional bias."""

    def __init__(self, n_in: int, n_out: int, *, std: float, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * std)
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None


@dataclass(frozen=True)
class Site:
    """Where a product sits: the population it reads (``input``, ``layer0``, ...) and the one it feeds
    (``layer0``, ..., ``readout``), named as the IPU tile plan names them; ``text`` says it in config terms."""

    source: str
    target: str
    text: str


#: ``products(inputs, synapses, policy, site) -> (out [..., n_out], spikes dropped per sample [B] or None)``
Products = Callable[[Inputs, Synapses, SparsePolicy, Site], tuple[Tensor, Union[Tensor, None]]]


def torch_products(inputs: Inputs, synapses: Synapses, policy: SparsePolicy, site: Site):
    """Products of the fused and autograd modes: dense or sparse over packed bits, as ``policy`` says."""
    if isinstance(inputs, Tensor):
        if policy.mode == "dense":
            return F.linear(inputs, synapses.weight.t(), synapses.bias), None
        inputs = SpikeTrain(inputs, pack_spikes(inputs.detach()), None)  # binary frames given as floats
    from .ops.product import spike_product  # custom ops (torch >= 2.4): not on the traced path

    out, dropped = spike_product(inputs.bits, synapses.weight, synapses.bias, policy, z=inputs.z,
                                 near=inputs.near, where=site.text)
    # per sample: the rows of a window are (step, sample) pairs
    return out, dropped.reshape(-1, dropped.shape[-1]).sum(0, dtype=torch.int64)


def _decay(module: nn.Module, name: str, n: int, value: float, learn: bool) -> None:
    tensor = torch.full((n,), float(value))
    if learn:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


def _threshold(module: nn.Module, n: int, value: float, learn: bool) -> None:
    """A learned per-neuron threshold [N] from the config's ``threshold`` (``learn_threshold``), else none."""
    module.threshold = nn.Parameter(torch.full((n,), float(value))) if learn else None


def _add(total: Tensor | None, more: Tensor | None) -> Tensor | None:
    if more is None:
        return total
    return more if total is None else total + more


@dataclass(frozen=True)
class LayerPolicies:
    """How a layer's two products run: its input product and (if recurrent) its recurrent one."""

    input: SparsePolicy = SparsePolicy()
    recurrent: SparsePolicy | None = None


class SpikingLayer(nn.Module):
    """A spiking layer of the model ``spec.model`` (`ipu_snn.neuron.models`), feed-forward or with
    all-to-all recurrent weights. ``decays``: the model's per-step decays after beta, by name
    (``{"rho": ...}`` for alif)."""

    dropout = 0.0  # on its output spikes, in training (`ipu_snn.dropout`; set by build_network)
    input_scale = 1.0  # its input currents' scale in training, where its inputs had dropout

    def __init__(self, n_in: int, n_out: int, spec: NeuronSpec, *, beta: float, decays: dict[str, float] | None = None,
                 learn_decay: bool = False, learn_threshold: bool = False,
                 policies: LayerPolicies = LayerPolicies(), mode: StepMode = "fused",
                 saved_dtype: torch.dtype | None = None, near_min_d: float | None = None,
                 kernels: str | None = None, products: Products = torch_products, index: int = 0,
                 source: str = "input"):
        super().__init__()
        if mode not in STEP_MODES:
            raise ValueError(f"unknown step mode {mode!r}; known: {STEP_MODES}")
        if mode == "fused" and not spec.detach_reset:
            raise ValueError("the fused step mode implements a detached reset only (build_network checks this)")
        decays, names = decays or {}, tuple(d.name for d in spec.neuron.decays)
        if tuple(decays) != names:
            raise ValueError(f"a {spec.model} layer takes the decays {names or 'beta alone'}, got {tuple(decays)}")
        self.n_out, self.spec, self.mode = n_out, spec, mode
        # Spiking inputs are sparse and non-negative: a plain fan-in init leaves the first layer silent.
        # Scaling by the threshold (twice it) makes neurons reach threshold at the start of training.
        self.fc = Synapses(n_in, n_out, std=2.0 * spec.threshold / math.sqrt(n_in))
        recurrent = policies.recurrent is not None
        self.rec = Synapses(n_out, n_out, std=1.0 / math.sqrt(n_out), bias=False) if recurrent else None
        _decay(self, "beta", n_out, beta, learn_decay)
        for name, value in decays.items():
            _decay(self, name, n_out, value, learn_decay)
        _threshold(self, n_out, spec.threshold, learn_threshold)
        self.policies, self.products = policies, products
        name, field = f"layer{index}", f"model.layers.{index}"
        self.input_site = Site(source, name, f"{field}'s input")
        self.recurrent_site = Site(name, name, f"{field}'s recurrent spikes")
        self.settings = WindowSettings(spec, saved_dtype, policies.recurrent, near_min_d, kernels, field)

    def decays(self) -> tuple[Tensor, Tensor | None]:
        """(beta, the model's second decay or None: rho for alif), clamped to [0, 1] as every step takes them."""
        extra = [getattr(self, d.name).clamp(0.0, 1.0) for d in self.spec.neuron.decays]
        return self.beta.clamp(0.0, 1.0), extra[0] if extra else None

    def initial_state(self, batch: int, like: Tensor) -> LayerState:
        zeros = like.new_zeros(batch, self.n_out)
        near = zeros.new_zeros(batch, (self.n_out + 7) // 8, dtype=torch.uint8) \
            if self.settings.near_min_d is not None else None
        return LayerState(zeros, zeros if self.spec.neuron.n_state > 1 else None, zeros, near)

    def forward(self, x: Inputs) -> Tensor:
        """The spikes [T, B, n_out] of a whole sequence [T, B, n_in] from the zero state, as one window."""
        like = x if isinstance(x, Tensor) else x.z if x.z is not None else self.fc.weight
        return self.window(self.initial_state(x.shape[1] if isinstance(x, Tensor) else x.bits.shape[1], like), x)[0].z

    def window(self, state: LayerState, inputs: Inputs) -> tuple[SpikeTrain, LayerState, Tensor | None]:
        """Spikes of the window, the state after it, and the spikes dropped per sample (sparse overflow)."""
        currents, dropped = self.products(inputs, self.fc, self.policies.input, self.input_site)
        if self.training and self.input_scale != 1.0:
            currents = rescale(currents, self.fc.bias, self.input_scale)
        beta, rho = self.decays()
        if self.mode == "fused":
            w_rec = self.rec.weight if self.rec is not None else None
            train, state, lost = spiking_window(currents, state, w_rec, beta, rho, self.settings, self.threshold)
            return train, state, _add(dropped, lost if self.policies.recurrent is not None else None)
        spike_fn = spike
        v, a, z_prev = state.v, state.a, state.z
        outputs = []
        for current in currents.unbind(0):
            if self.rec is not None:
                prev = SpikeTrain(z_prev, pack_spikes(z_prev), None)
                rec, lost = self.products(prev, self.rec, self.policies.recurrent, self.recurrent_site)
                current, dropped = current + rec, _add(dropped, lost)
            v, a, z_prev = step(self.spec, beta, rho, v, a, current, spike_fn, self.threshold)
            outputs.append(z_prev)
        z = torch.stack(outputs)
        bits = pack_spikes(z.detach()) if self.mode == "autograd" else None
        return SpikeTrain(z, bits, None), LayerState(v, a, z_prev, None), dropped


class LIReadout(nn.Module):
    """Leaky-integrator readout; its membrane trace over time is the output."""

    input_scale = 1.0  # its input currents' scale in training, where its inputs had dropout

    def __init__(self, n_in: int, n_out: int, *, beta: float = 0.95, learn_decay: bool = False,
                 policy: SparsePolicy = SparsePolicy(), mode: StepMode = "fused", kernels: str | None = None,
                 products: Products = torch_products, source: str = "layer0"):
        super().__init__()
        self.n_out, self.mode, self.policy, self.products = n_out, mode, policy, products
        self.kernels = kernels
        self.site = Site(source, "readout", "the readout's input")
        self.fc = Synapses(n_in, n_out, std=1.0 / math.sqrt(3 * n_in))
        _decay(self, "beta", n_out, beta, learn_decay)

    def initial_state(self, batch: int, like: Tensor) -> Tensor:
        return like.new_zeros(batch, self.n_out)

    def forward(self, x: Inputs) -> Tensor:
        """The membrane trace [T, B, n_out] of a whole sequence from v = 0, as one window."""
        batch = x.shape[1] if isinstance(x, Tensor) else x.bits.shape[1]
        return self.window(self.initial_state(batch, self.fc.weight), x)[0]

    def window(self, v: Tensor, inputs: Inputs) -> tuple[Tensor, Tensor, Tensor | None]:
        """(the membrane trace [L, B, n_out], the last membrane, spikes dropped per sample)."""
        currents, dropped = self.products(inputs, self.fc, self.policy, self.site)
        if self.training and self.input_scale != 1.0:
            currents = rescale(currents, self.fc.bias, self.input_scale)
        beta = self.beta.clamp(0.0, 1.0)
        if self.mode == "fused":
            trace, v = leaky_integrate(currents, beta, v, self.kernels)
            return trace, v, dropped
        outputs = []
        for current in currents.unbind(0):
            v = li_step(beta, v, current)
            outputs.append(v)
        return torch.stack(outputs), v, dropped
