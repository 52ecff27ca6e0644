"""The neuron update's one specification: what a LIF or ALIF step computes, and its backward.

Each model's own step is its file in `ipu_snn.neuron.models`; this is the contract they and the
kernels share.

Every implementation (the reference steps in `reference`, the C++ core in
custom_ops/include/neuron_core.h shared by the CPU extension and the Poplar
vertices, the Triton kernels, the tile emulator) computes exactly this; the
tests hold each of them to autograd through `reference.step` in float64.

One step of one layer, elementwise over [B, N], with per-neuron decays
``beta[N]`` and, for ALIF, ``rho[N]``::

    v     = beta * v_prev + current           leak and integrate
    a     = rho * a_prev                      (ALIF; LIF has a = 0)
    theta = threshold + adapt_strength * a
    x     = v - theta
    z     = (x > 0)                           fire; its surrogate derivative is d = sg'(x)
    v_new = v - z * theta   (reset "subtract")   or   v * (1 - z)   (reset "zero")
    a_new = a + z                             (ALIF)

The reset's z is detached (``detach_reset``, the usual choice: Zenke & Vogels
2021); only the plain autograd step (`reference.step`) supports an attached reset.

Backward of fire-and-reset, from ``grad_z`` (w.r.t. z), ``grad_v`` (w.r.t.
v_new) and ``grad_a`` (w.r.t. a_new, ALIF)::

    gx = (grad_z + grad_a) * d
    gv = grad_v * (1 if subtract else 1 - z) + gx          w.r.t. v (before the reset)
    ga = grad_a - adapt_strength * (gx + (grad_v * z if subtract else 0))   w.r.t. a (after the decay)

and of leak-and-integrate, which the time loop applies itself (it is linear)::

    grad_current = gv ;  grad_v_prev = beta * gv ;  grad_a_prev = rho * ga
    grad_beta   += sum over the batch of gv * v_prev ;  grad_rho += sum of ga * a_prev

CUBA (`models.cuba`) puts its synaptic current i in the slot of a and its decay alpha in that of
rho, and the input current enters i: ``i = alpha * i_prev + current``, ``v = beta * v_prev + i``,
``theta = threshold``, ``i_new = i``. Its backward is ``gv`` as above with ``gx = grad_z * d``, and
``ga = grad_a + gv`` w.r.t. i, which is then also the input current's gradient (``grad_current = ga``).

A learned threshold (``learn_threshold``: a parameter ``threshold[N]`` in place of the scalar) enters
the update only as theta, so with the reset's z detached its gradient comes from the adjoints above::

    dL/dtheta_t = -gx - (grad_v * z if subtract else 0) = (1 - z) * grad_v - gv     (both resets)
    grad_threshold = sum over the batch and the steps of dL/dtheta_t

with grad_v w.r.t. v_new (the next step's ``beta * gv``, or the adjoint of the window's last v), which
the window loop forms from what its backward already has (`window._threshold_grad`); ALIF's base
threshold takes the same, as theta = threshold + adapt_strength * a.

So backward reads only z (kept as bits), d (kept in ``saved_dtype``) and, for a
learned decay, the pre-step state: this is Guo et al.'s nested forward-mode AD
applied to the element-wise update, which the fused kernels compute in the
forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .models import MODELS, NeuronModel
from .surrogates import SURROGATES

RESETS = ("subtract", "zero")
RESET_CODES = {"subtract": 0, "zero": 1}  # neuron_core.h's Reset enum


@dataclass(frozen=True)
class NeuronSpec:
    """The scalars of one layer's neuron update (the tensors beta and rho are parameters)."""

    model: str = "lif"  # a name in the neuron-model registry (`ipu_snn.neuron.models`)
    threshold: float = 1.0
    adapt_strength: float = 0.0  # ALIF: how far one spike raises the threshold
    reset: str = "subtract"
    surrogate: str = "fast_sigmoid"
    scale: float = 10.0
    detach_reset: bool = True

    def __post_init__(self):
        # a spec comes from a validated config: anything else here is a caller's bug
        if self.model not in MODELS:
            raise ValueError(f"NeuronSpec.model must be one of {tuple(MODELS)}, got {self.model!r}")
        if self.reset not in RESETS:
            raise ValueError(f"NeuronSpec.reset must be one of {RESETS}, got {self.reset!r}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"NeuronSpec.surrogate must be one of {tuple(SURROGATES)}, got {self.surrogate!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"NeuronSpec.scale must be a positive number, got {self.scale}")
        if not (math.isfinite(self.threshold) and math.isfinite(self.adapt_strength)):
            raise ValueError(f"NeuronSpec: threshold and adapt_strength must be finite, got "
                             f"{self.threshold}, {self.adapt_strength}")

    @property
    def neuron(self) -> NeuronModel:
        """The model's registry entry."""
        return MODELS[self.model]

    @property
    def kernel_code(self) -> int:
        return MODELS[self.model].kernel_code

    @property
    def surrogate_code(self) -> int:
        return SURROGATES[self.surrogate].code

    @property
    def reset_code(self) -> int:
        return RESET_CODES[self.reset]
