"""The surrogate table: every surrogate spike function the project knows, in one place.

A spike is the Heaviside step ``z = (x > 0)`` of the threshold distance
``x = v - theta``; its derivative is zero almost everywhere, so training uses a
*surrogate* derivative ``sg'(x)``. Each row of `SURROGATES` gives:

* ``code``: the integer every compiled kernel uses for this surrogate: the
  ``SurrogateKind`` enum of custom_ops/include/neuron_core.h (C++ and the
  Poplar vertices), the ``SURROGATE`` constexpr of the Triton kernels, and the
  PopART op's attribute. A test reads the C++ enum and checks it against this
  table, so the codes cannot drift;
* ``grad``: the derivative in closed form, the one every kernel computes;
* ``bounded``: whether ``grad`` is zero far from the threshold, which makes the
  sparse backward through near-threshold neurons exact (``model.sparse_grad``).

``scale`` means one thing for every row: sharpness, the width of ``grad`` is
about ``1/scale``. ``fast_sigmoid``, ``triangle`` and ``boxcar`` peak at 1 at the
threshold, whatever the scale, so a bounded surrogate can stand in for
fast_sigmoid without multiplying the gradient through time (docs/benchmarks/
surrogates.md); ``atan`` keeps Fang et al.'s unit area (peak ``scale/2``).

Adding a surrogate is one row here, plus one function in each kernel language:
a functor in neuron_core.h (which the CPU extension and the Poplar vertices
share) and a branch in ``ipu_snn/neuron/triton_kernels.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Fn = Callable[[Tensor, float], Tensor]


@dataclass(frozen=True)
class Surrogate:
    name: str
    code: int
    grad: Fn
    bounded: bool
    source: str


def _fast_sigmoid_grad(x: Tensor, scale: float) -> Tensor:
    return 1.0 / (scale * x.abs() + 1.0) ** 2


def _atan_grad(x: Tensor, scale: float) -> Tensor:
    return (scale / 2.0) / (1.0 + (math.pi / 2.0 * scale * x) ** 2)


def _triangle_grad(x: Tensor, scale: float) -> Tensor:
    return torch.clamp(1.0 - scale * x.abs(), min=0.0)


def _boxcar_grad(x: Tensor, scale: float) -> Tensor:
    return (x.abs() < 0.5 / scale).to(x.dtype)


SURROGATES: dict[str, Surrogate] = {s.name: s for s in [
    Surrogate("fast_sigmoid", 0, _fast_sigmoid_grad, False,
              "SuperSpike, Zenke & Ganguli 2018"),
    Surrogate("atan", 1, _atan_grad, False,
              "Fang et al. 2021"),
    Surrogate("triangle", 2, _triangle_grad, True,
              "peak-1 triangle of half-width 1/scale, Bellec et al. 2018"),
    Surrogate("boxcar", 3, _boxcar_grad, True,
              "peak-1 box of width 1/scale: straight-through near the threshold"),
]}


def surrogate(name: str) -> Surrogate:
    """The table row of ``name``; a ValueError (a caller's bug: configs are validated) if unknown."""
    try:
        return SURROGATES[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; known: {', '.join(SURROGATES)}") from None


class _SpikeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, grad: Fn, scale: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.grad, ctx.scale = grad, scale
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.grad(x, ctx.scale), None, None


def spike(x: Tensor, name: str, scale: float) -> Tensor:
    """Heaviside spikes of ``x`` whose backward is the surrogate derivative (an autograd Function)."""
    return _SpikeFunction.apply(x, surrogate(name).grad, scale)


SpikeFn = Callable[[Tensor, str, float], Tensor]
