"""The layer tile emulator, the ipu_emulator backend, and ``device: ipu-emulator`` end to end (its spiking layers
run as the network op on the host interpreter: every spike listed, the exact input gradient)."""

import dataclasses
import json

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from ipu_snn.config import ModelConfig, validate_config
from ipu_snn.devices import SPECS, device, device_spec, resolve_device
from ipu_snn.errors import ConfigError
import ipu_snn.ipu  # noqa: F401  (registers the emulator's spike backend)
from ipu_snn.ipu.emulator import TileOverflowError
from ipu_snn.ipu.layer_emulator import LayerParams, emulate_layer
from ipu_snn.ipu.tiles import plan_tiles
from ipu_snn.network import build_network

MK2 = SPECS["ipu-mk2"]


def sparse_model(kind, sizes, learn=False, capacity=0.5):
    return ModelConfig.model_validate({
        "layers": [{"type": kind, "size": n, "learn_decay": learn} for n in sizes],
        "sparse": True, "sparse_capacity": capacity, "sparse_grad": "spikes"})


def reference_layer(cfg, n_in, layer, x, grad_z, dtype, seed=0):
    """Autograd through the torch layer (sparse ops, gradient at the listed spikes, as the tiles compute it)."""
    torch.manual_seed(seed)
    net = build_network(cfg, n_in, 3, dt=1e-3).to(dtype)
    module = net.layers[layer]
    x = x.clone().requires_grad_(layer > 0)
    train, _, _ = module.window(module.initial_state(x.shape[1], x), x)
    out = train.z
    # Consumers' sparse input gradient reaches only the spikes: the emulator uses grad_z there.
    (out * grad_z * out.detach()).sum().backward()
    grads = {"w_in": module.fc.weight.grad, "b_in": module.fc.bias.grad}
    if module.rec is not None:
        grads["w_rec"] = module.rec.weight.grad
    if cfg.layers[layer].learn_decay:
        grads["beta"] = module.beta.grad
        if hasattr(module, "rho"):
            grads["rho"] = module.rho.grad
    return module, out.detach(), grads, x.grad


def inputs(T, B, n_in, n_out, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, B, n_in, generator=g) < 0.3).to(dtype)
    return x, torch.randn(T, B, n_out, generator=g, dtype=dtype)


@pytest.mark.parametrize("kind, learn, layer", [
    ("rlif", False, 0), ("alif", False, 0), ("lif", False, 0),
    ("rlif", True, 0), ("alif", True, 0), ("rlif", False, 1), ("alif", True, 1),
])
def test_layer_emulation_equals_autograd(kind, learn, layer):
    T, B, n_in, sizes = 6, 4, 30, (24, 16)
    cfg = sparse_model(kind, sizes, learn)
    n_prev = (n_in,) + sizes
    x, grad_z = inputs(T, B, n_prev[layer], sizes[layer], torch.float64, seed=layer)
    module, z, grads, grad_x = reference_layer(cfg, n_in, layer, x, grad_z, torch.float64)
    assert 0 < z.sum() < z.numel()  # some neurons fire, not all
    # 8 tiles for three populations: several neurons on each tile.
    plan = plan_tiles(cfg, n_in, 3, B, MK2, 0.5, dtype_bytes=8, steps=T, max_tiles=8)
    if layer == 0:  # walk the batch in passes of 3 samples (4 = 3 + 1)
        pops = tuple(dataclasses.replace(p, chunk=3) for p in plan.populations)
        plan = dataclasses.replace(plan, populations=pops)
    report = emulate_layer(plan, f"layer{layer}", LayerParams.of(module), x, grad_z)
    torch.testing.assert_close(report.z, z)
    assert set(report.grads) == set(grads)
    for name, g in grads.items():
        torch.testing.assert_close(report.grads[name], g, msg=name)
    if layer == 0:
        assert report.grad_input is None  # host input: no input gradient
    else:
        torch.testing.assert_close(report.grad_input, grad_x)
    assert report.tiles_used == plan.population(f"layer{layer}").tiles > 1


def test_layer_emulation_agrees_with_the_plan():
    # float32, the plan's dtype: tiles used, every tile's peak and the exchange per step within 10%.
    T, B, n_in, n = 10, 8, 100, 200
    cfg = sparse_model("rlif", [n], capacity=0.25)
    x, grad_z = inputs(T, B, n_in, n, torch.float32, seed=5)
    x = x * (torch.rand(x.shape, generator=torch.Generator().manual_seed(6)) < 0.3)  # ~9% input density
    module, z, grads, _ = reference_layer(cfg, n_in, 0, x, grad_z, torch.float32)
    plan = plan_tiles(cfg, n_in, 3, B, MK2, 0.25, steps=T, max_tiles=40)
    pop = plan.population("layer0")
    report = emulate_layer(plan, "layer0", LayerParams.of(module), x, grad_z)
    torch.testing.assert_close(report.z, z)
    for name, g in grads.items():
        torch.testing.assert_close(report.grads[name], g, msg=name, rtol=1e-4, atol=1e-5)

    assert report.tiles_used == pop.tiles == 39
    planned = {t.tile: t.total_bytes for t in plan.loads_of("layer0")}
    assert set(report.tile_peaks) == set(planned)
    for tile, peak in report.tile_peaks.items():
        assert 0.9 * planned[tile] <= peak <= planned[tile], tile  # the plan is a close upper bound
    assert report.peak_tile_bytes == pytest.approx(max(planned.values()), rel=0.10)
    matmuls = plan.matmuls_into("layer0")
    fwd = pop.exchange_bytes_forward + sum(m.exchange_bytes_forward for m in matmuls)
    bwd = pop.exchange_bytes_backward + sum(m.exchange_bytes_backward for m in matmuls)
    assert report.exchange_bytes_forward == pytest.approx(fwd, rel=0.10)
    assert report.exchange_bytes_backward == pytest.approx(bwd, rel=0.10)
    for kind in ("weights", "weight_grads", "history", "state"):  # the persistent kinds, as planned
        fullest = max(plan.loads_of("layer0"), key=lambda t: t.bytes_by_kind[kind])
        assert report.peak_by_kind[kind] == pytest.approx(fullest.bytes_by_kind[kind], rel=0.10), kind

    # SRAM a tenth smaller than the plan's fullest tile: the emulated tile overflows.
    tight = dataclasses.replace(plan, tile_capacity_bytes=int(0.9 * report.peak_tile_bytes))
    with pytest.raises(TileOverflowError, match="overflows its SRAM"):
        emulate_layer(tight, "layer0", LayerParams.of(module), x, grad_z)


def test_layer_emulation_checks_its_inputs():
    cfg = sparse_model("rlif", [12])
    plan = plan_tiles(cfg, 10, 3, 4, MK2, 0.5, steps=5, max_tiles=6)
    module = build_network(cfg, 10, 3, dt=1e-3).layers[0]
    x = torch.zeros(5, 4, 10)
    with pytest.raises(Exception, match="batch 4"):
        emulate_layer(plan, "layer0", LayerParams.of(module), torch.zeros(5, 3, 10), None)
    with pytest.raises(Exception, match="readout"):
        emulate_layer(plan, "readout", LayerParams.of(module), x, None)
    lif = build_network(sparse_model("lif", [12]), 10, 3, dt=1e-3).layers[0]
    with pytest.raises(Exception, match="recurrent"):
        emulate_layer(plan, "layer0", LayerParams.of(lif), x, None)


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


@pytest.mark.parametrize("config", ["configs/ipu_seed_rlif.yaml",
                                    # planning reads no N-MNIST file: its shape is fixed (2312 channels, 10 classes)
                                    "configs/ipu_seed_alif_nmnist.yaml data.path=/nowhere/nmnist"])
def test_seed_configs_plan_as_fitting_one_mk2(config, capsys):
    from ipu_snn.cli import main

    assert main(["plan", *config.split(), "--device", "ipu-mk2", "--json"]) == 0
    tiles = json.loads(capsys.readouterr().out)["tiles"]
    assert {"used", "max_tile_bytes", "tile_capacity_bytes"} <= set(tiles)
    assert tiles["fits"] and tiles["refusal"] is None
    assert tiles["used"] == 1472 and tiles["max_tile_bytes"] <= tiles["tile_capacity_bytes"] == 624 * 1024
    assert tiles["time_loop"]["T"] == 100 and tiles["assumptions"]["batch"] == 48


def test_plan_cli_refuses_a_network_too_large_for_one_mk2(tmp_path, capsys):
    from ipu_snn.cli import main

    raw = yaml.safe_load(open("configs/ipu_seed_rlif.yaml"))
    raw["model"]["layers"] = [{"type": "rlif", "size": 4000}] * 2
    config = tmp_path / "big.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(config), "--device", "ipu-mk2", "--json"]) == 0
    tiles = json.loads(capsys.readouterr().out)["tiles"]
    assert not tiles["fits"] and tiles["max_tile_bytes"] > tiles["tile_capacity_bytes"]
    assert "does not fit one ipu-mk2" in tiles["refusal"] and "Would fit with any one of" in tiles["refusal"]


# ------------------------------------------------------------------------------ the BPTT schedule, tile by tile


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(2, 14), window=st.integers(1, 5), every=st.integers(1, 3),
       name=st.sampled_from(["uniform", "revolve", "double", "double_revolve", "two_level"]),
       case=st.sampled_from([("rlif", True, 0), ("alif", True, 1), ("lif", False, 0), ("rlif", False, 1)]),
       seed=st.integers(0, 2**16))
def test_windowed_schedules_on_the_tiles_give_the_cpu_backends_gradients(steps, window, every, name, case, seed, schedules):
    # float64: the layer emulated window by window under the schedule (recomputing windows from local or
    # streaming-memory checkpoints) equals autograd through the layer on the CPU backend.
    from ipu_snn.ipu.tiles import TimeOnTiles

    kind, learn, layer = case
    B, n_in, sizes = 3, 20, (16, 12)
    cfg = sparse_model(kind, sizes, learn, capacity=1.0)
    x, grad_z = inputs(steps, B, ((n_in,) + sizes)[layer], sizes[layer], torch.float64, seed)
    module, z, grads, grad_x = reference_layer(cfg, n_in, layer, x, grad_z, torch.float64, seed)
    time = TimeOnTiles.of(steps, window, schedules(name, every))
    plan = plan_tiles(cfg, n_in, 3, B, MK2, 1.0, dtype_bytes=8, time=time, max_tiles=6)
    report = emulate_layer(plan, f"layer{layer}", LayerParams.of(module), x, grad_z)
    torch.testing.assert_close(report.z, z)
    assert set(report.grads) == set(grads)
    for key, g in grads.items():
        torch.testing.assert_close(report.grads[key], g, msg=key)
    if layer:
        torch.testing.assert_close(report.grad_input, grad_x)
    assert report.steps_evaluated == time.evaluated_steps
    assert report.streaming_peak_bytes == plan.streaming_bytes_of(f"layer{layer}")


@pytest.mark.parametrize("name, window, every", [("double", 4, 2), ("uniform", 3, 2), ("revolve", 2, 3)])
def test_windowed_emulation_agrees_with_the_plan(name, window, every, schedules):
    # float32, the plan's dtype: every tile's peak within 10% below the plan's account, the streaming memory's
    # peak exactly the plan's, and what moves to and from it once per store and per load.
    from ipu_snn.ipu.tiles import TimeOnTiles

    T, B, n_in, n = 16, 8, 100, 200
    cfg = sparse_model("rlif", [n], learn=True, capacity=0.25)
    x, grad_z = inputs(T, B, n_in, n, torch.float32, seed=5)
    x = x * (torch.rand(x.shape, generator=torch.Generator().manual_seed(6)) < 0.3)  # ~9% input density
    module, z, grads, _ = reference_layer(cfg, n_in, 0, x, grad_z, torch.float32)
    time = TimeOnTiles.of(T, window, schedules(name, every))
    plan = plan_tiles(cfg, n_in, 3, B, MK2, 0.25, time=time, max_tiles=40)
    report = emulate_layer(plan, "layer0", LayerParams.of(module), x, grad_z)
    torch.testing.assert_close(report.z, z)
    for key, g in grads.items():  # float32 sums in another order (float64 is exact, above)
        torch.testing.assert_close(report.grads[key], g, msg=key, rtol=1e-4, atol=2e-4)
    planned = {t.tile: t.total_bytes for t in plan.loads_of("layer0")}
    assert set(report.tile_peaks) == set(planned)
    for tile, peak in report.tile_peaks.items():
        assert 0.9 * planned[tile] <= peak <= planned[tile], tile
    assert report.streaming_peak_bytes == plan.streaming_bytes_of("layer0")
    assert report.streaming_moved_bytes == time.offchip_transfers * plan.checkpoint_bytes("layer0")
    if name == "double":
        assert report.streaming_peak_bytes > 0
    for load in plan.loads_of("layer0"):  # what the schedule keeps on each tile, exactly as planned
        assert report.kept_peaks[load.tile] == load.bytes_by_kind["history"] + load.bytes_by_kind["checkpoints"]


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
