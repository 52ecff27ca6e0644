"""record=: per-step spikes and membranes of chosen layers, under every schedule and the sparse paths, against a
plain autograd loop over `neuron.reference.step` in float64 (spikes with their gradients, membranes exact)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.bptt import double, revolve, uniform
from ipu_snn.config import ModelConfig
from ipu_snn.executor import TimeLoop
from ipu_snn.network import build_network, pack_inputs
from ipu_snn.neuron.reference import step
from ipu_snn.taps import Taps

SCHEDULES = {"store_all": None, "uniform": lambda n: uniform(n, 2), "revolve": lambda n: revolve(n, 2),
             "double": lambda n: double(n, 2, 0, "uniform")}


def plain(net, frames):
    """Each layer's spikes and membranes [T, B, N], step by step through the autograd step."""
    h, found = frames.transpose(0, 1), []
    for layer in net.layers:
        beta, rho = layer.decays()
        v = torch.zeros(h.shape[1], layer.n_out, dtype=h.dtype)
        a = v.clone() if layer.spec.neuron.n_state > 1 else None
        z, zs, vs = v.clone(), [], []
        for t in range(h.shape[0]):
            current = h[t] @ layer.fc.weight + layer.fc.bias
            if layer.rec is not None:
                current = current + z @ layer.rec.weight
            v, a, z = step(layer.spec, beta, rho, v, a, current)
            zs.append(z)
            vs.append(v)
        h = torch.stack(zs)
        found.append((h, torch.stack(vs)))
    return found


@settings(max_examples=15, deadline=None)
@given(kinds=st.sampled_from([("rlif",), ("lif", "alif")]), T=st.integers(1, 20), window=st.integers(1, 8),
       schedule=st.sampled_from(sorted(SCHEDULES)), sparse=st.sampled_from([False, True]),
       seed=st.integers(0, 2**16))
def test_recorded_spikes_and_membranes_equal_the_plain_loop(kinds, T, window, schedule, sparse, seed):
    g = torch.Generator().manual_seed(seed)
    frames = (torch.rand(3, T, 7, generator=g) < 0.4).double()
    layers = [{"type": k, "size": n, "threshold": 0.6, "learn_decay": True} for k, n in zip(kinds, (9, 6))]
    extra = {"sparse": True, "sparse_capacity": 1.0} if sparse else {}
    cfg = ModelConfig.model_validate({"layers": layers, **extra})
    torch.manual_seed(seed)
    net = build_network(cfg, 7, 3, dt=1e-3, loop=TimeLoop(window, SCHEDULES[schedule])).double()
    last = len(kinds) - 1
    out = net(pack_inputs(frames), record=range(len(kinds)), taps=Taps(grad=True))
    expected = plain(net, frames)
    for i, (z, v) in enumerate(expected):
        rec = out.record[f"layer{i}"]
        torch.testing.assert_close(rec.spikes, z, rtol=0, atol=0)
        torch.testing.assert_close(rec.membranes, v, rtol=1e-12, atol=1e-12)
        assert not rec.membranes.requires_grad
    weights = torch.randn(T, 3, net.layers[last].n_out, generator=g, dtype=torch.float64)
    params = [p for p in net.parameters() if p.requires_grad]
    got = torch.autograd.grad((out.record[f"layer{last}"].spikes * weights).sum(), params, allow_unused=True)
    want = torch.autograd.grad((expected[last][0] * weights).sum(), params, allow_unused=True)
    for a, b in zip(got, want):
        if b is None:
            assert a is None or not a.any()
            continue
        assert (a - b).abs().max().item() <= 1e-9 * (b.abs().max().item() + 1e-12) + 1e-12


def test_recording_is_refused_for_layers_the_network_lacks():
    net = build_network(ModelConfig.model_validate({"layers": [{"type": "lif", "size": 4}]}), 3, 2, dt=1e-3)
    x = torch.zeros(1, 5, 3)
    with pytest.raises(ValueError, match="no spiking layer 'layer1'; the network has layer0"):
        net(x, record="layer1")
    with pytest.raises(ValueError, match="spiking layers 0..0, not 2"):
        net(x, record=[2])
    out = net(x, taps=Taps(record=(0,), membranes=False))
    assert out.record["layer0"].membranes is None and out.record["layer0"].spikes.shape == (5, 1, 4)
