"""Layer outputs and gradients against an explicit unrolled loop written here from the equations."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.config import ModelConfig
from ipu_snn.layers import ALIF, LIF, LIReadout, RecurrentLIF
from ipu_snn.network import build_network
from ipu_snn.neurons import surrogate

SCALE = 5.0


def spike(s):
    # straight-through form of the fast-sigmoid surrogate: forward is the step, backward its primitive's slope
    prim = s / (1 + SCALE * s.abs())
    return (s > 0).to(s.dtype) + prim - prim.detach()


def unrolled(layer, x, *, alif=False):
    """The layer's dynamics, step by step, with the input projection done per step."""
    T, B, _ = x.shape
    n = layer.n_out
    v, a, z = (torch.zeros(B, n, dtype=x.dtype) for _ in range(3))
    beta = layer.beta.clamp(0, 1)
    out = []
    for t in range(T):
        current = x[t] @ layer.fc.weight + layer.fc.bias
        if layer.rec is not None:
            current = current + z @ layer.rec.weight
        v = beta * v + current
        theta = layer.threshold
        if alif:
            a = layer.rho.clamp(0, 1) * a
            theta = layer.threshold + layer.adapt_strength * a
        z = spike(v - theta)
        zr = z.detach() if layer.detach_reset else z
        v = v - zr * theta if layer.reset == "subtract" else v * (1 - zr)
        if alif:
            a = a + z
        out.append(z)
    return torch.stack(out)


def grads(layer, x, fn, weights):
    loss = (fn(x) * weights).sum()
    params = [p for p in layer.parameters()] + [x]
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("kind", ["lif", "rlif", "alif", "alif_ff"])
@settings(max_examples=8, deadline=None)
@given(T=st.integers(1, 30), B=st.integers(1, 4), n_in=st.integers(1, 8), n_out=st.integers(1, 8),
       reset=st.sampled_from(["subtract", "zero"]), detach=st.booleans(), seed=st.integers(0, 2**16))
def test_layer_matches_unrolled_loop(kind, T, B, n_in, n_out, reset, detach, seed):
    torch.manual_seed(seed)
    common = dict(beta=0.8, threshold=0.5, reset=reset, detach_reset=detach, learn_decay=True,
                  spike=surrogate("fast_sigmoid", SCALE))
    layer = {"lif": lambda: LIF(n_in, n_out, **common),
             "rlif": lambda: RecurrentLIF(n_in, n_out, **common),
             "alif": lambda: ALIF(n_in, n_out, rho=0.9, adapt_strength=0.5, **common),
             "alif_ff": lambda: ALIF(n_in, n_out, rho=0.9, adapt_strength=0.5, recurrent=False, **common)}[kind]()
    layer = layer.double()
    x = (torch.rand(T, B, n_in, dtype=torch.float64) < 0.4).double().requires_grad_(True)
    weights = torch.randn(T, B, n_out, dtype=torch.float64)

    torch.testing.assert_close(layer(x), unrolled(layer, x, alif=kind.startswith("alif")))
    got = grads(layer, x, layer, weights)
    expected = grads(layer, x, lambda inp: unrolled(layer, inp, alif=kind.startswith("alif")), weights)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)


def test_readout_integrates_projection():
    torch.manual_seed(0)
    readout = LIReadout(3, 2, beta=0.5).double()
    x = torch.randn(4, 1, 3, dtype=torch.float64)
    v = torch.zeros(1, 2, dtype=torch.float64)
    expected = []
    for t in range(4):
        v = 0.5 * v + readout.fc(x[t])
        expected.append(v)
    torch.testing.assert_close(readout(x), torch.stack(expected))


def test_learn_decay_makes_beta_a_parameter():
    assert "beta" in dict(LIF(2, 3, learn_decay=True).named_parameters())
    assert "beta" not in dict(LIF(2, 3, learn_decay=False).named_parameters())


def test_network_shapes_and_tau():
    cfg = ModelConfig.model_validate({"layers": [{"type": "rlif", "size": 16, "tau": 0.02},
                                                 {"type": "alif", "size": 8}],
                                      "readout": {"reduce": "max"}})
    net = build_network(cfg, n_inputs=5, n_classes=3, dt=0.01)
    out = net(torch.rand(2, 7, 5))
    assert out.logits.shape == (2, 3) and len(out.rates) == 2
    assert net.layers[0].beta[0].item() == pytest.approx(torch.exp(torch.tensor(-0.5)).item())
