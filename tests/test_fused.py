"""The fused time loop (ipu_snn.fused) against the plain loop's autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn import neurons
from ipu_snn.config import ModelConfig
from ipu_snn.errors import ConfigError
from ipu_snn.fused import FusedLoop, FusedSpec, binary_linear, leaky_integrate, spiking_scan
from ipu_snn.network import build_network
from ipu_snn.saved_bytes import saved_bytes

SURROGATES = ["fast_sigmoid", "atan", "triangle", "boxcar"]


def plain_scan(currents, w_rec, beta, rho, spec: FusedSpec):
    """The same layer through the pure step functions and autograd."""
    spike = neurons.surrogate(spec.surrogate, spec.scale)
    batch, n = currents.shape[1:]
    v = currents.new_zeros(batch, n)
    a = currents.new_zeros(batch, n)
    z = currents.new_zeros(batch, n)
    out = []
    for current in currents.unbind(0):
        if w_rec is not None:
            current = current + z @ w_rec
        if spec.alif:
            params = neurons.ALIFParams(beta, rho, spec.adapt_strength, spec.threshold, spec.reset, True, spike)
            (v, a), z = neurons.alif_step(params, neurons.ALIFState(v, a), current)
        else:
            params = neurons.LIFParams(beta, spec.threshold, spec.reset, True, spike)
            (v,), z = neurons.lif_step(params, neurons.LIFState(v), current)
        out.append(z)
    return torch.stack(out)


def random_layer(steps, batch, n, recurrent, alif, learn, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    currents = (torch.randn(steps, batch, n, generator=g, dtype=dtype) * 0.8 + 0.3).requires_grad_()
    w_rec = (torch.randn(n, n, generator=g, dtype=dtype) / n ** 0.5).requires_grad_() if recurrent else None
    beta = (0.5 + 0.5 * torch.rand(n, generator=g, dtype=dtype)).requires_grad_(learn)
    rho = (0.8 + 0.2 * torch.rand(n, generator=g, dtype=dtype)).requires_grad_(learn) if alif else None
    return currents, w_rec, beta, rho


def grads(out, inputs, seed):
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 7), dtype=out.dtype)
    live = [t for t in inputs if t is not None and t.requires_grad]
    return out, torch.autograd.grad((out * weights).sum(), live)


@settings(max_examples=12, deadline=None)
@given(steps=st.integers(1, 12), batch=st.integers(1, 3), n=st.integers(1, 19), recurrent=st.booleans(),
       alif=st.booleans(), learn=st.booleans(), reset=st.sampled_from(["subtract", "zero"]),
       surrogate=st.sampled_from(SURROGATES), seed=st.integers(0, 2**16))
def test_scan_equals_autograd_of_the_step_functions(steps, batch, n, recurrent, alif, learn, reset, surrogate,
                                                      seed):
    spec = FusedSpec(alif, 1.0, 1.8 if alif else 0.0, reset, surrogate, 5.0)
    layer = random_layer(steps, batch, n, recurrent, alif, learn, seed)
    fused, g_fused = grads(spiking_scan(*layer, spec, FusedLoop(backend="reference")), layer, seed)
    plain, g_plain = grads(plain_scan(*layer, spec), layer, seed)
    assert torch.equal(fused, plain)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("alif", [False, True])
def test_scan_on_the_cpu_kernels_equals_autograd(alif):
    spec = FusedSpec(alif, 1.0, 1.8 if alif else 0.0, "subtract", "fast_sigmoid", 10.0)
    layer = random_layer(30, 4, 37, True, alif, True, seed=3, dtype=torch.float32)
    fused, g_fused = grads(spiking_scan(*layer, spec, FusedLoop(backend="cpu")), layer, 3)
    plain, g_plain = grads(plain_scan(*layer, spec), layer, 3)
    assert torch.equal(fused, plain)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_reduced_precision_derivatives_stay_within_their_bound():
    layer = random_layer(40, 8, 64, True, False, True, seed=5, dtype=torch.float32)
    spec = FusedSpec(False, 1.0, 0.0, "subtract", "fast_sigmoid", 10.0)
    _, g_exact = grads(spiking_scan(*layer, spec, FusedLoop(backend="reference")), layer, 5)
    for dtype, unit in ((torch.float16, 2.0 ** -11), (torch.bfloat16, 2.0 ** -8)):
        _, g_low = grads(spiking_scan(*layer, spec, FusedLoop(dtype, "reference")), layer, 5)
        for a, b in zip(g_low, g_exact):
            rel = ((a - b).norm() / b.norm()).item()
            # each stored factor is off by at most one rounding unit; over 40 steps the errors add up
            # mostly incoherently, so a few units bound the whole gradient
            assert 0 < rel < 8 * unit, (dtype, rel)


def test_binary_linear_and_leaky_integrate_equal_autograd():
    g = torch.Generator().manual_seed(0)
    z = (torch.rand(5, 3, 13, generator=g) < 0.3).double().requires_grad_()
    w = torch.randn(13, 4, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_()
    beta = torch.rand(4, generator=g, dtype=torch.float64).requires_grad_()

    def plain(z, w, b, beta):
        v, out = 0.0, []
        for current in (z @ w + b).unbind(0):
            v = beta * v + current
            out.append(v)
        return torch.stack(out)

    fused_out, g_fused = grads(leaky_integrate(binary_linear(z, w, b), beta), (z, w, b, beta), 1)
    plain_out, g_plain = grads(plain(z, w, b, beta), (z, w, b, beta), 1)
    torch.testing.assert_close(fused_out, plain_out)
    for x, y in zip(g_fused, g_plain):
        torch.testing.assert_close(x, y)


def small_w1(**model) -> ModelConfig:
    return ModelConfig.model_validate({
        "layers": [{"type": "rlif", "size": 48, "tau": 0.02, "learn_decay": True},
                   {"type": "alif", "size": 32, "learn_decay": True}],
        "readout": {"tau": 0.02, "learn_decay": True}, **model})


def test_network_fused_equals_the_plain_loop_end_to_end():
    torch.manual_seed(0)
    x = (torch.rand(6, 40, 70) < 0.2).float()
    y = torch.randint(0, 5, (6,))
    fused = build_network(small_w1(), n_inputs=70, n_classes=5, dt=1e-3)
    plain = build_network(small_w1(fused=False), n_inputs=70, n_classes=5, dt=1e-3)
    plain.load_state_dict(fused.state_dict())
    assert fused.fused is not None and plain.fused is None
    results = []
    for net in (fused, plain):
        out = net(x)
        F.cross_entropy(out.logits, y).backward()
        results.append((out, {n: p.grad for n, p in net.named_parameters()}))
    (out_f, grad_f), (out_p, grad_p) = results
    torch.testing.assert_close(out_f.logits, out_p.logits)
    assert [r.item() for r in out_f.rates] == pytest.approx([r.item() for r in out_p.rates])
    for name in grad_p:
        torch.testing.assert_close(grad_f[name], grad_p[name], rtol=1e-4, atol=1e-5, msg=name)


def test_fused_loop_keeps_a_few_bytes_per_neuron_step():
    steps, batch, hidden = 50, 8, 64
    cfg = {"layers": [{"type": "rlif", "size": hidden}], "readout": {}}
    x = (torch.rand(batch, steps, 30) < 0.2).float()
    neuron_steps = steps * batch * hidden
    per_step = {}
    for name, extra in (("plain", {"fused": False}), ("fused32", {}), ("fused16", {"fused_saved_dtype": "float16"})):
        net = build_network(ModelConfig.model_validate(cfg | extra), n_inputs=30, n_classes=4, dt=1e-3)
        per_step[name] = saved_bytes(lambda: net(x), [*net.parameters(), x]) / neuron_steps
    # d (4 or 2 bytes) + z as bits twice (the layer's and the readout's product, 1/8 byte each)
    # + the readout trace the max over time keeps (4 classes x 4 bytes over 64 neurons: 1/4 byte)
    assert per_step["fused32"] < 4.55
    assert per_step["fused16"] < 2.55
    assert per_step["plain"] > 8


def test_fused_true_names_what_prevents_it():
    with pytest.raises(ConfigError, match="model.sparse"):
        build_network(small_w1(fused=True, sparse=True), n_inputs=10, n_classes=3, dt=1e-3)
    auto = build_network(small_w1(sparse=True), n_inputs=10, n_classes=3, dt=1e-3)
    assert auto.fused is None


def test_engine_steps_keep_derivatives_and_equal_the_plain_loop():
    from ipu_snn.bptt import revolve

    torch.manual_seed(1)
    x = (torch.rand(5, 30, 70) < 0.2).float()
    y = torch.randint(0, 5, (5,))
    engine = build_network(small_w1(), n_inputs=70, n_classes=5, dt=1e-3, schedule=lambda t: revolve(t, 4))
    plain = build_network(small_w1(fused=False), n_inputs=70, n_classes=5, dt=1e-3)
    plain.load_state_dict(engine.state_dict())
    assert all(layer.forward_ad is not None for layer in engine.layers)
    assert all(layer.forward_ad is None for layer in plain.layers)
    grads = []
    for net in (engine, plain):
        out = net(x)
        F.cross_entropy(out.logits, y).backward()
        grads.append((out.logits, {n: p.grad for n, p in net.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for name, g in grads[1][1].items():
        torch.testing.assert_close(grads[0][1][name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_the_w1_config_trains_through_the_fused_loop():
    from ipu_snn.config import load_config

    cfg = load_config("configs/shd_rlif.yaml")
    assert cfg.device == "cuda" and cfg.bptt.schedule == "store_all"
    net = build_network(cfg.model, n_inputs=700, n_classes=20, dt=1e-3)
    assert net.fused is not None
