"""Pure neuron step functions and surrogate spike functions.

Each step takes explicit parameter and state tuples and returns the new state
and the step's output, with no module state. That is the shape the BPTT engine
needs (``cell(params, state, x_t) -> (state, y_t)``) and what lets fused kernels
be checked against these functions one step at a time.

Order within a step (all neuron types): leak and integrate, fire, reset.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

# ------------------------------------------------------------------ surrogate spikes
#
# Forward: Heaviside(x) with x = v - threshold. Backward: the derivative of a
# smooth stand-in for the step. Each derivative below is written in closed form;
# the tests check each against autograd of its smooth primitive.


def _fast_sigmoid_grad(x: Tensor, scale: float) -> Tensor:
    # d/dx of x / (1 + scale |x|)   (SuperSpike, Zenke & Ganguli 2018)
    return 1.0 / (scale * x.abs() + 1.0) ** 2


def _atan_grad(x: Tensor, scale: float) -> Tensor:
    # d/dx of atan(pi/2 * scale * x) / pi   (Fang et al. 2021)
    return (scale / 2.0) / (1.0 + (math.pi / 2.0 * scale * x) ** 2)


def _triangle_grad(x: Tensor, scale: float) -> Tensor:
    # unit-area triangle of half-width 1/scale   (Bellec et al. 2018)
    return scale * torch.clamp(1.0 - scale * x.abs(), min=0.0)


def _boxcar_grad(x: Tensor, scale: float) -> Tensor:
    # unit-area box of width 1/scale   (straight-through estimator near threshold)
    return scale * (x.abs() < 0.5 / scale).to(x.dtype)


SURROGATE_GRADS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "fast_sigmoid": _fast_sigmoid_grad,
    "atan": _atan_grad,
    "triangle": _triangle_grad,
    "boxcar": _boxcar_grad,
}


class _SurrogateSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, name: str, scale: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.name, ctx.scale = name, scale
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * SURROGATE_GRADS[ctx.name](x, ctx.scale), None, None


class Surrogate(NamedTuple):
    name: str = "fast_sigmoid"
    scale: float = 10.0

    def __call__(self, x: Tensor) -> Tensor:
        return _SurrogateSpike.apply(x, self.name, self.scale)

    def grad(self, x: Tensor) -> Tensor:
        return SURROGATE_GRADS[self.name](x, self.scale)


def surrogate(name: str = "fast_sigmoid", scale: float = 10.0) -> Surrogate:
    if name not in SURROGATE_GRADS:
        raise ValueError(f"unknown surrogate '{name}'; known: {', '.join(SURROGATE_GRADS)}")
    return Surrogate(name, float(scale))


# ------------------------------------------------------------------------------- LIF


class LIFParams(NamedTuple):
    beta: Tensor | float  # leak per step, scalar or per neuron
    threshold: float = 1.0
    reset: str = "subtract"  # "subtract" | "zero"
    detach_reset: bool = True
    spike: Surrogate = Surrogate()


class LIFState(NamedTuple):
    v: Tensor


def _reset(v: Tensor, z: Tensor, threshold: Tensor | float, p: LIFParams | ALIFParams) -> Tensor:
    zr = z.detach() if p.detach_reset else z
    if p.reset == "subtract":
        return v - zr * threshold
    return v * (1.0 - zr)


def lif_step(params: LIFParams, state: LIFState, current: Tensor) -> tuple[LIFState, Tensor]:
    v = params.beta * state.v + current
    z = params.spike(v - params.threshold)
    return LIFState(_reset(v, z, params.threshold, params)), z


# ------------------------------------------------------------------------------ ALIF


class ALIFParams(NamedTuple):
    beta: Tensor | float
    rho: Tensor | float  # adaptation decay per step
    adapt_strength: float = 1.8  # how far one spike raises the threshold
    threshold: float = 1.0
    reset: str = "subtract"
    detach_reset: bool = True
    spike: Surrogate = Surrogate()


class ALIFState(NamedTuple):
    v: Tensor
    a: Tensor  # adaptation variable: a low-pass trace of the neuron's own spikes


def alif_step(params: ALIFParams, state: ALIFState, current: Tensor) -> tuple[ALIFState, Tensor]:
    """Adaptive LIF (Bellec et al. 2018): each spike raises the threshold, which then decays."""
    v = params.beta * state.v + current
    a = params.rho * state.a
    theta = params.threshold + params.adapt_strength * a
    z = params.spike(v - theta)
    v = _reset(v, z, theta, params)
    return ALIFState(v, a + z), z


# -------------------------------------------------------------------------------- LI


class LIParams(NamedTuple):
    beta: Tensor | float


class LIState(NamedTuple):
    v: Tensor


def li_step(params: LIParams, state: LIState, current: Tensor) -> tuple[LIState, Tensor]:
    """Leaky integrator without spikes: the readout's membrane is its output."""
    v = params.beta * state.v + current
    return LIState(v), v
