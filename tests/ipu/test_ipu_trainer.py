"""The IPU trainer's wiring, through a stand-in PopTorch that runs the model eagerly on the CPU.

What is checked: the model PopTorch would trace is one network op per call, whatever T (the
stand-in runs the op as its own Poplar graph on the host interpreter) and computes the CPU model's
logits and gradients; a tiny run trains through ``poptorch.trainingModel`` / ``DataLoader`` /
``inferenceModel`` and leaves the same run folder as a CPU run, with metrics that a CPU evaluation of
its checkpoint reproduces; what the op cannot run is refused before anything is traced. What is not:
anything PopART or an IPU computes (the ``ipu``-marked test does that where the SDK is installed).
"""

import _ctypes
import json
import math
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

import poptorch_standin
from ipu_snn.bptt.schedules import double, store_all, uniform
from ipu_snn.checkpoint import save_checkpoint
from ipu_snn.core.bits import pack_spikes
from ipu_snn.data import input_shape, load_splits
from ipu_snn.errors import ConfigError, DeviceError, TrainingError
from ipu_snn.executor import TimeLoop
from ipu_snn.ipu import custom_ops, graph_plan
from ipu_snn.ipu.model import TrainingStep, build_traced
from ipu_snn.ipu.options import micro_batch_size
from ipu_snn.ipu.graph_plan import Candidate
from ipu_snn.ipu.tile_planning import graph_model, plan_for_config
from ipu_snn.network import build_network
from ipu_snn.reporting import read_metrics_csv
from ipu_snn.run_folder import newest_intact_checkpoint
from ipu_snn import evaluate as evaluation
from ipu_snn.evaluate import evaluate_run
from ipu_snn.torch_driver import evaluate
from ipu_snn.training import train

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the stand-in runs the op on the host interpreter")


@pytest.fixture
def poptorch(monkeypatch):
    """The stand-in PopTorch, and a loadable shared library (Python's _ctypes) where the op library would be."""
    module = poptorch_standin.make_poptorch()
    monkeypatch.setitem(sys.modules, "poptorch", module)
    custom_ops._load.cache_clear()
    monkeypatch.setenv(custom_ops.LIBRARY_ENV, _ctypes.__file__)
    yield module
    custom_ops._load.cache_clear()


# ------------------------------------------------------------------ the traced network


def _batch(cfg, batch=6, steps=None):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, steps or cfg.data.num_steps, 20, generator=g) < 0.3).float()
    return pack_spikes(x), torch.randint(0, 3, (batch,), generator=g)


def traced_twin(cfg, loop=TimeLoop()):
    """The CPU model (the fused loop), and the network the op runs, with the same weights."""
    torch.manual_seed(0)
    net = build_network(cfg.model, 20, 3, dt=0.01, loop=loop)
    traced = build_traced(cfg, 20, 3, 0.01, loop)
    traced.load_state_dict(net.state_dict())
    return net, traced


@pytest.mark.parametrize("steps", [8, 200])
def test_one_network_op_per_call_whatever_T(poptorch, tiny, steps):
    # windows of 4 under uniform: 2 or 50 windows, yet one op; the schedule travels as the op's action list
    cfg = tiny()
    _, traced = traced_twin(cfg, TimeLoop(4, lambda windows: uniform(windows, 2)))
    x, y = _batch(cfg, batch=2, steps=steps)
    TrainingStep(traced, poptorch)(x, y)
    (call,) = poptorch_standin.custom_op_calls
    assert call["name"] == "Network" and call["shapes"][0] == (2, steps, 3)  # packed bits uint8 [B, T, ceil(20 / 8)]
    # bits, rlif (weight_in, bias, beta, weight_rec), lif (weight_in, bias, beta), readout (weight, bias, beta)
    assert call["inputs"] == 1 + 4 + 3 + 3
    actions = call["attributes"]["actions"]
    assert len(actions) % 6 == 0 and max(actions[1::6]) == steps - 1  # reversed down from the last step


def test_traced_network_has_the_cpu_logits_and_gradients(poptorch, tiny):
    cfg = tiny()
    loop = TimeLoop(2, lambda windows: double(windows, 2, 1))
    net, traced = traced_twin(cfg, loop)
    x, y = _batch(cfg)
    out = net(x)
    reference = F.cross_entropy(out.logits, y)
    want = torch.autograd.grad(reference, list(net.parameters()))

    loss, stats = TrainingStep(traced, poptorch)(x, y)
    got = torch.autograd.grad(loss, list(traced.parameters()), allow_unused=True)
    assert torch.allclose(loss, reference, atol=1e-5)
    for (name, _), a, b in zip(net.named_parameters(), got, want, strict=True):
        if name.endswith("beta"):
            continue  # fixed decays: buffers here, the op returns no decay gradient
        assert float((a - b).abs().max()) <= 1e-4 * max(float(b.abs().max()), 1e-6), name
    assert stats.shape == (6, 4 + 2) and torch.allclose(stats[:, 0].mean(), reference)
    assert torch.all(stats[:, 3] == 0)  # the op lists every spike: nothing dropped
    assert torch.allclose(stats[:, 1], (out.logits.argmax(1) == y).float())
    assert torch.allclose(stats[:, 4:], out.rates)
    assert [c["attributes"]["offchip_slots"] for c in poptorch_standin.custom_op_calls] == [1]


# ------------------------------------------------------------------ the trainer


def _budget_for_half_passes(cfg, n_inputs, n_classes, micro):
    """A tile SRAM budget under which the planned store_all time loop fits one IPU with half the micro-batch per
    input-gradient pass but not with all of it (the fullest tile's bytes at the two, by the graph's model)."""
    model = graph_model(cfg, n_inputs, n_classes, micro)
    c = Candidate.of(cfg.data.num_steps, cfg.bptt.window, store_all(-(-cfg.data.num_steps // cfg.bptt.window)))
    half, whole = model.max_tile_bytes(c, micro // 2), model.max_tile_bytes(c, micro)
    assert half < whole  # halving the pass shrinks the fullest tile at this size
    return (half + whole) // 2


def test_tiny_run_trains_and_writes_the_run_folder(poptorch, monkeypatch, tmp_path, tiny):
    # a first layer of 48: the input-gradient partials per sample then outweigh a pass's own terms on the fullest
    # tile, so fewer samples per pass shrink it (at 12 they grow it)
    cfg = tiny(model={"layers": [{"type": "rlif", "size": 48}, {"type": "lif", "size": 10}]},
               bptt={"schedule": "store_all", "window": 3})
    splits = load_splits(cfg.data, cfg.training.seed)
    micro = micro_batch_size(cfg, cfg.ipu.replication)
    # tiles smaller than a Mk2's, so that the plan gives the op fewer samples per pass than the micro-batch
    monkeypatch.setattr(graph_plan, "MK2_TILE_BYTES", _budget_for_half_passes(cfg, splits.n_inputs,
                                                                              splits.n_classes, micro))
    out = tmp_path / "run"
    seen_epochs = []
    summary = train(cfg, out, on_epoch_end=lambda epoch, row, net: seen_epochs.append(epoch))

    assert seen_epochs == [1, 2]
    for name in ("metrics.csv", "summary.json", "curves.png", "config.yaml"):
        assert (out / name).is_file(), name
    rows = read_metrics_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) and 0 <= r["train_accuracy"] <= 1 for r in rows)
    assert all(0 <= r["rate_layer0"] <= 1 and 0 <= r["rate_layer1"] <= 1 for r in rows)
    assert rows[1]["lr"] == cfg.training.lr  # constant schedule
    written = json.loads((out / "summary.json").read_text())
    assert written["device"] == "ipu-model" and written["replicas"] == 2 and written["epochs"] == 2

    # the IPU run's metrics are those of its weights: a CPU evaluation of the checkpoint agrees
    found = newest_intact_checkpoint(out)
    weights, state = found.weights, found.state
    assert state["epoch"] == 2 and len(state["history"]) == 2
    net = build_network(cfg.model, splits.n_inputs, splits.n_classes, splits.dt)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(weights)
    assert any(not torch.equal(initial[k], weights[k]) for k in initial)  # it trained
    val_loss, val_accuracy = evaluate(net, splits.val, 7, torch.device("cpu"))
    assert rows[1]["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert rows[1]["val_accuracy"] == pytest.approx(val_accuracy)
    test_loss, test_accuracy = evaluate(net, splits.test, 7, torch.device("cpu"))
    assert summary["test_loss"] == pytest.approx(test_loss, rel=1e-5)
    assert summary["test_accuracy"] == pytest.approx(test_accuracy)
    # ipu-snn eval of an IPU run evaluates its host copy on the CPU, built for the run's own device row: its
    # products as the op leaves them (model.sparse: auto -> dense; the IPU host's torch lacks the list ops)
    built = []
    monkeypatch.setattr(evaluation, "build_network",
                        lambda *args, **kwargs: built.append((kwargs["device"], build_network(*args, **kwargs)))
                        or built[-1][1])
    assert evaluate_run(out) == pytest.approx((test_loss, test_accuracy), rel=1e-5)
    (device, host_copy), = built
    policies = [p for layer in host_copy.layers for p in (layer.policies.input, layer.policies.recurrent) if p]
    assert cfg.model.sparse == "auto" and device == "ipu-model"
    assert {p.mode for p in policies + [host_copy.readout.policy]} == {"dense"}

    training_opts, eval_opts = poptorch.options_made
    calls = training_opts.calls()
    assert calls["useIpuModel"] == (True,) and calls["replicationFactor"] == (2,)
    assert calls["deviceIterations"] == (2,) and calls["Training.gradientAccumulation"] == (2,)
    assert calls["outputMode"] == (poptorch_standin.OutputMode.Sum,) and "_Popart.set" not in calls
    assert eval_opts.calls()["outputMode"] == (poptorch_standin.OutputMode.All,)
    assert not any(name.startswith("Training.") for name in eval_opts.calls())
    assert poptorch_standin.Executor.attached is None  # both executors released their IPUs

    # the op PopART would build is the program the plan counted: its samples per input-gradient pass are
    # those `ipu-snn plan --device ipu-mk2` reports for one replica under the planned schedule and window
    planned = plan_for_config(cfg, splits.n_inputs, splits.n_classes, micro).tiles["graph"]["samples_per_pass"]
    assert 0 < planned < micro
    assert {c["attributes"]["samples_per_pass"] for c in poptorch_standin.custom_op_calls} == {planned}


def test_poprun_instance_takes_its_share_and_writes_nothing(poptorch, monkeypatch, tmp_path, tiny):
    popdist = poptorch_standin.make_popdist(poptorch, instance=1, instances=2, local_replicas=1)
    monkeypatch.setitem(sys.modules, "popdist", popdist)
    monkeypatch.setitem(sys.modules, "popdist.poptorch", popdist.poptorch)
    out = tmp_path / "run"
    summary = train(tiny(training={"epochs": 1}), out)
    assert not out.exists()  # only instance 0 writes
    assert summary["replicas"] == 2 and summary["instances"] == 2
    assert "replicationFactor" not in poptorch.options_made[0].calls()  # PopRun sets it


@pytest.mark.parametrize("change, error, match", [
    ({"model": {"layers": [{"type": "rlif", "size": 8}], "fused": True}}, ConfigError, "model.fused"),
    ({"model": {"layers": [{"type": "alif", "size": 8, "learn_decay": True}]}}, ConfigError,
     "model.layers.0.learn_decay: .*ALIF"),
    ({"model": {"fused_saved_dtype": "float16"}}, ConfigError, "model.fused_saved_dtype: float16"),
    ({"model": {"sparse": True, "sparse_capacity": 1.0, "sparse_grad": "spikes"}}, ConfigError,
     "model.sparse_grad: spikes"),
    ({"data": {"batch_size": 10}}, ConfigError, "data.batch_size: 10 cannot be split"),
    ({"ipu": {"device_iterations": 8}}, ConfigError, "one device call takes 128 training samples"),
])
def test_unsupported_configs_are_refused_before_training(poptorch, tmp_path, change, error, match, tiny):
    with pytest.raises(error, match=match):
        train(tiny(**change), tmp_path / "run")
    assert not (tmp_path / "run").exists()


class Crash(Exception):
    pass


def crash_after_first(epoch, row, network):
    if epoch == 1:
        raise Crash


def test_resume_after_crash_equals_uninterrupted_run(poptorch, tmp_path, tiny):
    cfg = tiny(training={"epochs": 3, "lr_schedule": "cosine"})
    full = train(cfg, tmp_path / "full")
    # the learning rate of every step is the one its epoch's row reports: each epoch's schedule step reached the IPU
    (model,) = poptorch.training_models
    rows = read_metrics_csv(tmp_path / "full" / "metrics.csv")
    per_epoch = len(model.optimizer.used_lr) // 3
    assert len({row["lr"] for row in rows}) == 3
    for i, row in enumerate(rows):  # as the IPU holds it, in float32
        assert model.optimizer.used_lr[i * per_epoch:(i + 1) * per_epoch] == [(pytest.approx(row["lr"]),)] * per_epoch

    with pytest.raises(Crash):
        train(cfg, tmp_path / "resumed", on_epoch_end=crash_after_first)
    assert newest_intact_checkpoint(tmp_path / "resumed").folder.name == "epoch-0001"
    resumed = train(cfg, tmp_path / "resumed", resume=True)
    for key in ("val_accuracy", "train_loss", "test_accuracy", "test_loss", "epochs"):
        assert resumed[key] == full[key], key
    deterministic = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "rate_layer0", "rate_layer1")
    resumed_rows = read_metrics_csv(tmp_path / "resumed" / "metrics.csv")
    assert [[r[k] for k in deterministic] for r in resumed_rows] == [[r[k] for k in deterministic] for r in rows]
    full_w = newest_intact_checkpoint(tmp_path / "full").weights
    resumed_w = newest_intact_checkpoint(tmp_path / "resumed").weights
    assert all(torch.equal(full_w[k], resumed_w[k]) for k in full_w)


def test_no_validation_split_trains_evaluates_and_resumes(poptorch, tmp_path, capsys, tiny_raw, check_no_validation_split):
    check_no_validation_split(tiny_raw, tmp_path, capsys)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(poptorch, tmp_path, tiny):
    def poison_weights(epoch, row, network):
        if epoch == 1:  # the host's weights go to the IPU when the training model next attaches
            with torch.no_grad():
                network.readout.fc.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match="loss became nan at epoch 2, device call 1"):
        train(tiny(), tmp_path, on_epoch_end=poison_weights)
    assert newest_intact_checkpoint(tmp_path).folder.name == "epoch-0001"
    assert poptorch_standin.Executor.attached is None  # the executors were released
    assert train(tiny(), tmp_path, resume=True)["epochs"] == 2


def test_refuses_to_resume_nothing_to_overwrite_or_across_drivers(poptorch, tmp_path, tiny):
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(tiny(), tmp_path / "run", resume=True)
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run", 1, torch.nn.Linear(1, 1), {})
    with pytest.raises(TrainingError, match="already holds a run"):
        train(tiny(), tmp_path / "run")
    # a CPU run's optimizer state is torch's; PopTorch takes only its own, and the other way round
    train(tiny(device="cpu", training={"epochs": 1}), tmp_path / "cpu")
    with pytest.raises(TrainingError, match="differs in device"):
        train(tiny(), tmp_path / "cpu", resume=True)


def test_a_network_too_big_for_one_ipu_is_refused_before_training(poptorch, tmp_path, tiny):
    cfg = tiny(model={"layers": [{"type": "rlif", "size": 20000}]})
    micro = micro_batch_size(cfg, cfg.ipu.replication)
    plan = plan_for_config(cfg, *input_shape(cfg.data), micro)
    assert not plan.fits
    with pytest.raises(ConfigError) as refused:
        train(cfg, tmp_path / "run")
    message = str(refused.value)
    assert message.startswith("model: The network does not fit one ipu-mk2") and plan.refusal() in message
    assert f"micro-batch of {micro} samples" in message and "ipus-per-replica 1" in message
    assert not (tmp_path / "run").exists() and not poptorch.options_made and not poptorch_standin.custom_op_calls


def test_without_the_op_library_stops_at_start(poptorch, monkeypatch, tmp_path, tiny):
    custom_ops._load.cache_clear()
    monkeypatch.setenv(custom_ops.LIBRARY_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(DeviceError, match="make -C custom_ops ipu"):
        train(tiny(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.ipu
def test_tiny_run_on_the_ipu_model(tmp_path, tiny):
    """With the Poplar SDK: the same tiny run on the IPU Model, compiled by PopART."""
    summary = train(tiny(training={"epochs": 1}, ipu={"replication": 1, "device_iterations": 1}), tmp_path / "run")
    assert math.isfinite(summary["train_loss"]) and 0 <= summary["test_accuracy"] <= 1
