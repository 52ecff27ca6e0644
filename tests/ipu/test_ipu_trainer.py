"""The IPU trainer's wiring, through a stand-in PopTorch that runs the model eagerly on the CPU.

What is checked: the network PopTorch would trace computes the same logits and
gradients as the CPU model, dense and sparse (the stand-in's SpikeLinear runs the
CPU kernels with the backward of the op's PopART grad ops); a BPTT schedule becomes the right recomputation
checkpoints and options; a tiny run trains through ``poptorch.trainingModel`` /
``DataLoader`` / ``inferenceModel`` and leaves the same run folder as a CPU run,
with metrics that a CPU evaluation of its checkpoint reproduces. What is not:
anything PopART or an IPU computes (the ``ipu``-marked test does that where the
SDK is installed).
"""

import _ctypes
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import poptorch_standin
from ipu_snn.bptt.schedules import double, uniform
from ipu_snn.checkpoint import checkpoint_folders, save_checkpoint
from ipu_snn.data import input_shape, load_splits
from ipu_snn.errors import ConfigError, DeviceError, TrainingError
from ipu_snn.executor import TimeLoop
from ipu_snn.ipu import custom_ops
from ipu_snn.ipu.model import TrainingStep, build_traced
from ipu_snn.ipu.options import RECOMPUTE_ALL, micro_batch_size, poptorch_options
from ipu_snn.ipu.recomputation import Recomputation, phase_block, recomputation_for
from ipu_snn.ipu.tile_planning import plan_for_config
from ipu_snn.network import build_network
from ipu_snn.reporting import read_metrics_csv
from ipu_snn.run_folder import newest_intact_checkpoint
from ipu_snn.evaluate import evaluate_run
from ipu_snn.torch_driver import evaluate
from ipu_snn.training import train

@pytest.fixture
def poptorch(monkeypatch):
    module = poptorch_standin.make_poptorch()
    monkeypatch.setitem(sys.modules, "poptorch", module)
    return module


@pytest.fixture
def op_library(monkeypatch):
    """A loadable shared library (Python's _ctypes) where the PopART op library would be."""
    custom_ops._load.cache_clear()
    monkeypatch.setenv(custom_ops.LIBRARY_ENV, _ctypes.__file__)
    yield
    custom_ops._load.cache_clear()


# ------------------------------------------------------------------ the traced network


def _batch(cfg, batch=6):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, cfg.data.num_steps, 20, generator=g) < 0.3).float()
    return x, torch.randint(0, 3, (batch,), generator=g)


def traced_twin(cfg, poptorch, loop=TimeLoop(), plan=None):
    """The CPU model (the fused loop), and the network PopTorch traces, with the same weights."""
    torch.manual_seed(0)
    net = build_network(cfg.model, 20, 3, dt=0.01)
    traced = build_traced(cfg, 20, 3, 0.01, poptorch, loop, plan)
    traced.load_state_dict(net.state_dict())
    assert traced.mode == "straight_through" and all(layer.mode == "straight_through" for layer in traced.layers)
    return net, traced


def test_traced_network_has_the_cpu_logits_and_gradients(poptorch, tiny):
    cfg = tiny()
    net, traced = traced_twin(cfg, poptorch, TimeLoop(2, lambda windows: uniform(windows, 1)))
    x, y = _batch(cfg)
    out = net(x)
    reference = F.cross_entropy(out.logits, y)
    want = torch.autograd.grad(reference, list(net.parameters()))

    loss, stats = TrainingStep(traced, poptorch)(x, y)
    got = torch.autograd.grad(loss, list(traced.parameters()))
    assert torch.allclose(loss, reference, atol=1e-6)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # 6 steps in windows of 2: uniform keeps the state before window 1 and tapes the last window in its forward
    assert poptorch.marks.count == 1
    assert stats.shape == (6, 4 + 2) and torch.allclose(stats[:, 0].mean(), reference)
    assert torch.all(stats[:, 3] == 0)  # no sparse layer, nothing dropped
    assert torch.allclose(stats[:, 1], (out.logits.argmax(1) == y).float())
    assert torch.allclose(stats[:, 4:], out.rates)


def test_schedules_become_recomputation_checkpoints():
    assert recomputation_for(TimeLoop(1), 5) is None  # store_all: nothing recomputed
    local = recomputation_for(TimeLoop(1, lambda W: uniform(W, 3)), 10)
    assert local == Recomputation(frozenset({3, 6})) and local.phase_starts == ()  # no phases: all on chip
    # double: the coarse checkpoints off-chip, and the last segment's fine ones (15, 17: that segment runs its
    # inner schedule straight from the forward pass); a phase from each off-chip checkpoint to the next
    coarse = recomputation_for(TimeLoop(1, lambda W: double(W, 5, 2, "uniform")), 20)
    assert coarse == Recomputation(frozenset({5, 10, 15, 17}), frozenset({5, 10}))
    assert coarse.phase_starts == (0, 5, 10) and coarse.blocks == tuple(map(phase_block, (0, 5, 10)))
    # the schedule counts windows: with windows of 2 steps, 20 steps are 10 windows
    assert recomputation_for(TimeLoop(2, lambda W: uniform(W, 3)), 20) == Recomputation(frozenset({3, 6}))


def test_recomputation_options(poptorch, tiny):
    cfg = tiny()
    log = poptorch.log
    poptorch_options(cfg, poptorch, recomputation=Recomputation(frozenset({4})))
    calls = dict(log)
    assert calls["_Popart.set"] == ("autoRecomputation", RECOMPUTE_ALL)
    assert ("_Popart.set", ("explicitRecomputation", True)) in log
    assert "TensorLocations.setActivationLocation" not in calls and "setExecutionStrategy" not in calls
    log.clear()
    poptorch_options(cfg, poptorch, recomputation=Recomputation(frozenset({4, 8, 9}), frozenset({4, 8})))
    calls = dict(log)
    (strategy,) = calls["setExecutionStrategy"]
    # one phase per segment, each on the replica's IPU, sent off chip at the end of each phase
    assert isinstance(strategy, poptorch_standin.SerialPhasedExecution)
    assert [phase.stages[0].blocks for phase in strategy.phases] == [(phase_block(0),), (phase_block(4),),
                                                                     (phase_block(8),)]
    assert all(phase.stages[0].ipu_id == 0 for phase in strategy.phases)
    assert strategy.liveness == poptorch_standin.Liveness.OffChipAfterEachPhase
    off, on = (poptorch_standin.TensorLocationSettings().useOnChipStorage(use) for use in (False, True))
    assert calls["TensorLocations.setActivationLocation"] == (off,)
    for where in ("Weight", "Optimizer", "Accumulator"):  # every phase uses all the weights: they stay
        assert calls[f"TensorLocations.set{where}Location"] == (on,)


def test_phases_cover_the_windows_between_offchip_checkpoints(poptorch, tiny):
    # The traced network under double: each off-chip checkpoint starts its phase's Block, the local ones are
    # checkpoints inside their segment's phase, and the loss and gradients are the CPU model's.
    cfg = tiny(data={"steps": 16})
    loop = TimeLoop(1, lambda W: double(W, 4, 1, "uniform"))
    net, traced = traced_twin(cfg, poptorch, loop)
    x, y = _batch(cfg)
    reference = F.cross_entropy(net(x).logits, y)
    want = torch.autograd.grad(reference, list(net.parameters()))
    loss, _ = TrainingStep(traced, poptorch)(x, y)
    got = torch.autograd.grad(loss, list(traced.parameters()))
    assert torch.allclose(loss, reference, atol=1e-6)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # 16 windows in segments of 4: off-chip checkpoints before windows 4 and 8 (the last segment runs its inner
    # schedule straight from the forward pass, keeping its first state locally): phases from windows 0, 4 and 8
    recomputation = recomputation_for(loop, 16)
    assert recomputation.phase_starts == (0, 4, 8)
    assert poptorch_standin._Blocks.started == [phase_block(0), phase_block(4), phase_block(8)]
    assert sorted(recomputation.checkpoints) == [4, 8, 12] and poptorch.marks.count == 3
    assert poptorch.marks.blocks == [phase_block(4), phase_block(8), phase_block(8)]


# ------------------------------------------------------------------ the trainer


def test_tiny_run_trains_and_writes_the_run_folder(poptorch, tmp_path, tiny):
    cfg = tiny()
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
    splits = load_splits(cfg.data, cfg.training.seed)
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
    # ipu-snn eval of an IPU run evaluates its host copy on the CPU
    assert evaluate_run(out) == pytest.approx((test_loss, test_accuracy), rel=1e-5)

    training_opts, eval_opts = poptorch.options_made
    calls = training_opts.calls()
    assert calls["useIpuModel"] == (True,) and calls["replicationFactor"] == (2,)
    assert calls["deviceIterations"] == (2,) and calls["Training.gradientAccumulation"] == (2,)
    assert calls["outputMode"] == (poptorch_standin.OutputMode.Sum,) and "_Popart.set" not in calls
    assert eval_opts.calls()["outputMode"] == (poptorch_standin.OutputMode.All,)
    assert not any(name.startswith("Training.") for name in eval_opts.calls())
    assert poptorch_standin.Executor.attached is None  # both executors released their IPUs


def test_double_schedule_marks_checkpoints_and_offloads_them(poptorch, tmp_path, tiny):
    cfg = tiny(bptt={"schedule": "double", "offchip_every": 2, "local_slots": 1, "window": 1}, training={"epochs": 1})
    train(cfg, tmp_path / "run")
    calls = poptorch.options_made[0].calls()
    # 6 windows in segments of 2: an off-chip checkpoint before window 2 (the last segment starts from a local one)
    (strategy,) = calls["setExecutionStrategy"]
    assert [phase.stages[0].blocks for phase in strategy.phases] == [(phase_block(n),) for n in (0, 2)]
    assert "TensorLocations.setActivationLocation" in calls
    assert ("_Popart.set", ("autoRecomputation", RECOMPUTE_ALL)) in poptorch.log
    # one device call of 2 iterations x 2 replicas x 2 micro-batches: 8 forwards, each marking every checkpoint
    assert poptorch.marks.count > 0 and poptorch.marks.count % 8 == 0


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


# ------------------------------------------------------------------ sparse layers (model.sparse)


def _sparse_step(poptorch, cfg, x, y):
    """The CPU model's loss, gradients and dropped spikes, then the same of its traced twin."""
    net, traced = traced_twin(cfg, poptorch)
    out = net(x)
    reference = F.cross_entropy(out.logits, y)
    want = torch.autograd.grad(reference, list(net.parameters()))
    loss, stats = TrainingStep(traced, poptorch)(x, y)
    got = torch.autograd.grad(loss, list(traced.parameters()))
    return traced, (reference, want, out.dropped.sum().item()), (loss, got, stats)


def test_traced_sparse_network_has_the_cpu_loss_and_gradients(poptorch, op_library, tiny):
    x, y = _batch(tiny())
    grads = {}
    for grad in ("dense", "spikes"):
        cfg = tiny(model={"sparse": True, "sparse_capacity": 1.0, "sparse_grad": grad})
        poptorch_standin.custom_op_calls.clear()
        net, (reference, want, _), (loss, got, stats) = _sparse_step(poptorch, cfg, x, y)
        assert torch.allclose(loss, reference, atol=1e-6), grad
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, atol=1e-5), grad
        grads[grad] = got
        # every spike product went through SpikeSelect + SpikeLinear: the recurrent ones every step,
        # the input and readout products once over the (one) window
        calls = poptorch_standin.custom_op_calls
        spike_linear = [c for c in calls if c["name"] == "SpikeLinear"]
        assert len(spike_linear) == cfg.data.num_steps * 2 + 3
        assert sum(c["name"] == "SpikeSelect" for c in calls) == len(spike_linear)
        # the input's products need no gradient of the data; every other one takes model.sparse_grad
        hidden = [c for c in spike_linear if c["shapes"][3][0] != 20]
        assert {c["attributes"]["dense_grad"] for c in hidden} == {int(grad == "dense")}
        # made traceable without a tile plan, every op spreads over the whole IPU
        assert {(c["attributes"]["tile_begin"], c["attributes"]["tile_end"]) for c in calls} == {(0, 0)}
        assert torch.all(stats[:, 3] == 0)
    # the two z gradients differ, so each comparison above saw its own
    assert any(not torch.allclose(a, b, atol=1e-5) for a, b in zip(grads["dense"], grads["spikes"]))


def test_traced_sparse_network_counts_what_overflow_drops(poptorch, op_library, tiny):
    cfg = tiny(model={"sparse": True, "sparse_capacity": 0.15, "sparse_overflow": "drop_and_count"})
    x, y = _batch(cfg)
    _, (reference, want, cpu_dropped), (loss, got, stats) = _sparse_step(poptorch, cfg, x, y)
    assert cpu_dropped > 0 and stats[:, 3].sum().item() == cpu_dropped
    assert torch.allclose(loss, reference, atol=1e-6)  # the same spikes left out on both
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_traced_auto_sparse_is_dense_on_the_ipu(poptorch, tiny):
    cfg = tiny(model={"sparse": "auto"})
    torch.manual_seed(0)
    net = build_traced(cfg, 20, 3, 0.01, poptorch)  # needs no op library
    x, y = _batch(cfg)
    TrainingStep(net, poptorch)(x, y)
    assert not poptorch_standin.custom_op_calls


def test_sparse_tiny_run_trains_and_a_cpu_evaluation_agrees(poptorch, op_library, tmp_path, tiny):
    cfg = tiny(model={"sparse": True, "sparse_capacity": 1.0}, training={"epochs": 1})
    out = tmp_path / "run"
    summary = train(cfg, out)
    (row,) = read_metrics_csv(out / "metrics.csv")
    assert math.isfinite(row["train_loss"]) and row["spikes_dropped"] == 0
    assert any(c["name"] == "SpikeLinear" for c in poptorch_standin.custom_op_calls)
    weights = newest_intact_checkpoint(out).weights
    splits = load_splits(cfg.data, cfg.training.seed)
    net = build_network(cfg.model, splits.n_inputs, splits.n_classes, splits.dt)  # sparse, on the cpu backend
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(weights)
    assert any(not torch.equal(initial[k], weights[k]) for k in initial)  # it trained
    test_loss, test_accuracy = evaluate(net, splits.test, 7, torch.device("cpu"))
    assert summary["test_loss"] == pytest.approx(test_loss, rel=1e-5)
    assert summary["test_accuracy"] == pytest.approx(test_accuracy)


def test_sparse_ops_run_on_their_populations_tiles(poptorch, op_library, tmp_path, tiny):
    cfg = tiny(model={"sparse": True, "sparse_capacity": 1.0}, training={"epochs": 1},
               data={"synthetic": {"n_train": 40, "n_test": 4, "n_classes": 3}}, ipu={"device_iterations": 1})
    train(cfg, tmp_path / "run")
    plan = plan_for_config(cfg, *input_shape(cfg.data), micro_batch_size(cfg, cfg.ipu.replication))
    pops = {p.population.name: (p.tile_begin, p.tile_end) for p in plan.populations}
    # every layer, and the readout, on tiles of its own
    assert len(set(pops.values())) == len(pops) == 3 and all(e > b for b, e in pops.values())
    # a matmul on the tiles of the population it feeds, by weight shape [n_in, n_out] (all distinct here);
    # a spike selection on those of the population it lists, by its neurons (the input's: its consumer's)
    by_weight = {(m.source.n, m.n_out): pops[m.population] for m in plan.matmuls}
    by_source = {m.source.n: pops.get(m.source.name, pops[m.population]) for m in plan.matmuls}
    assert len(by_weight) == 5 and len(by_source) == 3
    calls = poptorch_standin.custom_op_calls
    linears = [c for c in calls if c["name"] == "SpikeLinear"]
    selects = [c for c in calls if c["name"] == "SpikeSelect"]
    assert linears and len(selects) == len(linears) and len(calls) == 2 * len(linears)
    ranges = lambda c: (c["attributes"]["tile_begin"], c["attributes"]["tile_end"])  # noqa: E731
    for call in linears:
        assert ranges(call) == by_weight[call["shapes"][3]], call
    for call in selects:
        assert ranges(call) == by_source[call["shapes"][0][1]], call
    assert {call["shapes"][3] for call in linears} == set(by_weight)  # every matmul was traced
    assert {ranges(c) for c in linears} == set(pops.values())
    assert {ranges(c) for c in selects} == {pops["layer0"], pops["layer1"]}


def test_a_network_too_big_for_one_ipu_is_refused_before_training(poptorch, tmp_path, tiny):
    cfg = tiny(model={"sparse": True, "layers": [{"type": "rlif", "size": 20000}]})
    micro = micro_batch_size(cfg, cfg.ipu.replication)
    plan = plan_for_config(cfg, *input_shape(cfg.data), micro)
    assert not plan.fits
    with pytest.raises(ConfigError) as refused:
        train(cfg, tmp_path / "run")
    message = str(refused.value)
    assert message.startswith("model: The network does not fit one ipu-mk2") and plan.refusal() in message
    assert f"micro-batch of {micro} samples" in message and "ipus-per-replica 1" in message
    assert not (tmp_path / "run").exists() and not poptorch.options_made and not poptorch_standin.custom_op_calls


def test_sparse_overflow_is_reported_or_stops_the_run(poptorch, op_library, tmp_path, tiny):
    small = {"sparse": True, "sparse_capacity": 0.1}
    train(tiny(model=small | {"sparse_overflow": "drop_and_count"}, training={"epochs": 1}), tmp_path / "count")
    (row,) = read_metrics_csv(tmp_path / "count" / "metrics.csv")
    assert row["spikes_dropped"] > 0
    with pytest.raises(TrainingError, match="model.sparse_capacity = 0.1.*model.sparse_overflow=drop_and_count"):
        train(tiny(model=small, training={"epochs": 1}), tmp_path / "error")
    assert checkpoint_folders(tmp_path / "error") == []


def test_sparse_without_the_op_library_stops_at_start(poptorch, monkeypatch, tmp_path, tiny):
    custom_ops._load.cache_clear()
    monkeypatch.setenv(custom_ops.LIBRARY_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(DeviceError, match="make -C custom_ops ipu"):
        train(tiny(model={"sparse": True}), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    custom_ops._load.cache_clear()


@pytest.mark.ipu
def test_tiny_run_on_the_ipu_model(tmp_path, tiny):
    """With the Poplar SDK: the same tiny run on the IPU Model, compiled by PopART."""
    summary = train(tiny(training={"epochs": 1}, ipu={"replication": 1, "device_iterations": 1}), tmp_path / "run")
    assert math.isfinite(summary["train_loss"]) and 0 <= summary["test_accuracy"] <= 1


@pytest.mark.ipu
def test_sparse_tiny_run_on_the_ipu_model(tmp_path, tiny):
    """With the Poplar SDK and `make -C custom_ops ipu`: a sparse tiny run through SpikeSelect + SpikeLinear."""
    cfg = tiny(model={"sparse": True, "sparse_capacity": 0.5, "sparse_overflow": "drop_and_count"},
               training={"epochs": 1}, ipu={"replication": 1, "device_iterations": 1})
    summary = train(cfg, tmp_path / "run")
    (row,) = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert math.isfinite(summary["train_loss"]) and 0 <= summary["test_accuracy"] <= 1 and "spikes_dropped" in row
