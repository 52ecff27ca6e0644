"""CUBA: the current-based LIF neuron, a synaptic current ``i`` that decays and a membrane ``v`` it charges
(NIR's CubaLIF; snnTorch's ``Synaptic``).

Per step, elementwise over [B, N], with a second decay ``alpha`` [N] (the synaptic current's)::

    i = alpha * i_prev + current;  v = beta * v_prev + i
    z = H(v - threshold);  v_new = v - z * threshold  (or v * (1 - z));  i_new = i
"""

from __future__ import annotations

from torch import Tensor

from ..model import Decay, NeuronModel, NirMapping
from ..surrogates import SpikeFn, spike
from .lif import fire


def step(spec, beta: Tensor, alpha: Tensor, v_prev: Tensor, i_prev: Tensor, current: Tensor,
         spike_fn: SpikeFn = spike) -> tuple[Tensor, Tensor, Tensor]:
    """One CUBA step through autograd: ``(v_new, i_new, z)``."""
    i = alpha * i_prev + current
    v_new, z = fire(spec, beta * v_prev + i, spec.threshold, spike_fn)
    return v_new, i, z


NIR = NirMapping(None, refusal="writing it as NIR's CubaLIF is not implemented yet")

CUBA = NeuronModel(name="cuba", kernel="cuba", kernel_code=2, state=("v", "i"),
                   decays=(Decay("alpha", "tau_syn", 0.8),), params=(), recurrent=None, step=step, nir=NIR,
                   doc="current-based LIF (a synaptic current and a membrane)", recurrent_default=False,
                   current_into=1)
