"""LIF: the leaky integrate-and-fire neuron, feed-forward (its recurrent twin is `rlif`).

Per step, elementwise over [B, N] (`ipu_snn.neuron.spec` states the whole contract)::

    v = beta * v_prev + current;  z = H(v - threshold);  v_new = v - z * threshold  (or v * (1 - z))
"""

from __future__ import annotations

from torch import Tensor

from ..model import NeuronModel, NirMapping
from ..surrogates import SpikeFn, spike


def fire(spec, v: Tensor, theta, spike_fn: SpikeFn) -> tuple[Tensor, Tensor]:
    """Fire at ``theta`` and reset: ``(v_new, z)``; the reset's z is detached when ``spec.detach_reset``."""
    z = spike_fn(v - theta, spec.surrogate, spec.scale)
    zr = z.detach() if spec.detach_reset else z
    return (v - zr * theta if spec.reset == "subtract" else v * (1.0 - zr)), z


def step(spec, beta: Tensor, rho: None, v_prev: Tensor, a_prev: None, current: Tensor,
         spike_fn: SpikeFn = spike) -> tuple[Tensor, None, Tensor]:
    """One LIF step through autograd: ``(v_new, None, z)``."""
    v_new, z = fire(spec, beta * v_prev + current, spec.threshold, spike_fn)
    return v_new, None, z


NIR = NirMapping("LIF", (("tau", "beta"), ("r", "beta"), ("v_threshold", "threshold"), ("v_leak", "0"),
                         ("v_reset", "0")))

LIF = NeuronModel(name="lif", kernel="lif", kernel_code=0, state=("v",), decays=(), params=(), recurrent=False,
                  step=step, nir=NIR, doc="leaky integrate-and-fire, feed-forward")
