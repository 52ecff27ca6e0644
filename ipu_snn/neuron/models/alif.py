"""ALIF: the adaptive LIF neuron of Bellec et al. 2018, whose threshold rises with each spike.

Per step, elementwise over [B, N], with a second decay ``rho`` [N]::

    v = beta * v_prev + current;  a = rho * a_prev;  theta = threshold + adapt_strength * a
    z = H(v - theta);  v_new = v - z * theta  (or v * (1 - z));  a_new = a + z
"""

from __future__ import annotations

from torch import Tensor

from ..model import Decay, NeuronModel, NirMapping, Param
from ..surrogates import SpikeFn, spike
from .lif import fire


def step(spec, beta: Tensor, rho: Tensor, v_prev: Tensor, a_prev: Tensor, current: Tensor,
         spike_fn: SpikeFn = spike) -> tuple[Tensor, Tensor, Tensor]:
    """One ALIF step through autograd: ``(v_new, a_new, z)``."""
    a = rho * a_prev
    v_new, z = fire(spec, beta * v_prev + current, spec.threshold + spec.adapt_strength * a, spike_fn)
    return v_new, a + z, z


NIR = NirMapping(None, refusal="NIR has no adaptive-threshold neuron, and no composition of NIR nodes reproduces a "
                               "threshold that rises with each spike and a reset by that moving threshold")

ALIF = NeuronModel(name="alif", kernel="alif", kernel_code=1, state=("v", "a"),
                   decays=(Decay("rho", "tau_adapt", 0.98),), params=(Param("adapt_strength", 1.8),),
                   recurrent=None, step=step, nir=NIR, doc="adaptive LIF (Bellec et al. 2018)")
