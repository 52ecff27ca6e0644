"""LIF and ALIF updates through nested forward-mode AD (`ipu_snn.bptt.fwdad`).

Same values and gradients as `ipu_snn.neurons.lif_step` / `alif_step` with
``detach_reset=True``, but per step autograd keeps only:

* the surrogate derivative ``d = sg'(v - theta)``, in ``saved_dtype``;
* the spikes ``z`` as packed bits (1 bit per neuron), only where backward reads
  them: the zero reset (``dv_new/dv = 1 - z``) and the ALIF subtract reset
  (``dv_new/da = -adapt_strength * z``). A LIF with subtract reset keeps ``d`` only;
* ``v_prev`` (``a_prev``) only when ``beta`` (``rho``) requires grad, since
  ``dv/dbeta = v_prev``; ``beta`` and ``rho`` themselves are referenced, not copied.

The step splits where the chain rule makes it cheap. Leak and integrate,
``v = beta * v_prev + current`` (and ``a = rho * a_prev``), are linear: plain
autograd keeps only their coefficients. Fire and reset are the non-linear chain
from ``(v, a)`` to ``(v_new, a_new, z)``; it goes through `elementwise` with
its derivatives in closed form, which is where the Heaviside spike gets its
surrogate derivative (forward-mode AD would see a flat step). With
``theta = threshold + adapt_strength * a`` and ``x = v - theta``:

=========  ====================================  ===========================
output      d/dv                                  d/da (ALIF)
=========  ====================================  ===========================
z           d                                     -adapt_strength * d
v_new       1 (subtract) or 1 - z (zero)          -adapt_strength * z (subtract) or 0 (zero)
a_new       d                                     1 - adapt_strength * d
=========  ====================================  ===========================

(``a_new = a + z`` is not detached, so it carries the surrogate too; the
reset's ``z`` is, so ``v_new`` carries none.) These reproduce the backward in
the fused neuron step contract of the team design.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ipu_snn.bptt.fwdad import Affine, elementwise
from ipu_snn.errors import UserError
from ipu_snn.neurons import ALIFParams, ALIFState, LIFParams, LIFState, Surrogate

RESETS = ("subtract", "zero")


def _check(reset: str, spike: Surrogate) -> None:
    if reset not in RESETS:
        raise UserError(f"reset must be one of {', '.join(RESETS)}, got {reset!r}")
    if not isinstance(spike, Surrogate):
        raise UserError(f"spike must be an ipu_snn.neurons.Surrogate, got {type(spike).__name__}")


@functools.lru_cache(maxsize=None)
def _lif_fire(threshold: float, reset: str, spike: Surrogate, saved_dtype: torch.dtype | None):
    _check(reset, spike)
    @elementwise(closed_form=True, saved_dtype=saved_dtype)
    def lif_fire(v):
        x = v - threshold
        z = x > 0
        zf = z.to(v.dtype)
        d = spike.grad(x)
        if reset == "subtract":
            return (v - zf * threshold, zf), {(0, 0): 1.0, (1, 0): d}
        return (v * (1.0 - zf), zf), {(0, 0): Affine(z, -1.0, 1.0), (1, 0): d}

    return lif_fire


@functools.lru_cache(maxsize=None)
def _alif_fire(threshold: float, adapt_strength: float, reset: str, spike: Surrogate,
               saved_dtype: torch.dtype | None):
    _check(reset, spike)
    s = adapt_strength

    @elementwise(closed_form=True, saved_dtype=saved_dtype)
    def alif_fire(v, a):
        theta = threshold + s * a
        x = v - theta
        z = x > 0
        zf = z.to(v.dtype)
        d = spike.grad(x)
        if reset == "subtract":
            v_new, dv = v - zf * theta, {(0, 0): 1.0, (0, 1): Affine(z, -s)}
        else:
            v_new, dv = v * (1.0 - zf), {(0, 0): Affine(z, -1.0, 1.0), (0, 1): 0.0}
        return (v_new, a + zf, zf), {**dv, (1, 0): d, (1, 1): Affine(d, -s, 1.0),
                                     (2, 0): d, (2, 1): Affine(d, -s)}

    return alif_fire


def lif_update_fwdad(current: Tensor, v_prev: Tensor, beta: Tensor | float, *, threshold: float = 1.0,
                     reset: str = "subtract", spike: Surrogate = Surrogate(),
                     saved_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """One LIF step, ``(v_new, z)``; beta is a scalar or per neuron [N] over [B, N]."""
    v = beta * v_prev + current
    return _lif_fire(float(threshold), reset, spike, saved_dtype)(v)


def alif_update_fwdad(current: Tensor, v_prev: Tensor, a_prev: Tensor, beta: Tensor | float,
                      rho: Tensor | float, *, adapt_strength: float = 1.8, threshold: float = 1.0,
                      reset: str = "subtract", spike: Surrogate = Surrogate(),
                      saved_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One ALIF step, ``(v_new, a_new, z)``."""
    v = beta * v_prev + current
    a = rho * a_prev
    return _alif_fire(float(threshold), float(adapt_strength), reset, spike, saved_dtype)(v, a)


def _detached_only(params) -> None:
    if not params.detach_reset:
        raise UserError("the forward-mode AD neuron step implements detach_reset=True only; "
                        "use ipu_snn.neurons for detach_reset=False")


def lif_step_fwdad(params: LIFParams, state: LIFState, current: Tensor, *,
                   saved_dtype: torch.dtype | None = None) -> tuple[LIFState, Tensor]:
    """Drop-in for `ipu_snn.neurons.lif_step` (detach_reset=True only)."""
    _detached_only(params)
    v, z = lif_update_fwdad(current, state.v, params.beta, threshold=params.threshold, reset=params.reset,
                            spike=params.spike, saved_dtype=saved_dtype)
    return LIFState(v), z


def alif_step_fwdad(params: ALIFParams, state: ALIFState, current: Tensor, *,
                    saved_dtype: torch.dtype | None = None) -> tuple[ALIFState, Tensor]:
    """Drop-in for `ipu_snn.neurons.alif_step` (detach_reset=True only)."""
    _detached_only(params)
    v, a, z = alif_update_fwdad(current, state.v, state.a, params.beta, params.rho,
                                adapt_strength=params.adapt_strength, threshold=params.threshold,
                                reset=params.reset, spike=params.spike, saved_dtype=saved_dtype)
    return ALIFState(v, a), z
