"""model.sparse: the spike-op path inside the network equals the dense one."""

import pytest
import torch
from rich.console import Console

from ipu_snn.bptt import revolve
from ipu_snn.config import ModelConfig, validate_config
from ipu_snn.errors import UserError
from ipu_snn.network import build_network
from ipu_snn.train import train

MODEL = {"layers": [{"type": "rlif", "size": 20}, {"type": "alif", "size": 12}], "readout": {"reduce": "mean"}}


def pair(**sparse):
    dense = build_network(ModelConfig.model_validate(MODEL), 9, 3, dt=1e-3).double()
    cfg = ModelConfig.model_validate({**MODEL, "sparse": True, "sparse_capacity": 1.0, **sparse})
    sparse_net = build_network(cfg, 9, 3, dt=1e-3).double()
    sparse_net.load_state_dict(dense.state_dict())
    return dense, sparse_net


@pytest.mark.parametrize("schedule", [None, lambda T: revolve(T, 3)], ids=["store_all", "revolve"])
def test_sparse_network_matches_dense(schedule):
    torch.manual_seed(0)
    dense, sparse = pair()
    x = (torch.rand(4, 15, 9, dtype=torch.float64) < 0.3).double()
    y = torch.randint(0, 3, (4,))
    results = []
    for net in (dense, sparse):
        net.schedule = schedule
        out = net(x)
        loss = torch.nn.functional.cross_entropy(out.logits, y)
        results.append((out.logits, torch.autograd.grad(loss, list(net.parameters()))))
    torch.testing.assert_close(results[1][0], results[0][0])
    for g_sparse, g_dense in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g_sparse, g_dense, rtol=1e-9, atol=1e-12)


def test_overflow_is_an_error_naming_the_field_or_is_counted():
    torch.manual_seed(0)
    x = torch.ones(2, 5, 9, dtype=torch.float64)  # every input spikes: more than 2 of 9 fit
    _, strict = pair(sparse_capacity=0.2)
    with pytest.raises(UserError, match="model.sparse_capacity"):
        strict(x)
    _, counting = pair(sparse_capacity=0.2, sparse_overflow="drop_and_count")
    out = counting(x)
    assert out.dropped >= 2 * 5 * (9 - 2)  # at least the input layer's overflow, every step


def test_sparse_training_follows_the_dense_loss_curve(tmp_path):
    raw = {"model": {"layers": [{"type": "rlif", "size": 24, "tau": 0.1}], "readout": {"reduce": "mean"}},
           "data": {"steps": 20, "channel_pooling": 20, "batch_size": 32,
                    "synthetic": {"n_train": 160, "n_test": 40, "n_classes": 4}},
           "training": {"epochs": 2, "lr": 0.01, "seed": 1}}
    quiet = Console(quiet=True)
    dense = train(validate_config(raw), tmp_path / "dense", console=quiet)
    sparse_raw = {**raw, "model": {**raw["model"], "sparse": True, "sparse_capacity": 1.0,
                                   "sparse_overflow": "drop_and_count"}}
    sparse = train(validate_config(sparse_raw), tmp_path / "sparse", console=quiet)
    assert sparse["train_loss"] == pytest.approx(dense["train_loss"], rel=1e-3)
    assert "spikes_dropped" in (tmp_path / "sparse" / "metrics.csv").read_text().splitlines()[0]


def test_auto_follows_the_measured_crossover():
    from ipu_snn.ops import prefer_sparse

    dense_enough = ModelConfig.model_validate({**MODEL, "sparse": "auto", "sparse_capacity": 1.0})
    lean = ModelConfig.model_validate({**MODEL, "sparse": "auto", "sparse_capacity": 0.1})
    z = torch.zeros(4, 20)
    for cfg in (dense_enough, lean):
        layer = build_network(cfg, 9, 3, dt=1e-3).layers[0].rec
        assert layer.uses_sparse(z) == prefer_sparse("cpu", 4, 20, layer.capacity)
    assert not build_network(dense_enough, 9, 3, dt=1e-3).layers[0].rec.uses_sparse(z)
    assert build_network(lean, 9, 3, dt=1e-3).layers[0].rec.uses_sparse(z)
