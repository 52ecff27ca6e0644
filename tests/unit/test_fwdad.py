"""Nested forward-mode AD: the element-wise op and the LIF/ALIF updates built on it,
against plain autograd, with the bytes they keep for backward."""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.bptt.fwdad import Affine, elementwise, storage_error
from ipu_snn.neuron.surrogates import spike as surrogate_spike
from ipu_snn.neuron.surrogates import surrogate

F64 = torch.float64


def saved_during(fn, *args, **kwargs):
    """fn's result and every tensor autograd kept while it ran."""
    kept = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return out, kept


def grads(outputs, inputs, weights):
    """Gradients of sum_j <weights_j, outputs_j>, zeros for inputs an output does not reach."""
    loss = sum((w * y).sum() for w, y in zip(weights, outputs) if y.requires_grad)
    if not isinstance(loss, torch.Tensor):  # no output reaches an input that requires grad
        return [torch.zeros_like(x) for x in inputs]
    got = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(got, inputs)]


# ------------------------------------------------------------------- random chains

UNARY = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "exp_tanh": lambda a: torch.exp(torch.tanh(a)),
    "gauss": lambda a: torch.exp(-a * a),
    "sin": torch.sin,
    "square": lambda a: a * a,
    "neg": torch.neg,
}
BINARY = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "ratio": lambda a, b: a / (1.0 + b * b),
    "where": lambda a, b: torch.where(a > b, a * b, a - b),
    "max": torch.maximum,
}


@st.composite
def chains(draw):
    """(inputs, which require grad, program, output positions). Inputs: x [B, N], optionally
    y [B, N] and a per-column parameter p [N]; a program step applies one op to earlier values."""
    B, N = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    shapes = [(B, N)] + [s for s in [(B, N), (N,)] if draw(st.booleans())]
    wants = draw(st.lists(st.booleans(), min_size=len(shapes), max_size=len(shapes)).filter(any))
    program = []
    for _ in range(draw(st.integers(1, 6))):
        live = len(shapes) + len(program)
        if draw(st.booleans()):
            program.append((draw(st.sampled_from(sorted(UNARY))), draw(st.integers(0, live - 1))))
        else:
            program.append((draw(st.sampled_from(sorted(BINARY))), draw(st.integers(0, live - 1)),
                            draw(st.integers(0, live - 1))))
    last = len(shapes) + len(program) - 1
    outputs = sorted({last, draw(st.integers(len(shapes), last))})
    return shapes, wants, program, outputs, draw(st.integers(0, 2**31 - 1))


def run_program(program, outputs, *inputs):
    values = list(inputs)
    for name, *args in program:
        values.append((UNARY.get(name) or BINARY[name])(*(values[a] for a in args)))
    return tuple(values[k] for k in outputs)


@settings(max_examples=60, deadline=None)
@given(chain=chains())
def test_random_chain_matches_autograd_and_keeps_only_derivatives(chain):
    shapes, wants, program, outputs, seed = chain
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(s, dtype=F64, generator=gen).requires_grad_(w) for s, w in zip(shapes, wants)]
    op = elementwise(lambda *xs: run_program(program, outputs, *xs))

    expected_out = run_program(program, outputs, *inputs)
    got_out, kept = saved_during(op, *inputs)
    for e, g in zip(expected_out, got_out):
        torch.testing.assert_close(g, e, rtol=0, atol=0)

    weights = [torch.randn(y.shape, dtype=F64, generator=gen) for y in expected_out]
    wanted = [x for x in inputs if x.requires_grad]
    for e, g in zip(grads(expected_out, wanted, weights), grads(got_out, wanted, weights)):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    # one derivative per (output, input requiring grad), none of them an input
    assert len(kept) == len(outputs) * len(wanted)
    assert not any(k is x for k in kept for x in inputs)


def test_constant_pairs_are_neither_evaluated_nor_kept():
    calls = []

    def chain(x, b):
        calls.append(1)
        return torch.tanh(x) * 3.0 + b, torch.sigmoid(x)

    x = torch.randn(5, 4, dtype=F64, requires_grad=True)
    b = torch.randn(4, dtype=F64, requires_grad=True)
    op = elementwise(chain, constant={(0, 1): 1.0, (1, 1): 0.0})
    out, kept = saved_during(op, x, b)
    assert len(calls) == 1  # one jvp, for x; b's derivatives are all declared
    assert len(kept) == 2 and all(k.shape == (5, 4) for k in kept)
    w = [torch.randn(5, 4, dtype=F64) for _ in range(2)]
    calls.clear()
    for e, g in zip(grads(chain(x, b), [x, b], w), grads(out, [x, b], w)):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


def test_closed_form_gives_a_heaviside_its_surrogate():
    @elementwise(closed_form=True)
    def fire(v, p):
        x = v * p - 1.0
        z = (x > 0).to(v.dtype)
        d = surrogate("triangle").grad(x, 2.0)
        return (z, v * (1.0 - z)), {(0, 0): d * p, (0, 1): d * v, (1, 0): Affine(z > 0, -1.0, 1.0), (1, 1): 0.0}

    v = (torch.randn(6, 5, dtype=F64) + 1).requires_grad_()
    p = (torch.rand(5, dtype=F64) + 0.5).requires_grad_()
    z_ref = surrogate_spike(v * p - 1.0, "triangle", 2.0)
    expected = (z_ref, v * (1.0 - z_ref.detach()))
    got, kept = saved_during(fire, v, p)
    assert 0 < float(got[0].detach().sum()) < got[0].numel()
    assert sum(k.dtype == torch.uint8 for k in kept) == 1  # the reset mask, as bits
    w = [torch.randn(6, 5, dtype=F64) for _ in range(2)]
    for e, g in zip(grads(expected, [v, p], w), grads(got, [v, p], w)):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


def test_bad_use_is_a_clear_error():
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"no derivative .* \[\(1, 0\)\]"):
        elementwise(lambda v: ((v * 2, v * v), {(0, 0): 2.0}), closed_form=True)(x)
    with pytest.raises(ValueError, match=r"\(3, 4\), \(5,\)"):
        elementwise(torch.mul)(x, torch.randn(5))
    with pytest.raises(ValueError, match="saved_dtype"):
        elementwise(torch.tanh, saved_dtype=torch.int8)
    with pytest.raises(TypeError, match=r"\(outputs, "):
        elementwise(torch.tanh, closed_form=True)(x)


def test_no_grad_needed_runs_the_plain_chain():
    x = torch.randn(3, 4)
    out, kept = saved_during(elementwise(torch.tanh), x)
    assert kept == [] and torch.equal(out, torch.tanh(x))


# ---------------------------------------------------------------- reduced precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_error_is_within_the_stated_bound(dtype):
    gen = torch.Generator().manual_seed(1)
    x = (2 * torch.randn(64, 33, dtype=F64, generator=gen)).requires_grad_()
    p = torch.randn(33, dtype=F64, generator=gen).requires_grad_()

    def chain(x, p):
        return torch.tanh(x * p) * torch.exp(-x * x / 4), torch.sigmoid(x + p) * x

    w = [torch.randn(64, 33, dtype=F64, generator=gen) for _ in range(2)]
    exact = grads(chain(x, p), [x, p], w)
    got = grads(elementwise(chain, saved_dtype=dtype)(x, p), [x, p], w)

    rel, abs_ = storage_error(dtype)
    for i, (e, g, inp) in enumerate(zip(exact, got, (x, p))):
        tangent = [1.0 if k == i else 0.0 for k in range(2)]
        _, D = torch.func.jvp(chain, (x.detach(), p.detach()),
                              tuple(torch.full_like(t, c) for t, c in zip((x, p), tangent)))
        per_element = sum(wj.abs() * (rel * Dj.abs() + abs_) for wj, Dj in zip(w, D))
        bound = per_element.sum_to_size(inp.shape) + 1e-13 * (1 + e.abs())
        err = (g - e).abs()
        assert bool((err <= bound).all()), f"error {float((err - bound).max())} over the bound"
        assert float(err.max()) > 0  # reduced storage must actually have rounded


def test_storage_error_is_the_unit_roundoff():
    assert storage_error(torch.float16) == (2.0**-11, 2.0**-25)
    assert storage_error(torch.bfloat16)[0] == 2.0**-8
    assert storage_error(torch.float32)[0] == 2.0**-24
