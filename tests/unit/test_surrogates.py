"""Each surrogate's backward equals the derivative of its smooth primitive."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.neuron.surrogates import SURROGATES, spike, surrogate

# Smooth stand-ins for the step function, written independently of the surrogate table;
# autograd of these must match the closed-form derivatives there.
PRIMITIVES = {
    "fast_sigmoid": lambda x, k: x / (1 + k * x.abs()),
    "atan": lambda x, k: torch.atan(math.pi / 2 * k * x) / math.pi,
    "triangle": lambda x, k: torch.where(x.abs() < 1 / k, x - k * x * x.abs() / 2, torch.sign(x) / (2 * k)),
    "boxcar": lambda x, k: torch.clamp(x, -0.5 / k, 0.5 / k),
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
    # two routes to the surrogate derivative: the autograd Function, and the table's closed form the kernels compute
    xs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(spike(xs, name, scale), xs, torch.ones_like(x))
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(surrogate(name).grad(x, scale), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_forward_is_heaviside(name):
    x = torch.tensor([-1.0, -1e-6, 0.0, 1e-6, 2.0])
    assert spike(x, name, 5.0).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_bounded_rows_are_zero_far_from_threshold(name):
    # the flag that makes the listed backward exact must be true to the derivative
    far = torch.tensor([-3.0, 3.0], dtype=torch.float64)
    assert bool((surrogate(name).grad(far, 5.0) == 0).all()) == SURROGATES[name].bounded


def test_atan_has_unit_area():
    # Fang et al.'s normalisation: a step's total gradient is scale-free
    x = torch.linspace(-200, 200, 2_000_001, dtype=torch.float64)
    area = torch.trapezoid(surrogate("atan").grad(x, 4.0), x).item()
    assert area == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", ["fast_sigmoid", "triangle", "boxcar"])
@pytest.mark.parametrize("scale", [0.5, 5.0, 40.0])
def test_peak_one_and_width_one_over_scale(name, scale):
    # scale is a sharpness, never a gain: these peak at 1 at the threshold at every scale (so a bounded
    # surrogate does not multiply the gradient at every step through time), and sharpen as 1/scale
    g = surrogate(name).grad
    assert g(torch.zeros(1, dtype=torch.float64), scale).item() == 1.0
    x = torch.linspace(-4 / scale, 4 / scale, 80_001, dtype=torch.float64)
    assert torch.trapezoid(g(x, scale), x).item() * scale == pytest.approx(
        {"fast_sigmoid": 1.6, "triangle": 1.0, "boxcar": 1.0}[name], abs=2e-3)


def test_unknown_surrogate():
    with pytest.raises(ValueError, match="unknown surrogate 'relu'"):
        surrogate("relu")


def test_codes_are_distinct():
    codes = [s.code for s in SURROGATES.values()]
    assert sorted(codes) == list(range(len(codes)))
