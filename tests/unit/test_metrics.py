"""NeuroBench-style metrics: against a step-by-step count of NeuroBench's definitions, and in a run's outputs."""

import json

import pytest
import torch
from rich.console import Console

from ipu_snn.bptt.schedules import uniform
from ipu_snn.executor import TimeLoop
from ipu_snn.cli import main
from ipu_snn.config import validate_config
from ipu_snn.metrics import WorkloadTally, footprint_bytes, parameter_count
from ipu_snn.network import build_network
from ipu_snn.reporting import read_metrics_csv
from ipu_snn.training import train

LAYERS = [{"type": "rlif", "size": 12, "beta": 0.9, "learn_decay": True}, {"type": "lif", "size": 9, "beta": 0.8}]


def network(fused="auto", loop=TimeLoop(), n_in=15, classes=4, seed=0):
    cfg = validate_config({"model": {"layers": LAYERS, "fused": fused}})
    torch.manual_seed(seed)
    net = build_network(cfg.model, n_in, classes, 1e-3, loop=loop)
    with torch.no_grad():
        net.layers[0].fc.weight.mul_(2.5)
        net.layers[0].fc.weight[3] = 0.0  # a pruned input row
        net.layers[0].rec.weight[:, 5] = 0.0  # pruned recurrent entries
        net.readout.fc.weight[2, 1] = 0.0
    return net.eval()


def neurobench_by_steps(net, x):
    """NeuroBench's counts as its hooks take them: every connection called once per step, inputs and weights
    binarised, bias left out; a step of non-spike inputs counts MACs."""
    xs = x.transpose(0, 1)
    spikes, h = [], xs
    with torch.no_grad():
        for layer in net.layers:
            h = layer.window(layer.initial_state(xs.shape[1], xs), h)[0].z
            spikes.append(h)
    calls = [(xs, net.layers[0].fc.weight)]
    for i, s in enumerate(spikes):
        if net.layers[i].rec is not None:
            previous = torch.cat([torch.zeros_like(s[:1]), s[:-1]])
            calls.append((previous, net.layers[i].rec.weight))
        calls.append((s, (net.layers[i + 1].fc if i + 1 < len(spikes) else net.readout.fc).weight))
    acs = macs = dense = 0.0
    for inputs, weight in calls:
        for t in range(inputs.shape[0]):
            step = inputs[t]
            ops = float(((step != 0).double() @ (weight != 0).double()).sum())
            if ((step == 0) | (step == 1) | (step == -1)).all():
                acs += ops
            else:
                macs += ops
            dense += float((torch.ones_like(step).double() @ torch.ones_like(weight).double()).sum())
    batch = x.shape[0]
    per_layer = [1 - float(s.sum()) / s.numel() for s in spikes]
    overall = 1 - sum(float(s.sum()) for s in spikes) / sum(s.numel() for s in spikes)
    return {"synops_effective_acs": acs / batch, "synops_effective_macs": macs / batch, "synops_dense": dense / batch,
            "activation_sparsity": overall,
            **{f"activation_sparsity_layer{i}": v for i, v in enumerate(per_layer)}}


def tally_of(net, batches):
    tally = WorkloadTally()
    with torch.no_grad():
        for x in batches:
            tally.add(x, net(x, with_counts=True), net.n_inputs)
    return tally.metrics(net.state_dict())


@pytest.mark.parametrize("fused", [False, "auto"])
def test_tally_matches_neurobench_counted_step_by_step(fused):
    net = network(fused)
    gen = torch.Generator().manual_seed(1)
    spikes = [(torch.rand(5, 30, 15, generator=gen) < 0.35).float() for _ in range(2)]
    counts = torch.randint(0, 3, (3, 30, 15), generator=gen).float()
    counts[:, :10] = counts[:, :10].clamp(max=1)  # the first 10 steps are spikes (ACs), later ones counts (MACs)
    batches = spikes + [counts]
    expected = {k: 0.0 for k in ("synops_effective_acs", "synops_effective_macs", "synops_dense")}
    samples = 0
    for x in batches:
        per = neurobench_by_steps(net, x)
        for k in expected:
            expected[k] += per[k] * x.shape[0]
        samples += x.shape[0]
    got = tally_of(net, batches)
    for k in expected:
        assert got[k] == pytest.approx(expected[k] / samples, rel=1e-12), k
    assert got["synops_effective_macs"] > 0 and got["synops_effective_acs"] < got["synops_dense"]
    whole = neurobench_by_steps(net, torch.cat(spikes))  # sparsity does not depend on how batches split
    assert tally_of(net, spikes)["activation_sparsity_layer1"] == pytest.approx(whole["activation_sparsity_layer1"])
    assert tally_of(net, spikes)["activation_sparsity"] == pytest.approx(whole["activation_sparsity"])
    assert 0 < whole["activation_sparsity"] < 1


def test_counts_do_not_depend_on_windows_or_schedule():
    batches = [(torch.rand(2, 23, 15, generator=torch.Generator().manual_seed(2)) < 0.3).float()]
    whole = tally_of(network(), batches)
    assert whole and tally_of(network(loop=TimeLoop(7, lambda n: uniform(n, 2))), batches) == pytest.approx(whole)
    # without with_counts a forward reports none, and the tally says so
    tally = WorkloadTally()
    tally.add(batches[0], network()(batches[0]))
    assert tally.metrics(network().state_dict()) == {}


def test_static_metrics_count_parameters_and_buffers():
    net = network()
    n_in, a, b, c = 15, 12, 9, 4
    params = (n_in * a + a) + a * a + a + (a * b + b) + (b * c + c)  # layer 0 learns its decay (a parameter)
    buffers = b + c  # layer 1's and the readout's fixed decays
    assert parameter_count(net) == params
    assert footprint_bytes(net) == 4 * (params + buffers)


def test_run_outputs_and_eval_report_the_metrics(tmp_path, capsys):
    raw = {"model": {"layers": [{"type": "rlif", "size": 16}], "readout": {"reduce": "mean"}},
           "data": {"steps": 20, "channel_pooling": 20, "batch_size": 32, "val_split": 0.2,
                    "synthetic": {"n_train": 80, "n_test": 32, "n_classes": 4}},
           "training": {"epochs": 2, "lr": 0.01}}
    summary = train(validate_config(raw), tmp_path, console=Console(quiet=True))
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert all(0 < r["val_activation_sparsity_layer0"] < 1 and r["val_synops_dense"] > 0 for r in rows)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["footprint_bytes"] > 4 * written["parameters"] - 1
    assert written["test_synops_dense"] == pytest.approx(20 * (35 * 16 + 16 * 16 + 16 * 4))
    assert 0 < written["test_synops_effective_acs"] < written["test_synops_dense"]
    assert written["test_activation_sparsity"] == summary["test_activation_sparsity"]
    assert main(["eval", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"activation sparsity {written['test_activation_sparsity']:.3f}" in out
    assert f"dense {written['test_synops_dense']:,.0f}" in out and "footprint" in out


@pytest.mark.parametrize("steps", [1, 63, 64, 150])
def test_the_tally_counts_packed_bits_as_the_frames_they_pack(steps):
    # the bits path counts a long batch a few steps at a time; it must agree with the float frames' path
    from types import SimpleNamespace

    from ipu_snn.network import pack_inputs

    torch.manual_seed(steps)
    frames = (torch.rand(3, steps, 37) < 0.2).float()
    out = SimpleNamespace(counts=[torch.zeros(2, 5)])
    dense, packed = WorkloadTally(), WorkloadTally()
    dense.add(frames, out)
    packed.add(pack_inputs(frames), out, 37)
    assert torch.equal(dense.input_ac, packed.input_ac) and torch.equal(dense.input_mac, packed.input_mac)
    assert (packed.samples, packed.steps) == (3, steps) and float(packed.input_ac.sum()) == float(frames.sum())
