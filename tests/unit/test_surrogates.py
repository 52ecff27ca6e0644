"""Each surrogate's backward equals the derivative of its smooth primitive."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.neuron.surrogates import SURROGATES, spike, straight_through_spike, surrogate

# Smooth stand-ins for the step function, written independently of the surrogate table;
# autograd of these must match the closed-form derivatives there.
PRIMITIVES = {
    "fast_sigmoid": lambda x, k: x / (1 + k * x.abs()),
    "atan": lambda x, k: torch.atan(math.pi / 2 * k * x) / math.pi,
    "triangle": lambda x, k: torch.where(x.abs() < 1 / k, k * x - k * k * x * x.abs() / 2, torch.sign(x) / 2),
    "boxcar": lambda x, k: torch.clamp(k * x, -0.5, 0.5),
}


@pytest.mark.parametrize("name", sorted(SURROGATES))
@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=40),
       scale=st.floats(0.5, 50.0))
def test_backward_matches_primitive(name, values, scale):
    x = torch.tensor(values, dtype=torch.float64)
    # keep clear of the kinks of triangle and boxcar, where the derivative jumps
    x = x[((x.abs() - 1 / scale).abs() > 1e-6) & ((x.abs() - 0.5 / scale).abs() > 1e-6)]
    xp = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(PRIMITIVES[name](xp, scale).sum(), xp)
    # three routes to the surrogate derivative: the autograd Function, the straight-through spike
    # (the table's primitive, as PopTorch traces it), and the table's closed form the kernels compute
    for spike_fn in (spike, straight_through_spike):
        xs = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(spike_fn(xs, name, scale), xs, torch.ones_like(x))
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(surrogate(name).grad(x, scale), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_forward_is_heaviside(name):
    x = torch.tensor([-1.0, -1e-6, 0.0, 1e-6, 2.0])
    assert spike(x, name, 5.0).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert straight_through_spike(x, name, 5.0).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_bounded_rows_are_zero_far_from_threshold(name):
    # the flag that makes the listed backward exact must be true to the derivative
    far = torch.tensor([-3.0, 3.0], dtype=torch.float64)
    assert bool((surrogate(name).grad(far, 5.0) == 0).all()) == SURROGATES[name].bounded


@pytest.mark.parametrize("name", ["triangle", "boxcar", "atan"])
def test_unit_area(name):
    # the normalised surrogates integrate to one: a step's total gradient is scale-free
    x = torch.linspace(-200, 200, 2_000_001, dtype=torch.float64)
    area = torch.trapezoid(surrogate(name).grad(x, 4.0), x).item()
    assert area == pytest.approx(1.0, abs=2e-3)


def test_unknown_surrogate():
    with pytest.raises(ValueError, match="unknown surrogate 'relu'"):
        surrogate("relu")


def test_codes_are_distinct():
    codes = [s.code for s in SURROGATES.values()]
    assert sorted(codes) == list(range(len(codes)))
