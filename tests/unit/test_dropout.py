"""Dropout on spikes: binary, the same spikes dropped whatever the windows, exact under every schedule and the
sparse paths against the plain loop in float64, and off in evaluation."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.bptt import double, revolve, uniform
from ipu_snn.config import ModelConfig
from ipu_snn.dropout import keep_mask
from ipu_snn.executor import TimeLoop
from ipu_snn.network import build_network, pack_inputs
from ipu_snn.taps import Taps

SCHEDULES = {"store_all": None, "uniform": lambda n: uniform(n, 2), "revolve": lambda n: revolve(n, 2),
             "double": lambda n: double(n, 2, 0, "uniform")}


def model(p, **extra):
    return ModelConfig.model_validate({"layers": [
        {"type": "rlif", "size": 9, "threshold": 0.6, "dropout": p},
        {"type": "alif", "size": 6, "threshold": 0.6, "dropout": p}], **extra})


def run(cfg, x, y, loop=TimeLoop(), seed=0):
    torch.manual_seed(seed)
    net = build_network(cfg, 7, 3, dt=1e-3, loop=loop).double()
    torch.manual_seed(seed + 1)  # the forward draws dropout's seed
    out = net(x, taps=Taps(grad=True, neuron_layers=(0, 1)))
    loss = F.cross_entropy(out.logits, y) + (out.neuron_rates[1] ** 2).sum()
    params = [p for p in net.parameters()]
    return loss, torch.autograd.grad(loss, params), out


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 20), window=st.integers(1, 8), schedule=st.sampled_from(sorted(SCHEDULES)),
       sparse=st.sampled_from([False, True, "auto"]), seed=st.integers(0, 2**16))
def test_dropout_is_exact_under_every_schedule(T, window, schedule, sparse, seed):
    g = torch.Generator().manual_seed(seed)
    frames = (torch.rand(3, T, 7, generator=g) < 0.5).double()
    y = torch.randint(0, 3, (3,), generator=g)
    extra = {"sparse": sparse, "sparse_capacity": 1.0} if sparse is not False else {}
    expected, want, _ = run(model(0.4).model_copy(update={"fused": False}), frames, y, seed=seed)
    got, grads, _ = run(model(0.4, **extra), pack_inputs(frames), y, TimeLoop(window, SCHEDULES[schedule]), seed)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, want):
        assert (a - b).abs().max().item() <= 1e-9 * (b.abs().max().item() + 1e-12) + 1e-12


def test_dropout_drops_a_fraction_p_and_only_in_training():
    mask = keep_mask(7, 1, 0, (200, 8, 50), 0.25, "cpu")
    assert abs(mask.float().mean().item() - 0.75) < 0.01
    assert torch.equal(keep_mask(7, 1, 40, (10, 8, 50), 0.25, "cpu"), mask[40:50])  # whatever the window
    assert not torch.equal(keep_mask(8, 1, 0, (200, 8, 50), 0.25, "cpu"), mask)
    x = pack_inputs((torch.rand(4, 30, 7) < 0.5).float())
    torch.manual_seed(0)
    with_dropout = build_network(model(0.5), 7, 3, dt=1e-3)
    torch.manual_seed(0)
    without = build_network(model(0.0), 7, 3, dt=1e-3)
    with_dropout.eval()
    without.eval()
    torch.testing.assert_close(with_dropout(x).logits, without(x).logits)
    with_dropout.train()
    without.train()
    assert not torch.allclose(with_dropout(x).logits, without(x).logits)


def test_the_planner_counts_what_dropout_keeps():
    from ipu_snn.bptt import store_all
    from ipu_snn.bptt.schedules import predicted_local_bytes
    from ipu_snn.config import validate_config
    from ipu_snn.planner import NetShape

    for p in (0.0, 0.3):
        cfg = validate_config({"model": {"layers": [{"type": "rlif", "size": 24, "dropout": p},
                                                    {"type": "lif", "size": 16, "dropout": p}]},
                               "data": {"steps": 60, "batch_size": 8}})
        shape = NetShape.of(cfg, 10, 3)
        net = build_network(cfg.model, 10, 3, dt=1e-3, loop=TimeLoop(15))
        net(pack_inputs((torch.rand(8, 60, 10) < 0.3).float())).logits.sum().backward()
        measured = net.last_scan.peak_local_bytes
        predicted = predicted_local_bytes(store_all(4), shape.state_bytes(), shape.tape_bytes(15))
        assert abs(predicted - measured) <= 0.01 * measured, (p, predicted, measured)
