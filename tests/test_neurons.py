"""Step functions against values computed by hand."""

import pytest
import torch

from ipu_snn.neurons import (ALIFParams, ALIFState, LIFParams, LIFState, LIParams, LIState, alif_step,
                             li_step, lif_step)


def run(step, params, state, currents):
    trace = []
    for c in currents:
        state, out = step(params, state, torch.tensor([c], dtype=torch.float64))
        trace.append((state, out.item()))
    return trace


def test_lif_subtract_reset():
    # beta 0.5, threshold 1:  v = 0.6, 0.9, 1.05 -> spike, 0.05 -> 0.025 -> 2.0125 -> spike, 1.0125
    trace = run(lif_step, LIFParams(beta=0.5, threshold=1.0, reset="subtract"),
                LIFState(torch.zeros(1, dtype=torch.float64)), [0.6, 0.6, 0.6, 0.0, 2.0])
    assert [z for _, z in trace] == [0, 0, 1, 0, 1]
    assert [s.v.item() for s, _ in trace] == pytest.approx([0.6, 0.9, 0.05, 0.025, 1.0125])


def test_lif_zero_reset():
    trace = run(lif_step, LIFParams(beta=0.5, threshold=1.0, reset="zero"),
                LIFState(torch.zeros(1, dtype=torch.float64)), [0.6, 0.6, 0.6, 0.0, 2.0])
    assert [z for _, z in trace] == [0, 0, 1, 0, 1]
    assert [s.v.item() for s, _ in trace] == pytest.approx([0.6, 0.9, 0.0, 0.0, 0.0])


def test_alif_threshold_adapts():
    # beta 1 (no leak), rho 0.5, adaptation strength 1, threshold 1, subtract reset:
    # t0: v=1.2, a=0, theta=1 -> spike; v=0.2, a=1
    # t1: v=1.4, a=0.5, theta=1.5 -> no spike (a plain LIF would fire here)
    # t2: v=2.6, a=0.25, theta=1.25 -> spike; v=1.35, a=1.25
    p = ALIFParams(beta=1.0, rho=0.5, adapt_strength=1.0, threshold=1.0, reset="subtract")
    zero = torch.zeros(1, dtype=torch.float64)
    trace = run(alif_step, p, ALIFState(zero, zero), [1.2, 1.2, 1.2])
    assert [z for _, z in trace] == [1, 0, 1]
    assert [s.v.item() for s, _ in trace] == pytest.approx([0.2, 1.4, 1.35])
    assert [s.a.item() for s, _ in trace] == pytest.approx([1.0, 0.5, 1.25])


def test_li_integrates():
    trace = run(li_step, LIParams(beta=0.5), LIState(torch.zeros(1, dtype=torch.float64)), [1.0, 0.0, 2.0])
    assert [v for _, v in trace] == pytest.approx([1.0, 0.5, 2.25])


def test_per_neuron_beta_broadcasts():
    beta = torch.tensor([0.0, 1.0])
    state, z = lif_step(LIFParams(beta=beta, threshold=10.0), LIFState(torch.ones(3, 2)), torch.ones(3, 2))
    assert state.v[:, 0].tolist() == [1.0] * 3 and state.v[:, 1].tolist() == [2.0] * 3
