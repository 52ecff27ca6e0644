"""The ipu_emulator spike backend (the readout's products on ``device: ipu-emulator``), and
``device: ipu-emulator`` end to end (its spiking layers run as the network op on the host interpreter:
every spike listed, the exact input gradient)."""

import json

import pytest
import torch
import yaml
from rich.console import Console

from ipu_snn.config import ModelConfig, validate_config
from ipu_snn.devices import SPECS, device, device_spec, resolve_device
from ipu_snn.errors import ConfigError
import ipu_snn.ipu  # noqa: F401  (registers the emulator's spike backend)
from ipu_snn.network import build_network

MK2 = SPECS["ipu-mk2"]


# ------------------------------------------------------------------------------ backend


def random_list(batch, n, capacity, density, seed):
    from ipu_snn.ops import SparseSpikes

    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(batch, n, generator=g) < density).float()
    return SparseSpikes.from_dense(z, capacity, overflow="drop_and_count", backend="cpu"), g


@pytest.mark.parametrize("batch, n_in, n_out, density", [(5, 40, 13, 0.2), (3, 9, 1, 0.5), (7, 20, 30, 0.0)])
def test_backend_kernels_equal_the_cpu_backend(batch, n_in, n_out, density):
    from ipu_snn.ops.registry import get_kernels

    emu, cpu = get_kernels("ipu_emulator"), get_kernels("cpu")
    spikes, g = random_list(batch, n_in, max(1, n_in // 2), density, seed=n_in)
    weight = torch.randn(n_in, n_out, generator=g)
    grad_out = torch.randn(batch, n_out, generator=g)
    ids, counts = spikes.ids, spikes.counts
    torch.testing.assert_close(emu.forward(ids, counts, weight), cpu.forward(ids, counts, weight))
    torch.testing.assert_close(emu.grad_weight(ids, counts, grad_out, n_in), cpu.grad_weight(ids, counts, grad_out, n_in))
    torch.testing.assert_close(emu.grad_input(ids, counts, weight, grad_out), cpu.grad_input(ids, counts, weight, grad_out))
    z = (torch.rand(batch, n_in, generator=g) < 0.4).float()
    near = torch.rand(batch, n_in, generator=g) < 0.3
    for a, b in zip(emu.compact(z, near, 6), cpu.compact(z, near, 6)):
        torch.testing.assert_close(a, b)


def test_ipu_emulator_device_is_the_cpu_with_the_emulator_backend():
    assert resolve_device("ipu-emulator") == torch.device("cpu")
    assert device_spec("ipu-emulator").name == "ipu-mk2"
    assert device("ipu-emulator").spikes == "ipu_emulator" and device("cpu").spikes is None
    cfg = validate_config({"model": {"layers": [{"type": "lif", "size": 4}], "sparse": True}, "device": "ipu-emulator"})
    net = build_network(cfg.model, 6, 2, dt=1e-3, device=cfg.device)
    policies = [net.layers[0].policies.input, net.readout.policy]
    assert all(p.mode == "sparse" and p.backend == "ipu_emulator" for p in policies)
    for sparse in (False, "auto"):
        dense = cfg.model.model_copy(update={"sparse": sparse})
        with pytest.raises(ConfigError, match="model.sparse"):
            build_network(dense, 6, 2, dt=1e-3, device="ipu-emulator")


@pytest.mark.parametrize("sparse_grad", ["spikes", "dense"])
def test_two_layer_network_gets_the_cpu_backends_gradients(sparse_grad):
    model = ModelConfig.model_validate({
        "layers": [{"type": "rlif", "size": 20}, {"type": "alif", "size": 12, "learn_decay": True}],
        "readout": {"reduce": "mean"}, "sparse": True, "sparse_capacity": 1.0, "sparse_grad": sparse_grad})
    g = torch.Generator().manual_seed(1)
    batches = [((torch.rand(4, 15, 9, generator=g) < 0.3).float(), torch.randint(0, 3, (4,), generator=g))
               for _ in range(2)]
    runs = {}
    for device in ("cpu", "ipu-emulator"):
        torch.manual_seed(0)
        net = build_network(model, 9, 3, dt=1e-3, device=device)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
        grads = []
        for x, y in batches:  # two optimizer steps
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x).logits, y).backward()
            grads.append([p.grad.clone() for p in net.parameters()])
            optimizer.step()
        runs[device] = grads, [p.detach().clone() for p in net.parameters()]
    (cpu_grads, cpu_params), (emu_grads, emu_params) = runs["cpu"], runs["ipu-emulator"]
    assert any(float(g.abs().sum()) > 0 for g in cpu_grads[1])
    for step_cpu, step_emu in zip(cpu_grads, emu_grads):
        for a, b in zip(step_cpu, step_emu):
            torch.testing.assert_close(b, a)
    for a, b in zip(cpu_params, emu_params):
        torch.testing.assert_close(b, a)


def test_train_cli_on_the_ipu_emulator_matches_cpu(tmp_path):
    from ipu_snn.cli import main
    from ipu_snn.training import train

    raw = {"model": {"layers": [{"type": "rlif", "size": 12, "tau": 0.1}, {"type": "lif", "size": 8, "tau": 0.1}],
                     "readout": {"reduce": "mean"}, "sparse": True, "sparse_capacity": 1.0,
                     "sparse_overflow": "drop_and_count", "sparse_grad": "dense"},
           "data": {"steps": 10, "channel_pooling": 35, "batch_size": 16,
                    "synthetic": {"n_train": 200, "n_test": 16, "n_classes": 3}},
           "training": {"epochs": 2, "lr": 0.01, "seed": 2}, "device": "ipu-emulator"}
    config = tmp_path / "emu.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config), "--out", str(tmp_path / "emu"), "data.synthetic.n_train=64",
                 "training.epochs=1"]) == 0
    emulated = json.loads((tmp_path / "emu" / "summary.json").read_text())
    assert emulated["epochs"] == 1 and emulated["device"] == "cpu"
    cpu_raw = raw | {"device": "cpu", "data": raw["data"] | {"synthetic": raw["data"]["synthetic"] | {"n_train": 64}},
                     "training": raw["training"] | {"epochs": 1}}
    on_cpu = train(validate_config(cpu_raw), tmp_path / "cpu", console=Console(quiet=True))
    for key in ("train_loss", "test_loss", "val_accuracy", "test_accuracy"):
        assert emulated[key] == pytest.approx(on_cpu[key], rel=1e-4), key


def test_seed_config_plans_as_fitting_one_mk2(capsys):
    from ipu_snn.cli import main

    assert main(["plan", "configs/ipu_seed_rlif.yaml", "--device", "ipu-mk2", "--json"]) == 0
    tiles = json.loads(capsys.readouterr().out)["tiles"]
    assert {"used", "max_tile_bytes", "tile_capacity_bytes"} <= set(tiles)
    assert tiles["fits"] and tiles["refusal"] is None and tiles["source"] == "graph"
    assert tiles["max_tile_bytes"] <= tiles["tile_capacity_bytes"] == 624 * 1024
    assert tiles["time_loop"]["T"] == 100


def test_the_alif_seed_network_plans_from_the_ops_graph(capsys):
    # the network op runs ALIF layers: the seed paper's ALIF workload is counted from its graph, and fits
    from ipu_snn.cli import main

    # planning reads no N-MNIST file: its shape is fixed (2312 channels, 10 classes)
    assert main(["plan", "configs/ipu_seed_alif_nmnist.yaml", "data.path=/nowhere/nmnist", "--device",
                 "ipu-mk2", "--json"]) == 0
    tiles = json.loads(capsys.readouterr().out)["tiles"]
    assert tiles["fits"] and tiles["refusal"] is None and tiles["source"] == "graph"
    assert tiles["max_tile_bytes"] <= tiles["tile_capacity_bytes"] == 624 * 1024


def test_plan_cli_refuses_a_network_too_large_for_one_mk2(tmp_path, capsys):
    from ipu_snn.cli import main

    raw = yaml.safe_load(open("configs/ipu_seed_rlif.yaml"))
    raw["model"]["layers"] = [{"type": "rlif", "size": 4000}] * 2
    config = tmp_path / "big.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(config), "--device", "ipu-mk2", "--json"]) == 0
    tiles = json.loads(capsys.readouterr().out)["tiles"]
    assert not tiles["fits"] and tiles["max_tile_bytes"] > tiles["tile_capacity_bytes"]
    fullest = tiles["fullest_tile"]
    assert tiles["refusal"].startswith(f"The network does not fit one ipu-mk2: tile {fullest['tile']} needs")
    assert fullest["largest"][0]["name"] in tiles["refusal"]


def test_train_on_the_ipu_emulator_with_double_checkpointing(tmp_path):
    # Through the train entry point: device ipu-emulator with bptt.schedule double (off-chip checkpoints in the
    # host's store for the CPU run) trains as the CPU does with the same schedule and windows.
    from ipu_snn.training import train

    raw = {"model": {"layers": [{"type": "rlif", "size": 12, "tau": 0.1}], "readout": {"reduce": "mean"},
                     "sparse": True, "sparse_capacity": 1.0, "sparse_overflow": "drop_and_count",
                     "sparse_grad": "dense"},
           "data": {"steps": 12, "channel_pooling": 35, "batch_size": 8,
                    "synthetic": {"n_train": 32, "n_test": 8, "n_classes": 3}},
           "training": {"epochs": 1, "lr": 0.01, "seed": 2},
           "bptt": {"schedule": "double", "window": 3, "offchip_every": 2}, "device": "ipu-emulator"}
    quiet = Console(quiet=True)
    emulated = train(validate_config(raw), tmp_path / "emu", console=quiet)
    saved = yaml.safe_load((tmp_path / "emu" / "config.yaml").read_text())
    assert saved["bptt"]["schedule"] == "double" and saved["bptt"]["window"] == 3
    on_cpu = train(validate_config(raw | {"device": "cpu"}), tmp_path / "cpu", console=quiet)
    for key in ("train_loss", "test_loss", "val_accuracy", "test_accuracy"):
        assert emulated[key] == pytest.approx(on_cpu[key], rel=1e-4), key
