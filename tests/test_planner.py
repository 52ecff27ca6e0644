"""The planner against the engine's measurements, schedules inside the network, and `ipu-snn plan`."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.cli import main
from ipu_snn.config import ModelConfig, validate_config
from ipu_snn.devices import device_spec
from ipu_snn.errors import ConfigError, DeviceError
from ipu_snn.network import build_network
from ipu_snn.planner import candidates, costs_for, footprint, plan, schedule_factory
from ipu_snn.saved_bytes import saved_bytes
from ipu_snn.bptt import Costs, predicted_local_bytes, store_all
from ipu_snn.train import train

MODEL = {"layers": [{"type": "rlif", "size": 24, "learn_decay": True}, {"type": "alif", "size": 12}],
         "readout": {"reduce": "mean"}}
SCHEDULES = ["uniform", "revolve", "double", "two_level"]


def config(schedule="auto", **data):
    return validate_config({"model": MODEL, "data": {"steps": 60, "batch_size": 8, **data},
                            "bptt": {"schedule": schedule}})


@pytest.mark.parametrize("name", ["store_all"] + SCHEDULES + ["revolve_log"])
def test_predicted_local_bytes_match_engine_peak(name):
    cfg = config()
    fp = footprint(cfg.model, 10, 3, batch=8)
    factory = candidates(cfg.bptt, 60, Costs())[name] or store_all
    sched = factory(60)
    torch.manual_seed(0)
    net = build_network(cfg.model, 10, 3, dt=1e-3, schedule=factory)
    out = net((torch.rand(8, 60, 10) < 0.3).float())
    out.logits.sum().backward()
    measured = net.last_scan.peak_local_bytes
    predicted = predicted_local_bytes(sched, fp.state_bytes, fp.tape_bytes_per_step)
    assert abs(predicted - measured) <= 0.10 * measured, (predicted, measured)


def test_store_all_runs_fused_and_the_planner_predicts_what_it_keeps():
    cfg = config(schedule="store_all")
    fp = footprint(cfg.model, 10, 3, batch=8)
    net = build_network(cfg.model, 10, 3, dt=1e-3)
    assert net.fused is not None and fp.fused_bytes_per_step < fp.tape_bytes_per_step
    x = (torch.rand(8, 60, 10) < 0.3).float()
    kept = saved_bytes(lambda: net(x), [*net.parameters(), x])
    predicted = 60 * fp.fused_bytes_per_step
    assert abs(predicted - kept) <= 0.10 * kept, (predicted, kept)


@settings(max_examples=10, deadline=None)
@given(T=st.integers(1, 80), schedule=st.sampled_from(SCHEDULES), seed=st.integers(0, 1000))
def test_network_gradients_equal_under_every_schedule(T, schedule, seed):
    torch.manual_seed(seed)
    net = build_network(ModelConfig.model_validate(MODEL), 6, 3, dt=1e-3).double()
    x = (torch.rand(3, T, 6, dtype=torch.float64) < 0.4).double()
    y = torch.randint(0, 3, (3,))

    def run(factory):
        net.schedule = factory
        out = net(x)
        loss = torch.nn.functional.cross_entropy(out.logits, y)
        return out, torch.autograd.grad(loss, list(net.parameters()))

    reference, ref_grads = run(None)
    bptt = validate_config({"model": MODEL, "bptt": {"schedule": schedule}}).bptt
    out, grads = run(schedule_factory(bptt, Costs()))
    torch.testing.assert_close(out.logits, reference.logits)
    torch.testing.assert_close(torch.stack(out.rates), torch.stack(reference.rates))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def small_run(schedule):
    return validate_config({
        "model": {"layers": [{"type": "rlif", "size": 24, "tau": 0.1}], "readout": {"reduce": "mean"}},
        "data": {"steps": 20, "channel_pooling": 20, "batch_size": 32,
                 "synthetic": {"n_train": 160, "n_test": 40, "n_classes": 4}},
        "training": {"epochs": 2, "lr": 0.01, "seed": 1},
        "bptt": {"schedule": schedule}})


def test_training_gives_the_same_metrics_under_every_schedule(tmp_path):
    from rich.console import Console

    results = {s: train(small_run(s), tmp_path / s, console=Console(quiet=True))
               for s in ["store_all"] + SCHEDULES}
    keys = ["train_loss", "val_accuracy", "test_accuracy", "test_loss"]
    engine = [results[s] for s in SCHEDULES]
    for other in engine[1:]:  # the engine runs the same steps in the same order: identical numbers
        assert {k: other[k] for k in keys} == {k: engine[0][k] for k in keys}
    for k in keys:  # the layered path batches the projections: equal up to float rounding
        assert results["store_all"][k] == pytest.approx(engine[0][k], rel=1e-3, abs=1e-3)


def test_plan_picks_fastest_fitting_and_refuses_what_cannot_fit(tmp_path):
    cfg = config()
    roomy = plan(cfg, device_spec("h100"), n_inputs=10, n_classes=3)
    assert roomy.choice == "store_all"  # everything fits, and nothing is faster
    store_all_bytes = next(s.local_bytes for s in roomy.strategies if s.name == "store_all")
    leanest = min(s.local_bytes for s in roomy.strategies)
    tight = plan(cfg, device_spec("h100"), n_inputs=10, n_classes=3, budget_bytes=(store_all_bytes + leanest) // 2)
    assert tight.choice not in (None, "store_all")
    chosen = next(s for s in tight.strategies if s.name == tight.choice)
    assert chosen.predicted_s == min(s.predicted_s for s in tight.strategies if s.fits)

    # a run that cannot fit is refused before any file is written
    impossible = validate_config({"model": MODEL, "data": {"steps": 60, "batch_size": 8},
                                  "bptt": {"schedule": "auto", "budget_gib": 1e-6}})
    with pytest.raises(ConfigError) as info:
        train(impossible, tmp_path / "run")
    assert "no BPTT schedule fits" in str(info.value) and "data.batch_size=" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_offchip_costs_follow_the_device():
    fp = footprint(ModelConfig.model_validate(MODEL), 10, 3, batch=8)
    assert costs_for(fp, device_spec("a100")).offchip_write > costs_for(fp, device_spec("h100")).offchip_write
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        device_spec("tpu")


def test_plan_cli_json(capsys, tmp_path):
    assert main(["plan", "configs/shd_rlif.yaml", "--device", "h100", "--json", "--plot",
                 str(tmp_path / "plan.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "h100" and result["choice"] == "store_all"
    names = {s["name"] for s in result["strategies"]}
    assert {"store_all", "uniform", "revolve", "double", "two_level"} <= names
    for s in result["strategies"]:
        assert {"name", "local_bytes", "offchip_bytes", "forward_steps", "predicted_s", "fits"} <= set(s)
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"
