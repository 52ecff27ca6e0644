"""The reference step functions against values computed by hand, and the spec's checks."""

import pytest
import torch

from ipu_snn.neuron.reference import li_step, step
from ipu_snn.neuron.spec import NeuronSpec

F64 = torch.float64


def run(spec, beta, rho, currents):
    v = torch.zeros(1, dtype=F64)
    a = torch.zeros(1, dtype=F64) if spec.model == "alif" else None
    trace = []
    for c in currents:
        v, a, z = step(spec, torch.tensor(beta, dtype=F64), None if rho is None else torch.tensor(rho, dtype=F64),
                       v, a, torch.tensor([c], dtype=F64))
        trace.append((v.item(), None if a is None else a.item(), z.item()))
    return trace


def test_lif_subtract_reset():
    # beta 0.5, threshold 1:  v = 0.6, 0.9, 1.05 -> spike, 0.05 -> 0.025 -> 2.0125 -> spike, 1.0125
    trace = run(NeuronSpec(threshold=1.0, reset="subtract"), 0.5, None, [0.6, 0.6, 0.6, 0.0, 2.0])
    assert [z for *_, z in trace] == [0, 0, 1, 0, 1]
    assert [v for v, *_ in trace] == pytest.approx([0.6, 0.9, 0.05, 0.025, 1.0125])


def test_lif_zero_reset():
    trace = run(NeuronSpec(threshold=1.0, reset="zero"), 0.5, None, [0.6, 0.6, 0.6, 0.0, 2.0])
    assert [z for *_, z in trace] == [0, 0, 1, 0, 1]
    assert [v for v, *_ in trace] == pytest.approx([0.6, 0.9, 0.0, 0.0, 0.0])


def test_alif_threshold_adapts():
    # beta 1 (no leak), rho 0.5, adaptation strength 1, threshold 1, subtract reset:
    # t0: v=1.2, a=0, theta=1 -> spike; v=0.2, a=1
    # t1: v=1.4, a=0.5, theta=1.5 -> no spike (a plain LIF would fire here)
    # t2: v=2.6, a=0.25, theta=1.25 -> spike; v=1.35, a=1.25
    trace = run(NeuronSpec("alif", threshold=1.0, adapt_strength=1.0), 1.0, 0.5, [1.2, 1.2, 1.2])
    assert [z for *_, z in trace] == [1, 0, 1]
    assert [v for v, *_ in trace] == pytest.approx([0.2, 1.4, 1.35])
    assert [a for _, a, _ in trace] == pytest.approx([1.0, 0.5, 1.25])


def test_li_integrates():
    v, trace = torch.zeros(1, dtype=F64), []
    for c in [1.0, 0.0, 2.0]:
        v = li_step(torch.tensor(0.5, dtype=F64), v, torch.tensor([c], dtype=F64))
        trace.append(v.item())
    assert trace == pytest.approx([1.0, 0.5, 2.25])


def test_per_neuron_beta_broadcasts():
    v, _, z = step(NeuronSpec(threshold=10.0), torch.tensor([0.0, 1.0]), None, torch.ones(3, 2), None,
                   torch.ones(3, 2))
    assert v[:, 0].tolist() == [1.0] * 3 and v[:, 1].tolist() == [2.0] * 3


@pytest.mark.parametrize("change, message", [
    ({"reset": "hard"}, "reset must be one of"), ({"surrogate": "relu"}, "surrogate must be one of"),
    ({"scale": 0.0}, "scale must be a positive number"), ({"threshold": float("nan")}, "must be finite"),
])
def test_spec_rejects_what_no_kernel_implements(change, message):
    with pytest.raises(ValueError, match=message):
        NeuronSpec(**change)
