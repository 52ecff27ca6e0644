"""Every loss and rate regulariser of the config, under every BPTT schedule and the sparse paths, against the
plain autograd loop in float64 (the layers run one after another over the whole sequence, the loss written
out from their spikes)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.bptt import double, revolve, two_level_optimal, uniform
from ipu_snn.bptt.schedules import Costs
from ipu_snn.config import ModelConfig, TrainingConfig
from ipu_snn.errors import ConfigError
from ipu_snn.executor import TimeLoop
from ipu_snn.losses import make_objective
from ipu_snn.network import build_network, pack_inputs

SCHEDULES = {
    "store_all": None,
    "uniform": lambda n: uniform(n, 2),
    "revolve": lambda n: revolve(n, 2),
    "double": lambda n: double(n, 2, 0, "uniform"),
    "two_level": lambda n: two_level_optimal(n, 2, n, Costs(offchip_write=0.5, offchip_read=0.5)),
}
CLASSES = 3
LOSSES = [{"name": "readout_ce"}, {"name": "count_ce"}, {"name": "count_mse", "correct_rate": 0.6},
          {"name": "first_spike_ce"}]
BOUNDS = [{"layer": 0, "lower": 0.3, "lower_weight": 2.0, "upper": 0.4, "upper_weight": 3.0},
          {"layer": 1, "upper": 0.05}]


def model(kinds, **extra) -> ModelConfig:
    layers = [{"type": k, "size": size, "threshold": 0.6, "learn_decay": True} for k, size in zip(kinds, (9, 6))]
    return ModelConfig.model_validate({"layers": layers, "readout": {"reduce": "max"}, **extra})


def build(cfg, loop=TimeLoop(), seed=0):
    torch.manual_seed(seed)
    return build_network(cfg, 7, CLASSES, dt=1e-3, loop=loop).double()


def plain_loss(net, frames, y, training: TrainingConfig):
    """The loss written out from the spikes of the plain loop (no executor, no windows, no taps)."""
    T = frames.shape[1]
    h, zs = frames.transpose(0, 1), []
    for layer in net.layers:
        h = layer(h)
        zs.append(h)
    logits = net.readout(h).max(0).values
    last = zs[-1]
    counts = last.sum(0).reshape(last.shape[1], CLASSES, -1).mean(-1)
    loss_cfg = training.loss
    if loss_cfg.name == "readout_ce":
        loss = F.cross_entropy(logits, y, reduction="sum")
    elif loss_cfg.name == "count_ce":
        loss = F.cross_entropy(counts, y, reduction="sum")
    elif loss_cfg.name == "count_mse":
        hit = F.one_hot(y, CLASSES).double()
        target = hit * loss_cfg.correct_rate * T + (1 - hit) * loss_cfg.incorrect_rate * T
        loss = ((counts - target) ** 2).mean() * len(y) / T
    else:
        silent = (1 - last).reshape(T, last.shape[1], CLASSES, -1).prod(-1)  # [T, B, C]: no neuron of c fired
        first = sum(torch.stack([silent[s] for s in range(t + 1)]).prod(0) for t in range(T))
        loss = F.cross_entropy(-first, y, reduction="sum")
    for bound in training.rate_regularization:
        rates = zs[bound.layer].sum(0) / T
        if bound.lower is not None:
            loss = loss + bound.lower_weight * (F.relu(bound.lower - rates) ** 2).mean(1).sum()
        if bound.upper is not None:
            loss = loss + bound.upper_weight * (F.relu(rates.mean(1) - bound.upper) ** 2).sum()
    return loss


def grads(net, loss):
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    found = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    return {n: g for (n, _), g in zip(params, found) if g is not None}


@settings(max_examples=30, deadline=None)
@given(loss=st.sampled_from(range(len(LOSSES))), bounds=st.sampled_from([0, 1, 2]),
       kinds=st.sampled_from([("rlif",), ("lif", "alif")]), T=st.integers(1, 24), window=st.integers(1, 9),
       schedule=st.sampled_from(sorted(SCHEDULES)), sparse=st.sampled_from([False, True, "auto"]),
       seed=st.integers(0, 2**16))
def test_each_loss_and_bound_equals_the_plain_loop(loss, bounds, kinds, T, window, schedule, sparse, seed):
    g = torch.Generator().manual_seed(seed)
    frames = (torch.rand(4, T, 7, generator=g) < 0.4).double()
    y = torch.randint(0, CLASSES, (4,), generator=g)
    layers = len(kinds)
    training = TrainingConfig.model_validate({"loss": LOSSES[loss], "rate_regularization": [
        b for b in BOUNDS[:bounds] if b["layer"] < layers]})
    extra = {"sparse": sparse, "sparse_capacity": 1.0} if sparse is not False else {}
    cfg = model(kinds, **extra)
    reference = build(cfg.model_copy(update={"fused": False, "sparse": False}), seed=seed)
    expected = plain_loss(reference, frames, y, training)
    net = build(cfg, TimeLoop(window, SCHEDULES[schedule]), seed=seed)
    objective = make_objective(training, [layer.n_out for layer in net.layers], CLASSES)
    objective.prepare(net)
    out = net(pack_inputs(frames), taps=objective.taps)
    got, scores = objective(out, y, T)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    expected_grads = grads(reference, expected)
    got_grads = grads(net, got)
    assert set(got_grads) <= set(expected_grads)
    for name, ref in expected_grads.items():
        g_got = got_grads.get(name, torch.zeros_like(ref))
        assert (g_got - ref).abs().max().item() <= 1e-9 * (ref.abs().max().item() + 1e-12) + 1e-12, name


def test_spike_losses_freeze_the_readout_and_refuse_uneven_groups():
    training = TrainingConfig.model_validate({"loss": "count_ce"})
    with pytest.raises(ConfigError, match="multiple of 3"):
        make_objective(training, [8], CLASSES)
    net = build(model(("rlif",)))
    objective = make_objective(training, [9], CLASSES)
    objective.prepare(net)
    assert not any(p.requires_grad for p in net.readout.parameters())


def test_loss_settings_are_checked():
    with pytest.raises(ValueError, match="apply to loss count_mse"):
        TrainingConfig.model_validate({"loss": {"name": "count_ce", "correct_rate": 0.5}})
    with pytest.raises(ValueError, match="lower .* is above upper"):
        TrainingConfig.model_validate({"rate_regularization": [{"layer": 0, "lower": 0.5, "upper": 0.1}]})
    with pytest.raises(ValueError, match="give lower, upper or both"):
        TrainingConfig.model_validate({"rate_regularization": [{"layer": 0}]})


@pytest.mark.parametrize("loss", ["count_ce", "first_spike_ce"])
def test_the_planner_counts_what_the_objective_keeps(loss):
    from ipu_snn.bptt import store_all
    from ipu_snn.bptt.schedules import predicted_local_bytes
    from ipu_snn.config import validate_config
    from ipu_snn.planner import NetShape

    cfg = validate_config({"model": {"layers": [{"type": "rlif", "size": 24}, {"type": "lif", "size": 12}]},
                           "data": {"steps": 60, "batch_size": 8},
                           "training": {"loss": loss, "rate_regularization": [{"layer": 0, "lower": 0.1}]}})
    shape = NetShape.of(cfg, 10, 3)
    assert shape.tap_columns > 0
    torch.manual_seed(0)
    net = build_network(cfg.model, 10, 3, dt=1e-3, loop=TimeLoop(15))
    objective = make_objective(cfg.training, [24, 12], 3)
    out = net(pack_inputs((torch.rand(8, 60, 10) < 0.3).float()), taps=objective.taps)
    objective(out, torch.zeros(8, dtype=torch.int64), 60)[0].backward()
    measured = net.last_scan.peak_local_bytes
    predicted = predicted_local_bytes(store_all(4), shape.state_bytes(), shape.tape_bytes(15))
    assert abs(predicted - measured) <= 0.01 * measured, (predicted, measured)
