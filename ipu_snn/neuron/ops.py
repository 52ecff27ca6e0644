"""The fused neuron step as custom ops: ``ipu_snn::neuron_step_fwd`` and ``ipu_snn::neuron_step_bwd``.

The math is `spec`'s. These ops dispatch to the kernel table by backend name,
check their arguments, and have fake kernels, so torch.compile and FakeTensor
shape inference see through them. The fused window loop (`window`) calls the
kernels directly instead: one op call costs about 35 us of torch.library
dispatch, as much as a CPU kernel at B = 128, N = 1024.

    neuron_step_fwd(current, v, a, beta, rho, model, threshold, adapt_strength, reset, surrogate, scale,
                    saved_dtype, backend) -> (v_new, a_new or empty, z, d, zbits)
    neuron_step_bwd(grad_z, grad_v, grad_a, zbits, d, model, adapt_strength, reset, backend)
                    -> (gv, ga or empty)

* model: a name in the neuron-model registry (`ipu_snn.neuron.models`).
* current, v, a, grad_*: [B, N], float32 or float64 (the state dtype, one for all); beta, rho: [N].
  A one-state model (lif, rlif) passes a = rho = None; ALIF may pass grad_a = None for 0.
* saved_dtype: the dtype of d: float32, float16 or bfloat16 (float64 too with float64 state).
* the backward takes only what enters its math (d already holds the surrogate) and returns
  the gradients w.r.t. v before the reset and a after the decay: the leak's backward
  (grad_v_prev = beta * gv, grad_a_prev = rho * ga) is the caller's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.bits import packed_row_bytes
from .kernels import resolve
from .models import MODELS
from .spec import RESETS, NeuronSpec
from .surrogates import SURROGATES

STATE_DTYPES = (torch.float32, torch.float64)
SAVED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_FWD = "ipu_snn::neuron_step_fwd"
_BWD = "ipu_snn::neuron_step_bwd"


def _check_step(op: str, name: str, t: Tensor) -> None:
    if t.dim() != 2 or t.dtype not in STATE_DTYPES:
        raise ValueError(f"{op}: {name} must be a float32 or float64 [B, N] tensor, got {t.dtype} {tuple(t.shape)}")


def _check_like(op: str, name: str, t: Tensor, like: Tensor, like_name: str) -> None:
    if t.shape != like.shape or t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{op}: {name} must match {like_name} ({like.dtype} {tuple(like.shape)} on {like.device}), "
                        f"got {t.dtype} {tuple(t.shape)} on {t.device}")


def _check_decay(op: str, name: str, t: Tensor, like: Tensor) -> None:
    n = like.shape[1]
    if t.shape != (n,) or t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{op}: {name} must be a [{n}] per-neuron {like.dtype} tensor on {like.device}, "
                        f"got {t.dtype} {tuple(t.shape)} on {t.device}")


def _check_saved_dtype(op: str, saved: torch.dtype, state: torch.dtype) -> None:
    if saved not in SAVED_DTYPES and not (saved == torch.float64 == state):
        raise ValueError(f"{op}: the surrogate derivative is saved as float32, float16 or bfloat16 "
                        f"(or float64 with float64 state), got {saved} with {state} state")


def _check_reset(op: str, reset: str) -> None:
    if reset not in RESETS:
        raise ValueError(f"{op}: reset must be one of {', '.join(RESETS)}, got {reset!r}")


def _spec(op: str, model: str, threshold: float, adapt_strength: float, reset: str, surrogate: str,
          scale: float) -> NeuronSpec:
    _check_reset(op, reset)
    if model not in MODELS:
        raise ValueError(f"{op}: model must be one of {', '.join(MODELS)}, got {model!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"{op}: surrogate must be one of {', '.join(SURROGATES)}, got {surrogate!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{op}: the surrogate scale must be a positive number, got {scale}")
    if not (math.isfinite(threshold) and math.isfinite(adapt_strength)):
        raise ValueError(f"{op}: threshold and adapt_strength must be finite, got {threshold}, {adapt_strength}")
    return NeuronSpec(model, threshold, adapt_strength, reset, surrogate, scale)


def _check_forward(current, v, a, beta, rho, model, threshold, adapt_strength, reset, surrogate, scale,
                   saved_dtype) -> NeuronSpec:
    spec = _spec(_FWD, model, threshold, adapt_strength, reset, surrogate, scale)
    _check_step(_FWD, "current", current)
    _check_like(_FWD, "v", v, current, "current")
    two = spec.neuron.n_state > 1
    if (a is None) == two or (rho is None) == two:
        raise ValueError(f"{_FWD}: {model} needs {'both a and rho' if two else 'neither a nor rho'}; got a = "
                        f"{'None' if a is None else 'a tensor'} and rho = {'None' if rho is None else 'a tensor'}")
    if a is not None:
        _check_like(_FWD, "a", a, current, "current")
        _check_decay(_FWD, "rho", rho, current)
    _check_decay(_FWD, "beta", beta, current)
    _check_saved_dtype(_FWD, saved_dtype, current.dtype)
    return spec


def _check_backward(grad_z, grad_v, grad_a, zbits, d, model, reset) -> None:
    if model not in MODELS:
        raise ValueError(f"{_BWD}: model must be one of {', '.join(MODELS)}, got {model!r}")
    _check_step(_BWD, "grad_v", grad_v)
    _check_like(_BWD, "grad_z", grad_z, grad_v, "grad_v")
    if grad_a is not None:
        if MODELS[model].n_state == 1:
            raise ValueError(f"{_BWD}: grad_a was given for a {model} step (one state, no adaptation)")
        _check_like(_BWD, "grad_a", grad_a, grad_v, "grad_v")
    batch, n = grad_v.shape
    if zbits.dtype != torch.uint8 or zbits.shape != (batch, packed_row_bytes(n)) or zbits.device != grad_v.device:
        raise ValueError(f"{_BWD}: zbits must be uint8 [{batch}, {packed_row_bytes(n)}] on {grad_v.device}, "
                        f"got {zbits.dtype} {tuple(zbits.shape)} on {zbits.device}")
    if d.shape != grad_v.shape or d.device != grad_v.device:
        raise ValueError(f"{_BWD}: d must be [{batch}, {n}] on {grad_v.device}, got {tuple(d.shape)} on {d.device}")
    _check_saved_dtype(_BWD, d.dtype, grad_v.dtype)
    _check_reset(_BWD, reset)


@torch.library.custom_op(_FWD, mutates_args=())
def neuron_step_fwd(current: Tensor, v: Tensor, a: Tensor | None, beta: Tensor, rho: Tensor | None, model: str,
                    threshold: float, adapt_strength: float, reset: str, surrogate: str, scale: float,
                    saved_dtype: torch.dtype, backend: str | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One step of ``model`` (lif, rlif: a = rho = None): (v_new, a_new or empty, z, d, zbits)."""
    spec = _check_forward(current, v, a, beta, rho, model, threshold, adapt_strength, reset, surrogate, scale, saved_dtype)
    v_new, a_new, z, d, bits = resolve(backend, current.device).forward(current, v, a, beta, rho, spec, saved_dtype)
    return v_new, (a_new if a_new is not None else current.new_empty(0)), z, d, bits


@neuron_step_fwd.register_fake
def _(current, v, a, beta, rho, model, threshold, adapt_strength, reset, surrogate, scale, saved_dtype, backend):
    _check_forward(current, v, a, beta, rho, model, threshold, adapt_strength, reset, surrogate, scale, saved_dtype)
    batch, n = current.shape
    a_new = torch.empty_like(current) if a is not None else current.new_empty(0)
    return (torch.empty_like(current), a_new, torch.empty_like(current),
            current.new_empty(batch, n, dtype=saved_dtype),
            current.new_empty(batch, packed_row_bytes(n), dtype=torch.uint8))


@torch.library.custom_op(_BWD, mutates_args=())
def neuron_step_bwd(grad_z: Tensor, grad_v: Tensor, grad_a: Tensor | None, zbits: Tensor, d: Tensor,
                    model: str, adapt_strength: float, reset: str,
                    backend: str | None) -> tuple[Tensor, Tensor]:
    """Backward of fire-and-reset: (gv, ga or empty)."""
    _check_backward(grad_z, grad_v, grad_a, zbits, d, model, reset)
    spec = NeuronSpec(model=model, adapt_strength=adapt_strength, reset=reset)
    gv, ga = resolve(backend, grad_v.device).backward(grad_z, grad_v, grad_a, zbits, d, spec)
    return gv, (ga if ga is not None else grad_v.new_empty(0))


@neuron_step_bwd.register_fake
def _(grad_z, grad_v, grad_a, zbits, d, model, adapt_strength, reset, backend):
    _check_backward(grad_z, grad_v, grad_a, zbits, d, model, reset)
    return torch.empty_like(grad_v), (torch.empty_like(grad_v) if MODELS[model].n_state > 1 else grad_v.new_empty(0))
