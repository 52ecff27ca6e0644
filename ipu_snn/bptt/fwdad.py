"""Nested forward-mode AD for element-wise chains (Guo et al., arXiv 2209.10778).

In an element-wise chain ``(y1..ym) = f(x1..xn)`` output element k depends only
on element k of each (broadcast) input, so the Jacobian of every (output,
input) pair is diagonal: one tensor ``D_ji = dy_j/dx_i`` of the output's shape.
`elementwise` turns such an ``f`` into an autograd op that computes the outputs
and these derivatives together in the forward pass and keeps only the
derivatives. Its backward is then a multiply-add per pair::

    grad_x_i = sum_j grad_y_j * D_ji      (summed back to x_i's shape if x_i was broadcast)

Why this pays:

* against plain autograd (memory): autograd keeps, for every op of the chain,
  the operands its backward reads: the inputs and most intermediates. Here only
  the derivatives that are not constant are kept, each in ``saved_dtype`` (half
  precision if wanted), a 0/1 derivative as 1 bit per element, and a tensor that
  several derivatives share (a surrogate derivative, a spike mask) once;
* against recomputation (time): ``torch.utils.checkpoint`` keeps only the
  inputs, but runs the chain a second time in backward and records its graph
  then. Here backward runs no part of the chain again and records nothing.

Derivatives come from one of two places:

* forward-mode AD (default): ``torch.func.jvp`` with a tangent of ones for each
  input that requires grad, one evaluation of ``f`` per such input. Pairs known
  to be constant (``constant={(j, i): c}``, e.g. ``1.0`` for an input that is
  added, ``0.0`` for one an output does not depend on) are neither computed nor
  kept, and an input whose pairs are all constant costs no evaluation;
* a closed form (``closed_form=True``): ``f`` returns ``(outputs, derivatives)``
  with ``derivatives = {(j, i): D}`` for every differentiable output j and input
  i; a missing pair is an error, never a silent zero. This is the way to give a
  non-differentiable output a surrogate derivative: forward-mode AD sees the
  Heaviside step ``z = (x > 0)`` as flat (derivative 0), so write ``z`` as usual
  and declare ``{(z_index, i): surrogate_grad(x) * dx/dx_i}``; see
  the fused neuron kernels (`ipu_snn.neuron`), which apply this idea to the
  LIF/ALIF update in compiled code.

A derivative ``D`` (from ``constant`` or a closed form) is one of:

* a number: constant, nothing kept (``0`` drops the pair);
* a floating tensor: kept in ``saved_dtype``. An input tensor itself may be
  given (for ``y = a * b``, ``dy/da = b``): it is referenced, not copied,
  unless ``saved_dtype`` differs from its dtype;
* a bool tensor: a 0/1 derivative, kept as packed bits (the spike-kernel layout, `ipu_snn.core.bits`);
* ``Affine(factor, scale, offset)``: ``offset + scale * factor`` with ``factor``
  a tensor as above, so ``1 - z`` or ``-k * d`` keep only ``z`` or ``d``.

Precision: with ``saved_dtype`` narrower than the computation, each kept factor
F reads back as F' with ``|F' - F| <= rel * |F| + abs`` (`storage_error`), as
long as ``|F|`` stays below the dtype's largest finite value (65504 for
float16; bfloat16 has float32's range). A derivative ``offset + scale * F`` is
then off by at most ``|scale| * (rel |F| + abs)``, and the input gradient by at
most ``sum_j |grad_y_j| * |scale_ji| * (rel |F_ji| + abs)``, summed over the
elements reduced into each input element, on top of the rounding of the
backward arithmetic itself. Bits are exact.

Cost: each call is one Python ``autograd.Function``; on small CPU tensors its
bookkeeping weighs about as much as a few element-wise ops
(docs/benchmarks/fwdad.md). Limits: the backward is not itself differentiable (no double backward), and
``f`` must be element-wise: nothing checks that, a reduction inside ``f`` gives
wrong gradients.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ipu_snn.core.bits import pack_spikes, unpack_spikes

Pair = tuple[int, int]  # (output index, input index)


@dataclass(frozen=True, eq=False)
class Affine:
    """A derivative ``offset + scale * factor`` of which only ``factor`` is kept."""

    factor: Tensor
    scale: float = 1.0
    offset: float = 0.0


Derivative = Union[float, int, Tensor, Affine]


def storage_error(saved_dtype: torch.dtype) -> tuple[float, float]:
    """``(rel, abs)``: a value F stored in ``saved_dtype`` (round to nearest) reads back
    within ``rel * |F| + abs`` of F, for |F| below the dtype's largest finite value.

    ``rel`` is the unit roundoff (half the machine epsilon: 2**-11 for float16,
    2**-8 for bfloat16); ``abs`` is half the smallest subnormal (2**-25 for
    float16), which bounds what rounds away below the normal range.
    """
    info = torch.finfo(saved_dtype)
    return info.eps / 2, info.eps * info.tiny / 2


# ------------------------------------------------------------------------ the op


@dataclass(frozen=True, eq=False)
class _Spec:
    fn: Callable
    closed_form: bool
    constant: dict[Pair, float]
    saved_dtype: torch.dtype | None
    name: str


def _as_tuple(outputs) -> tuple:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


Evaluated = tuple[tuple, dict[Pair, Derivative], bool]  # outputs, derivatives, whether fn returned a tuple


def _forward_mode(spec: _Spec, inputs: tuple, wants: list[int]) -> Evaluated:
    """Outputs, and each wanted input's derivatives by one jvp with a tangent of ones."""
    constant_for = {i: {j: c for (j, k), c in spec.constant.items() if k == i} for i in wants}
    raw, derivatives = None, {}
    # inputs with fewer constant pairs first: their jvp produces the outputs anyway
    for i in sorted(wants, key=lambda i: len(constant_for[i])):
        given = constant_for[i]
        if given and raw is None:
            raw = spec.fn(*inputs)
        if raw is not None and all(j in given for j in range(len(_as_tuple(raw)))):
            derivatives.update({(j, i): c for j, c in given.items()})
            continue

        def f_of_i(x, i=i):
            return spec.fn(*inputs[:i], x, *inputs[i + 1:])

        raw, tangents = torch.func.jvp(f_of_i, (inputs[i],), (torch.ones_like(inputs[i]),))
        for j, t in enumerate(_as_tuple(tangents)):
            derivatives[(j, i)] = given.get(j, t)
    if raw is None:
        raw = spec.fn(*inputs)
    return _as_tuple(raw), derivatives, isinstance(raw, (tuple, list))


def _closed_form(spec: _Spec, inputs: tuple, wants: list[int]) -> Evaluated:
    result = spec.fn(*inputs)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
        raise TypeError(f"elementwise({spec.name}, closed_form=True): the function must return "
                        f"(outputs, {{(output, input): derivative}}), got {type(result).__name__}")
    outputs, derivatives = _as_tuple(result[0]), result[1]
    missing = [(j, i) for i in wants for j, y in enumerate(outputs)
               if y.is_floating_point() and (j, i) not in derivatives]
    if missing:
        raise ValueError(f"elementwise({spec.name}, closed_form=True): no derivative for (output, input) "
                        f"pairs {missing}; give 0.0 where an output does not depend on an input")
    return outputs, derivatives, isinstance(result[0], (tuple, list))


Terms = list[list[tuple[int, float, Union[int, None], float]]]  # per input: (output, scale, slot, offset)


def _keep(derivatives: dict[Pair, Derivative], wants: list[int], n_inputs: int,
          saved_dtype: torch.dtype | None) -> tuple[Terms, list[Tensor], list[tuple | None]]:
    """What backward needs: per input its terms ``(output j, scale, factor slot or None, offset)``,
    the kept factors, and per slot the shape of a bool factor kept as bits (None: a float factor)."""
    terms: Terms = [[] for _ in range(n_inputs)]
    factors, layouts = [], []
    slot_of: dict[int, int] = {}  # id(factor) -> slot: a factor shared by several pairs is kept once
    for (j, i), d in derivatives.items():
        if i not in wants:
            continue
        if isinstance(d, Tensor):
            f, scale, offset = d, 1.0, 0.0
        elif isinstance(d, Affine):
            f, scale, offset = d.factor, float(d.scale), float(d.offset)
        else:
            if d != 0:
                terms[i].append((j, 0.0, None, float(d)))
            continue
        slot = slot_of.get(id(f))
        if slot is None:
            slot = slot_of[id(f)] = len(factors)
            if f.dtype == torch.bool:
                factors.append(pack_spikes(f.reshape(1) if f.dim() == 0 else f))
                layouts.append(tuple(f.shape))
            else:
                factors.append(f if saved_dtype is None else f.to(saved_dtype))
                layouts.append(None)
        terms[i].append((j, scale, slot, offset))
    return terms, factors, layouts


def _add(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total + term


def _fit(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a gradient over the dimensions its input was broadcast along."""
    if grad.shape == shape:
        return grad
    return grad.broadcast_to(torch.broadcast_shapes(grad.shape, shape)).sum_to_size(shape)


class _ElementwiseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, returned_tuple: list, *inputs):
        # returned_tuple: a one-call box through which op() learns whether fn returned a tuple
        wants = [i for i, w in enumerate(ctx.needs_input_grad[2:]) if w]
        evaluate = _closed_form if spec.closed_form else _forward_mode
        outputs, derivatives, is_tuple = evaluate(spec, inputs, wants)
        returned_tuple.append(is_tuple)
        ctx.terms, factors, ctx.layouts = _keep(derivatives, wants, len(inputs), spec.saved_dtype)
        ctx.save_for_backward(*factors)
        ctx.shapes = [x.shape if isinstance(x, Tensor) else None for x in inputs]
        ctx.set_materialize_grads(False)
        flat = [y for y in outputs if not y.is_floating_point()]
        if flat:
            ctx.mark_non_differentiable(*flat)
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        stored = ctx.saved_tensors
        factors: dict[int, Tensor] = {}

        def factor(slot: int, like: Tensor) -> Tensor:
            if slot not in factors:
                layout, f = ctx.layouts[slot], stored[slot]
                if layout is not None:
                    f = unpack_spikes(f, layout[-1] if layout else 1, like.dtype).reshape(layout)
                factors[slot] = f if f.dtype == like.dtype else f.to(like.dtype)
            return factors[slot]

        result = []
        for terms, shape in zip(ctx.terms, ctx.shapes):
            # keyed by output shape: outputs of different shapes are reduced to the input's shape
            # separately, or broadcasting one against another would count it twice
            parts: dict[torch.Size, Tensor] = {}
            by_slot: dict[tuple[torch.Size, int], dict[float, Tensor]] = {}
            for j, scale, slot, offset in terms:
                g = grads[j]
                if g is None:
                    continue
                if offset:
                    parts[g.shape] = _add(parts.get(g.shape), g if offset == 1.0 else g * offset)
                if slot is not None:
                    # grads meeting the same factor with the same scale are summed first: one multiply each
                    by_scale = by_slot.setdefault((g.shape, slot), {})
                    by_scale[scale] = _add(by_scale.get(scale), g)
            for (out_shape, slot), by_scale in by_slot.items():
                for scale, g in by_scale.items():
                    f, base = factor(slot, g), parts.get(out_shape)
                    if base is None:
                        parts[out_shape] = g * f if scale == 1.0 else g * f * scale
                    else:  # one op for base + scale * g * f
                        parts[out_shape] = torch.addcmul(base, g, f, value=scale)
            total = None
            for part in parts.values():
                total = _add(total, _fit(part, shape))
            result.append(total)
        return (None, None, *result)


def elementwise(fn: Callable | None = None, *, closed_form: bool = False,
                constant: dict[Pair, float] | None = None, saved_dtype: torch.dtype | None = None):
    """Make an element-wise chain an autograd op that keeps derivatives, not inputs.

    Usable as ``op = elementwise(fn, ...)`` or as a decorator ``@elementwise(...)``.
    ``op(*inputs)`` takes tensors broadcastable to one shape (or Python numbers,
    which get no gradient) and returns what ``fn`` returns, a tensor or a tuple.

    Args:
        fn: ``fn(*inputs) -> outputs``, built from element-wise torch ops; with
            ``closed_form``, ``fn(*inputs) -> (outputs, {(j, i): derivative})``.
        closed_form: derivatives come from ``fn`` instead of forward-mode AD.
        constant: ``{(j, i): c}``, pairs known to be constant (forward-mode only).
        saved_dtype: dtype the kept float derivatives are stored in; None keeps
            the computation's dtype (float32 for a float32 model). float16 and
            bfloat16 halve the bytes, within the bound of `storage_error`.

    See the module docstring for what a derivative may be and why this saves
    memory against autograd and time against recomputation. Examples::

        gate = elementwise(lambda x, w: torch.sigmoid(x * w) * x, saved_dtype=torch.bfloat16)

        @elementwise(closed_form=True)
        def fire(v):  # spike with a surrogate derivative, reset to zero: keeps d, and z as bits
            x = v - 1.0
            z = x > 0
            return (v * ~z, z.to(v.dtype)), {(0, 0): ~z, (1, 0): 1.0 / (1.0 + 10.0 * x.abs()) ** 2}
    """
    if fn is None:
        return functools.partial(elementwise, closed_form=closed_form, constant=constant,
                                 saved_dtype=saved_dtype)
    name = getattr(fn, "__name__", repr(fn))
    if saved_dtype is not None and not (isinstance(saved_dtype, torch.dtype) and saved_dtype.is_floating_point):
        raise ValueError(f"elementwise({name}): saved_dtype must be a floating torch dtype "
                        f"(torch.float32, torch.float16, torch.bfloat16), got {saved_dtype!r}")
    if constant and closed_form:
        raise ValueError(f"elementwise({name}): give constant derivatives in the closed form, not in constant=")
    spec = _Spec(fn, closed_form, dict(constant or {}), saved_dtype, name)

    @functools.wraps(fn)
    def op(*inputs):
        tensors = [x for x in inputs if isinstance(x, Tensor)]
        if len({x.shape for x in tensors}) > 1:  # broadcast_shapes costs more than a small step
            try:
                torch.broadcast_shapes(*(x.shape for x in tensors))
            except RuntimeError:
                raise ValueError(f"elementwise({name}): input shapes {[tuple(x.shape) for x in tensors]} "
                                f"do not broadcast to one shape") from None
        if not (torch.is_grad_enabled() and any(x.requires_grad for x in tensors)):
            outputs = fn(*inputs)
            return outputs[0] if closed_form else outputs
        returned_tuple: list[bool] = []
        outputs = _ElementwiseFunction.apply(spec, returned_tuple, *inputs)
        return outputs if returned_tuple[0] else outputs[0]

    op.spec = spec
    return op
