"""Nested forward-mode AD: the element-wise op and the LIF/ALIF updates built on it,
against plain autograd, with the bytes they keep for backward."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn import neurons
from ipu_snn.bptt.fwdad import Affine, elementwise, storage_error
from ipu_snn.ops.neuron_ops import pack_spikes
from ipu_snn.bptt.fwdad_neurons import alif_step_fwdad, alif_update_fwdad, lif_step_fwdad, lif_update_fwdad
from ipu_snn.errors import UserError

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
    spike = neurons.surrogate("triangle", 2.0)

    @elementwise(closed_form=True)
    def fire(v, p):
        x = v * p - 1.0
        z = (x > 0).to(v.dtype)
        d = spike.grad(x)
        return (z, v * (1.0 - z)), {(0, 0): d * p, (0, 1): d * v, (1, 0): Affine(z > 0, -1.0, 1.0), (1, 1): 0.0}

    v = (torch.randn(6, 5, dtype=F64) + 1).requires_grad_()
    p = (torch.rand(5, dtype=F64) + 0.5).requires_grad_()
    z_ref = spike(v * p - 1.0)
    expected = (z_ref, v * (1.0 - z_ref.detach()))
    got, kept = saved_during(fire, v, p)
    assert 0 < float(got[0].detach().sum()) < got[0].numel()
    assert sum(k.dtype == torch.uint8 for k in kept) == 1  # the reset mask, as bits
    w = [torch.randn(6, 5, dtype=F64) for _ in range(2)]
    for e, g in zip(grads(expected, [v, p], w), grads(got, [v, p], w)):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


def test_bad_use_is_a_clear_error():
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(UserError, match=r"no derivative .* \[\(1, 0\)\]"):
        elementwise(lambda v: ((v * 2, v * v), {(0, 0): 2.0}), closed_form=True)(x)
    with pytest.raises(UserError, match=r"\(3, 4\), \(5,\)"):
        elementwise(torch.mul)(x, torch.randn(5))
    with pytest.raises(UserError, match="saved_dtype"):
        elementwise(torch.tanh, saved_dtype=torch.int8)
    with pytest.raises(UserError, match=r"\(outputs, "):
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


# ----------------------------------------------------------------------- LIF / ALIF

SURROGATES = sorted(neurons.SURROGATE_GRADS)


def unrolled(step, params, state, currents, weights):
    """sum over steps of <w, z> + <w', v> (+ <w'', a>): touches every output of every step."""
    loss = 0.0
    for current, w in zip(currents, weights):
        state, z = step(params, state, current)
        loss = loss + (w[0] * z).sum() + (w[1] * state.v).sum()
        if isinstance(state, neurons.ALIFState):
            loss = loss + (w[2] * state.a).sum()
    return loss


def seed(reset, surrogate, learn):
    return 8 * SURROGATES.index(surrogate) + 2 * (reset == "zero") + learn


def make_case(seed, T=6, B=4, N=11):
    gen = torch.Generator().manual_seed(seed)
    currents = (0.9 * torch.randn(T, B, N, dtype=F64, generator=gen) + 0.4).requires_grad_()
    v0 = torch.randn(B, N, dtype=F64, generator=gen).requires_grad_()
    a0 = torch.rand(B, N, dtype=F64, generator=gen).requires_grad_()
    decays = [(0.5 + 0.5 * torch.rand(N, dtype=F64, generator=gen)) for _ in range(2)]
    weights = torch.randn(T, 3, B, N, dtype=F64, generator=gen)
    return currents, v0, a0, decays, weights


def assert_same_gradients(reference, fwdad, inputs):
    expected = torch.autograd.grad(reference, inputs)
    got = torch.autograd.grad(fwdad, inputs)
    for e, g in zip(expected, got):
        assert float(e.abs().sum()) > 0
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("learn", [False, True], ids=["fixed_beta", "learned_beta"])
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_lif_matches_autograd_through_lif_step(reset, surrogate, learn):
    currents, v0, _, (beta, _), weights = make_case(seed(reset, surrogate, learn))
    beta.requires_grad_(learn)
    params = neurons.LIFParams(beta, 1.0, reset, spike=neurons.surrogate(surrogate, 2.0))
    state = neurons.LIFState(v0)
    ref = unrolled(neurons.lif_step, params, state, currents, weights)
    fwd = unrolled(lif_step_fwdad, params, state, currents, weights)
    torch.testing.assert_close(fwd, ref, rtol=0, atol=0)
    assert_same_gradients(ref, fwd, [currents, v0] + ([beta] if learn else []))


@pytest.mark.parametrize("learn", [False, True], ids=["fixed_decays", "learned_decays"])
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_alif_matches_autograd_through_alif_step(reset, surrogate, learn):
    currents, v0, a0, (beta, rho), weights = make_case(seed(reset, surrogate, learn) + 100)
    beta.requires_grad_(learn), rho.requires_grad_(learn)
    params = neurons.ALIFParams(beta, rho, 0.7, 1.0, reset, spike=neurons.surrogate(surrogate, 2.0))
    state = neurons.ALIFState(v0, a0)
    ref = unrolled(neurons.alif_step, params, state, currents, weights)
    fwd = unrolled(alif_step_fwdad, params, state, currents, weights)
    torch.testing.assert_close(fwd, ref, rtol=0, atol=0)
    assert_same_gradients(ref, fwd, [currents, v0, a0] + ([beta, rho] if learn else []))


def test_lif_in_bfloat16_storage_stays_within_the_bound():
    # one step: grad_current = grad_v + grad_z * d, so only d's rounding enters
    gen = torch.Generator().manual_seed(3)
    current = (torch.randn(32, 40, dtype=F64, generator=gen) + 0.8).requires_grad_()
    v_prev, beta = torch.randn(32, 40, dtype=F64, generator=gen), torch.full((40,), 0.9, dtype=F64)
    gz, gv = torch.randn(2, 32, 40, dtype=F64, generator=gen)
    spike = neurons.surrogate("fast_sigmoid", 5.0)
    v, z = lif_update_fwdad(current, v_prev, beta, spike=spike, saved_dtype=torch.bfloat16)
    (got,) = torch.autograd.grad((gz * z + gv * v).sum(), current)
    d = spike.grad(beta * v_prev + current.detach() - 1.0)
    rel, abs_ = storage_error(torch.bfloat16)
    err = (got - (gv + gz * d)).abs()
    assert bool((err <= gz.abs() * (rel * d + abs_) + 1e-15).all()) and float(err.max()) > 0


def test_detach_reset_false_is_refused():
    params = neurons.LIFParams(0.9, detach_reset=False)
    with pytest.raises(UserError, match="detach_reset=True"):
        lif_step_fwdad(params, neurons.LIFState(torch.zeros(2, 3)), torch.ones(2, 3))
    with pytest.raises(UserError, match="reset must be"):
        lif_update_fwdad(torch.ones(2, 3), torch.zeros(2, 3), 0.9, reset="hard")


# ------------------------------------------------------------------- what is kept


def classify(kept, caller_owned):
    """Kept tensors less those the caller already holds (decays, a learned decay's state)."""
    return [k for k in kept if not any(k is c for c in caller_owned)]


@pytest.mark.parametrize("saved_dtype", [None, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("learn", [False, True])
def test_lif_keeps_the_derivative_and_bits_only(reset, learn, saved_dtype):
    B, N = 5, 13
    current = (torch.randn(B, N) + 0.8).requires_grad_()
    v_prev = torch.randn(B, N).requires_grad_()
    beta = torch.full((N,), 0.9, requires_grad=learn)
    spike = neurons.surrogate("atan", 2.0)
    (v, z), kept = saved_during(lif_update_fwdad, current, v_prev, beta, reset=reset, spike=spike,
                                saved_dtype=saved_dtype)

    # beta is referenced, not copied; v_prev is kept only for a learned beta (dv/dbeta = v_prev)
    assert any(k is beta for k in kept)
    assert any(k is v_prev for k in kept) == learn
    new = classify(kept, [beta, v_prev])
    floats = [k for k in new if k.is_floating_point()]
    bits = [k for k in new if k.dtype == torch.uint8]
    assert len(floats) + len(bits) == len(new)
    assert len(floats) == 1 and floats[0].shape == (B, N) and floats[0].dtype == (saved_dtype or torch.float32)
    x = beta.detach() * v_prev.detach() + current.detach() - 1.0
    torch.testing.assert_close(floats[0].float(), spike.grad(x).to(floats[0].dtype).float())
    if reset == "zero":
        assert len(bits) == 1 and torch.equal(bits[0], pack_spikes(z.detach() > 0))
    else:
        assert bits == []  # the subtract reset's backward never reads z
    per_neuron = sum(k.numel() * k.element_size() for k in new) / (B * N)
    assert per_neuron == (saved_dtype or torch.float32).itemsize + (math.ceil(N / 8) / N if reset == "zero" else 0)


@pytest.mark.parametrize("learn", [False, True])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_alif_keeps_the_derivative_and_bits_only(reset, learn):
    B, N = 4, 10
    current = (torch.randn(B, N) + 0.8).requires_grad_()
    v_prev, a_prev = torch.randn(B, N).requires_grad_(), torch.rand(B, N).requires_grad_()
    beta, rho = torch.full((N,), 0.9, requires_grad=learn), torch.full((N,), 0.95, requires_grad=learn)
    (v, a, z), kept = saved_during(alif_update_fwdad, current, v_prev, a_prev, beta, rho, reset=reset,
                                   saved_dtype=torch.float16)
    # the pre-step state is kept only for learned decays (dv/dbeta = v_prev, da/drho = a_prev)
    assert any(k is v_prev for k in kept) == learn and any(k is a_prev for k in kept) == learn
    new = classify(kept, [beta, rho, v_prev, a_prev])
    assert sorted((str(k.dtype), tuple(k.shape)) for k in new) == [
        ("torch.float16", (B, N)), ("torch.uint8", (B, math.ceil(N / 8)))
    ]
    assert torch.equal(next(k for k in new if k.dtype == torch.uint8), pack_spikes(z > 0))
