"""The fused LIF/ALIF step ops: ``ipu_snn::neuron_step_fwd`` and ``ipu_snn::neuron_step_bwd``.

One time step of one layer, elementwise over [B, N] with per-neuron decays
beta[N] and rho[N] (ALIF):

    v     = beta * v_prev + current
    a     = rho * a_prev                       (ALIF only; LIF: a = 0)
    theta = threshold + adapt_strength * a
    x     = v - theta
    z     = (x > 0)          d = sg'(x)        (the surrogate derivative of neurons.py)
    reset "subtract": v_new = v - z * theta    reset "zero": v_new = v * (1 - z)   (z detached)
    a_new = a + z                               (ALIF only)

Backward of one step, from grad_z, grad_v (w.r.t. v_new) and grad_a (w.r.t. a_new):

    gz = grad_z + grad_a ;  gx = gz * d
    gv = grad_v * (1 if subtract else 1 - z) + gx
    ga = grad_a - adapt_strength * (gx + (grad_v * z if subtract else 0))      (ALIF only)
    grad_current = gv ;  grad_v_prev = beta * gv ;  grad_a_prev = rho * ga

This is autograd through ``neurons.lif_step`` / ``alif_step`` with
detach_reset=True (tests/test_neuron_kernels.py checks every backend against
it). Only z, packed to 1 bit per neuron, and d, in a chosen dtype, are needed
backward.

Stable API:

    neuron_step_fwd(current, v, a, beta, rho, threshold, adapt_strength, reset, surrogate,
                    scale, saved_dtype, backend) -> (v_new, a_new, z, d, zbits)
    neuron_step_bwd(grad_z, grad_v, grad_a, zbits, d, beta, rho, threshold, adapt_strength,
                    reset, surrogate, scale, backend) -> (grad_current, grad_v_prev, grad_a_prev)
    pack_spikes(z) -> zbits ;  unpack_spikes(zbits, n, dtype) -> z

* current, v, a, grad_*: [B, N], float32 or float64 (the state dtype, one for all).
* beta, rho: [N] in the state dtype. LIF passes a = rho = None (and grad_a = None);
  a_new and grad_a_prev are then empty tensors. ALIF may pass grad_a = None for 0.
* reset: "subtract" | "zero"; surrogate: fast_sigmoid | atan | triangle | boxcar.
* saved_dtype: the dtype of d: float32, float16 or bfloat16 (float64 too with
  float64 state). z comes back in the state dtype, zbits as uint8 [B, ceil(N / 8)]
  with bit k of byte i holding neuron 8 i + k.
* neuron_step_bwd takes threshold, surrogate and scale for symmetry with the
  forward (they are checked, but d already holds the surrogate, so they do not
  enter the math).
* backend: a registry name (reference, cpu, triton, triton_sorted); see
  registry.resolve_backend for the device default.

Each op call costs about 35 us of torch.library dispatch on top of the kernel,
as much as the CPU kernel itself at B = 128, N = 1024. An eager time loop can
take the backend's kernels once with ``neuron_step_kernels`` and call them
directly (check the inputs once through the op first: the kernels skip the
Python checks); the ops remain the torch.compile-visible route.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ipu_snn.errors import UserError
from ipu_snn.neurons import SURROGATE_GRADS
from ipu_snn.ops import neuron_reference
from ipu_snn.ops.registry import get_kernels, resolve_backend

RESETS = ("subtract", "zero")
STATE_DTYPES = (torch.float32, torch.float64)
SAVED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_FWD = "ipu_snn::neuron_step_fwd"
_BWD = "ipu_snn::neuron_step_bwd"


def packed_row_bytes(n: int) -> int:
    """Bytes of one packed row of n neurons."""
    return neuron_reference.packed_row_bytes(n)


def pack_spikes(z: Tensor) -> Tensor:
    """[..., N] spikes (nonzero = spike) to uint8 [..., ceil(N / 8)] bits, the kernels' layout."""
    return neuron_reference.pack_spikes(z)


def unpack_spikes(zbits: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """uint8 [..., ceil(n / 8)] bits back to the [..., n] 0/1 spikes in ``dtype``."""
    if zbits.dtype != torch.uint8 or zbits.dim() < 1 or zbits.shape[-1] != packed_row_bytes(n):
        raise UserError(
            f"unpack_spikes: zbits must be uint8 [..., {packed_row_bytes(n)}] for n = {n} neurons, "
            f"got {zbits.dtype} {tuple(zbits.shape)}"
        )
    return neuron_reference.unpack_spikes(zbits, n, dtype)


class NeuronStepKernels(NamedTuple):
    """A backend's raw kernels: the ops' signatures without ``backend``; ``backward`` also
    without threshold, surrogate and scale: (grad_z, grad_v, grad_a, zbits, d, beta, rho,
    adapt_strength, reset)."""

    forward: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]
    backward: Callable[..., tuple[Tensor, Tensor, Tensor]]


def neuron_step_kernels(backend: str | None, device: torch.device) -> NeuronStepKernels:
    """The fused-step kernels of ``backend`` (None: the device default) for tensors on ``device``."""
    kernels = get_kernels(resolve_backend(backend, device))
    return NeuronStepKernels(kernels.require("neuron_forward"), kernels.require("neuron_backward"))


# ------------------------------------------------------------------------------ checks


def _check_step(op: str, name: str, t: Tensor) -> None:
    if t.dim() != 2 or t.dtype not in STATE_DTYPES:
        raise UserError(f"{op}: {name} must be a float32 or float64 [B, N] tensor, got {t.dtype} {tuple(t.shape)}")


def _check_like(op: str, name: str, t: Tensor, like: Tensor, like_name: str) -> None:
    if t.shape != like.shape or t.dtype != like.dtype or t.device != like.device:
        raise UserError(
            f"{op}: {name} must match {like_name} ({like.dtype} {tuple(like.shape)} on {like.device}), "
            f"got {t.dtype} {tuple(t.shape)} on {t.device}"
        )


def _check_decay(op: str, name: str, t: Tensor, like: Tensor) -> None:
    n = like.shape[1]
    if t.shape != (n,) or t.dtype != like.dtype or t.device != like.device:
        raise UserError(
            f"{op}: {name} must be a [{n}] per-neuron {like.dtype} tensor on {like.device}, "
            f"got {t.dtype} {tuple(t.shape)} on {t.device}"
        )


def _check_saved_dtype(op: str, saved: torch.dtype, state: torch.dtype) -> None:
    if saved not in SAVED_DTYPES and not (saved == torch.float64 == state):
        raise UserError(
            f"{op}: the surrogate derivative is saved as float32, float16 or bfloat16 "
            f"(or float64 with float64 state), got {saved} with {state} state"
        )


def _check_scalars(op: str, threshold: float, adapt_strength: float, reset: str, surrogate: str,
                   scale: float) -> None:
    if reset not in RESETS:
        raise UserError(f"{op}: reset must be one of {', '.join(RESETS)}, got {reset!r}")
    if surrogate not in SURROGATE_GRADS:
        raise UserError(f"{op}: surrogate must be one of {', '.join(SURROGATE_GRADS)}, got {surrogate!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise UserError(f"{op}: the surrogate scale must be a positive number, got {scale}")
    if not (math.isfinite(threshold) and math.isfinite(adapt_strength)):
        raise UserError(f"{op}: threshold and adapt_strength must be finite, got {threshold}, {adapt_strength}")


def _check_forward(current, v, a, beta, rho, threshold, adapt_strength, reset, surrogate, scale,
                   saved_dtype) -> None:
    _check_step(_FWD, "current", current)
    _check_like(_FWD, "v", v, current, "current")
    if (a is None) != (rho is None):
        raise UserError(f"{_FWD}: ALIF needs both a and rho, LIF neither; got a = "
                        f"{'None' if a is None else 'a tensor'} and rho = {'None' if rho is None else 'a tensor'}")
    if a is not None:
        _check_like(_FWD, "a", a, current, "current")
        _check_decay(_FWD, "rho", rho, current)
    _check_decay(_FWD, "beta", beta, current)
    _check_scalars(_FWD, threshold, adapt_strength, reset, surrogate, scale)
    _check_saved_dtype(_FWD, saved_dtype, current.dtype)


def _check_backward(grad_z, grad_v, grad_a, zbits, d, beta, rho, threshold, adapt_strength, reset,
                    surrogate, scale) -> None:
    _check_step(_BWD, "grad_v", grad_v)
    _check_like(_BWD, "grad_z", grad_z, grad_v, "grad_v")
    if grad_a is not None:
        if rho is None:
            raise UserError(f"{_BWD}: grad_a was given but rho is None (LIF has no adaptation)")
        _check_like(_BWD, "grad_a", grad_a, grad_v, "grad_v")
    if rho is not None:
        _check_decay(_BWD, "rho", rho, grad_v)
    _check_decay(_BWD, "beta", beta, grad_v)
    batch, n = grad_v.shape
    if zbits.dtype != torch.uint8 or zbits.shape != (batch, packed_row_bytes(n)) or zbits.device != grad_v.device:
        raise UserError(f"{_BWD}: zbits must be uint8 [{batch}, {packed_row_bytes(n)}] on {grad_v.device}, "
                        f"got {zbits.dtype} {tuple(zbits.shape)} on {zbits.device}")
    if d.shape != grad_v.shape or d.device != grad_v.device:
        raise UserError(f"{_BWD}: d must be [{batch}, {n}] on {grad_v.device}, got {tuple(d.shape)} on {d.device}")
    _check_saved_dtype(_BWD, d.dtype, grad_v.dtype)
    _check_scalars(_BWD, threshold, adapt_strength, reset, surrogate, scale)


# --------------------------------------------------------------------------------- ops


@torch.library.custom_op(_FWD, mutates_args=())
def neuron_step_fwd(
    current: Tensor, v: Tensor, a: Tensor | None, beta: Tensor, rho: Tensor | None,
    threshold: float, adapt_strength: float, reset: str, surrogate: str, scale: float,
    saved_dtype: torch.dtype, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One LIF (a = rho = None) or ALIF step: (v_new, a_new or empty, z, d, zbits)."""
    _check_forward(current, v, a, beta, rho, threshold, adapt_strength, reset, surrogate, scale, saved_dtype)
    kernel = get_kernels(resolve_backend(backend, current.device)).require("neuron_forward")
    return tuple(kernel(current, v, a, beta, rho, threshold, adapt_strength, reset, surrogate, scale, saved_dtype))


@neuron_step_fwd.register_fake
def _(current, v, a, beta, rho, threshold, adapt_strength, reset, surrogate, scale, saved_dtype, backend):
    _check_forward(current, v, a, beta, rho, threshold, adapt_strength, reset, surrogate, scale, saved_dtype)
    batch, n = current.shape
    a_new = torch.empty_like(current) if a is not None else current.new_empty(0)
    return (torch.empty_like(current), a_new, torch.empty_like(current),
            current.new_empty(batch, n, dtype=saved_dtype),
            current.new_empty(batch, packed_row_bytes(n), dtype=torch.uint8))


@torch.library.custom_op(_BWD, mutates_args=())
def neuron_step_bwd(
    grad_z: Tensor, grad_v: Tensor, grad_a: Tensor | None, zbits: Tensor, d: Tensor, beta: Tensor,
    rho: Tensor | None, threshold: float, adapt_strength: float, reset: str, surrogate: str,
    scale: float, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of one step: (grad_current, grad_v_prev, grad_a_prev or empty)."""
    _check_backward(grad_z, grad_v, grad_a, zbits, d, beta, rho, threshold, adapt_strength, reset, surrogate, scale)
    kernel = get_kernels(resolve_backend(backend, grad_v.device)).require("neuron_backward")
    return tuple(kernel(grad_z, grad_v, grad_a, zbits, d, beta, rho, adapt_strength, reset))


@neuron_step_bwd.register_fake
def _(grad_z, grad_v, grad_a, zbits, d, beta, rho, threshold, adapt_strength, reset, surrogate, scale, backend):
    _check_backward(grad_z, grad_v, grad_a, zbits, d, beta, rho, threshold, adapt_strength, reset, surrogate, scale)
    grad_a_prev = torch.empty_like(grad_v) if rho is not None else grad_v.new_empty(0)
    return torch.empty_like(grad_v), torch.empty_like(grad_v), grad_a_prev
