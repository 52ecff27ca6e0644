"""Layer windows in every step mode against an explicit unrolled loop written here from the equations."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.config import ModelConfig
from ipu_snn.layers import LayerPolicies, LIReadout, SpikingLayer
from ipu_snn.network import build_network, step_mode
from ipu_snn.neuron.spec import NeuronSpec
from ipu_snn.ops.policy import SparsePolicy

SCALE = 5.0


def spike(s):
    # straight-through form of the fast-sigmoid surrogate: forward is the step, backward its primitive's slope
    prim = s / (1 + SCALE * s.abs())
    return (s > 0).to(s.dtype) + prim - prim.detach()


def unrolled(layer, x):
    """The layer's dynamics, step by step, with the input projection done per step."""
    T, B, _ = x.shape
    n, spec = layer.n_out, layer.spec
    v, a, z = (torch.zeros(B, n, dtype=x.dtype) for _ in range(3))
    beta = layer.beta.clamp(0, 1)
    out = []
    for t in range(T):
        current = x[t] @ layer.fc.weight + layer.fc.bias
        if layer.rec is not None:
            current = current + z @ layer.rec.weight
        v = beta * v + current
        theta = spec.threshold
        if spec.model == "alif":
            a = layer.rho.clamp(0, 1) * a
            theta = spec.threshold + spec.adapt_strength * a
        z = spike(v - theta)
        zr = z.detach() if spec.detach_reset else z
        v = v - zr * theta if spec.reset == "subtract" else v * (1 - zr)
        if spec.model == "alif":
            a = a + z
        out.append(z)
    return torch.stack(out)


def run_window(layer, x):
    train, _, _ = layer.window(layer.initial_state(x.shape[1], x), x)
    return train.z


def grads(layer, x, fn, weights):
    loss = (fn(x) * weights).sum()
    return torch.autograd.grad(loss, [*layer.parameters(), x])


@pytest.mark.parametrize("mode", ["autograd", "fused"])
@pytest.mark.parametrize("kind", ["lif", "rlif", "alif", "alif_ff"])
@settings(max_examples=8, deadline=None)
@given(T=st.integers(1, 30), B=st.integers(1, 4), n_in=st.integers(1, 8), n_out=st.integers(1, 8),
       reset=st.sampled_from(["subtract", "zero"]), detach=st.booleans(), seed=st.integers(0, 2**16))
def test_layer_window_matches_unrolled_loop(mode, kind, T, B, n_in, n_out, reset, detach, seed):
    if mode == "fused" and not detach:
        detach = True  # the fused mode implements the detached reset only (build_network says so)
    torch.manual_seed(seed)
    adaptive = kind.startswith("alif")
    spec = NeuronSpec("alif" if adaptive else "lif", 0.5, 0.5 if adaptive else 0.0, reset, "fast_sigmoid", SCALE, detach)
    recurrent = kind in ("rlif", "alif")
    layer = SpikingLayer(n_in, n_out, spec, beta=0.8, decays={"rho": 0.9} if adaptive else None, learn_decay=True,
                         policies=LayerPolicies(SparsePolicy(), SparsePolicy() if recurrent else None),
                         mode=mode).double()
    x = (torch.rand(T, B, n_in, dtype=torch.float64) < 0.4).double().requires_grad_(True)
    weights = torch.randn(T, B, n_out, dtype=torch.float64)

    torch.testing.assert_close(run_window(layer, x), unrolled(layer, x))
    got = grads(layer, x, lambda inp: run_window(layer, inp), weights)
    expected = grads(layer, x, lambda inp: unrolled(layer, inp), weights)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mode", ["autograd", "fused"])
def test_readout_integrates_projection(mode):
    torch.manual_seed(0)
    readout = LIReadout(3, 2, beta=0.5, mode=mode).double()
    x = torch.randn(4, 1, 3, dtype=torch.float64)
    v = torch.zeros(1, 2, dtype=torch.float64)
    expected = []
    for t in range(4):
        v = 0.5 * v + x[t] @ readout.fc.weight + readout.fc.bias
        expected.append(v)
    trace, last, _ = readout.window(readout.initial_state(1, x), x)
    torch.testing.assert_close(trace, torch.stack(expected))
    torch.testing.assert_close(last, expected[-1])


def test_learn_decay_makes_beta_a_parameter():
    spec = NeuronSpec()
    assert "beta" in dict(SpikingLayer(2, 3, spec, beta=0.9, learn_decay=True).named_parameters())
    assert "beta" not in dict(SpikingLayer(2, 3, spec, beta=0.9, learn_decay=False).named_parameters())


def test_network_shapes_and_tau():
    cfg = ModelConfig.model_validate({"layers": [{"type": "rlif", "size": 16, "tau": 0.02},
                                                 {"type": "alif", "size": 8}],
                                      "readout": {"reduce": "max"}})
    net = build_network(cfg, n_inputs=5, n_classes=3, dt=0.01)
    out = net(torch.rand(2, 7, 5))
    assert out.logits.shape == (2, 3) and out.rates.shape == (2, 2) and out.dropped.shape == (2,)
    assert net.layers[0].beta[0].item() == pytest.approx(torch.exp(torch.tensor(-0.5)).item())
    # the state dict keeps the names checkpoints have always had
    assert {"layers.0.fc.weight", "layers.0.fc.bias", "layers.0.rec.weight", "layers.1.rho",
            "readout.fc.weight", "readout.beta"} <= set(net.state_dict())


def test_step_mode_is_decided_once_from_the_config():
    cfg = ModelConfig.model_validate({"layers": [{"type": "rlif", "size": 4}]})
    assert step_mode(cfg) == "fused"
    assert step_mode(cfg.model_copy(update={"fused": False})) == "autograd"
    attached = ModelConfig.model_validate({"layers": [{"type": "rlif", "size": 4, "detach_reset": False}]})
    assert step_mode(attached) == "autograd"
    net = build_network(attached, 3, 2, dt=1e-3)
    assert net.mode == "autograd" and all(layer.mode == "autograd" for layer in net.layers)
