"""The IPU tile model (ipu_snn.ipu.tiles) and its CPU tile emulator (ipu_snn.ipu.emulator)."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.config import ModelConfig
from ipu_snn.devices import SPECS
from ipu_snn.ipu.emulator import NOT_EMULATED, TileOverflowError, emulate_plan_matmul, emulate_spike_matmul
from ipu_snn.ipu.tiles import plan_tiles, split_even, tiles_json
from ipu_snn.ops import SparseSpikes

MK2, MK1 = SPECS["ipu-mk2"], SPECS["ipu-mk1"]


def model(kind, sizes):
    return ModelConfig(layers=[{"type": kind, "size": n} for n in sizes])


def seed_sizes(layers):
    # The seed paper's networks: about 1471 * 2 neurons in all, so about 2 neurons per tile.
    return [round(1471 * 2 / layers)] * layers


@pytest.mark.parametrize("kind", ["lif", "rlif", "alif"])
@pytest.mark.parametrize("layers", [2, 3, 4, 5])
@pytest.mark.parametrize("n_inputs, n_classes", [(700, 20), (2 * 34 * 34, 10)])
def test_seed_networks_fit_one_mk2(kind, layers, n_inputs, n_classes):
    # Feed-forward, recurrent and ALIF, SHD and N-MNIST inputs, at the default spike capacity 0.25.
    plan = plan_tiles(model(kind, seed_sizes(layers)), n_inputs, n_classes, 48, MK2, steps=100)
    assert plan.capacity_fraction == 0.25
    assert plan.fits, plan.refusal()
    assert plan.refusal() == ""
    assert plan.used == 1472
    js = tiles_json(plan)
    assert js["used"] == 1472 and js["max_tile_bytes"] <= js["tile_capacity_bytes"] == 624 * 1024
    assert js["exchange_bytes_forward"] > 0 and js["exchange_bytes_backward"] > js["exchange_bytes_forward"]
    layer_pops = [p for p in js["populations"] if p["name"].startswith("layer")]
    assert all(p["neurons_per_tile"][1] <= 3 for p in layer_pops)  # about 2 neurons per tile
    assert js["fullest_tile"]["bytes_by_kind"]["history"] > 0


def test_history_is_spike_bits_and_surrogate_derivatives():
    # Per stored step a tile keeps z as packed bits and d, exactly the fused neuron kernel's outputs
    # for its neurons; learned decays add the pre-step state (v, and a for ALIF).
    from ipu_snn.ipu.tiles import Sizing, TimeOnTiles, history_bytes_per_step, populations_of
    from ipu_snn.neuron.ops import neuron_step_fwd

    batch, own = 48, 3
    for kind, learn in [("lif", False), ("rlif", False), ("alif", False), ("rlif", True), ("alif", True)]:
        cfg = ModelConfig(layers=[{"type": kind, "size": 30, "learn_decay": learn}])
        pop = populations_of(cfg, 10, 2, 0.25)[0]
        for d_bytes, d_dtype in [(4, torch.float32), (2, torch.float16)]:
            s = Sizing(batch, 4, TimeOnTiles.store_all(100), 2, d_bytes)
            alif = kind == "alif"
            state = torch.zeros(batch, own)
            _, _, _, d, bits = neuron_step_fwd(torch.randn(batch, own), state, state if alif else None,
                                               torch.full((own,), 0.9), torch.full((own,), 0.9) if alif else None,
                                               kind, 1.0, 1.8 if alif else 0.0, "subtract", "fast_sigmoid", 10.0, d_dtype, "cpu")
            kernel_bytes = bits.numel() * bits.element_size() + d.numel() * d.element_size()
            pre_step = (2 if alif else 1) * batch * own * 4 if learn else 0
            assert history_bytes_per_step(pop, own, s) == kernel_bytes + pre_step
    # The readout keeps nothing per step unless its decay is learned.
    readout = populations_of(ModelConfig(layers=[{"type": "lif", "size": 4}]), 10, 2, 0.25)[-1]
    assert history_bytes_per_step(readout, 2, Sizing(8, 4, TimeOnTiles.store_all(10), 2, 4)) == 0


def test_half_precision_surrogate_leaves_more_room():
    cfg = model("rlif", seed_sizes(2))
    full = plan_tiles(cfg, 700, 20, 48, MK2, steps=100)
    half = plan_tiles(cfg, 700, 20, 48, MK2, steps=100, surrogate_bytes=2)
    assert half.fits and full.fits
    full_tile, half_tile = full.fullest_tile(), half.fullest_tile()
    assert half_tile.bytes_by_kind["history"] < full_tile.bytes_by_kind["history"]


def test_every_neuron_is_on_exactly_one_tile():
    plan = plan_tiles(model("rlif", [1000, 300]), 700, 20, 16, MK2)
    tiles = [t.tile for t in plan.tiles]
    assert len(set(tiles)) == len(tiles) == plan.used
    for pop in plan.populations:
        owned = sorted((t.neuron_begin, t.neuron_end) for t in plan.tiles if t.population == pop.population.name)
        assert owned[0][0] == 0 and owned[-1][1] == pop.population.neurons
        assert all(a[1] == b[0] for a, b in zip(owned, owned[1:]))


@pytest.mark.parametrize("sizes, batch", [([200_000, 200_000], 48), ([1024], 4096)])
def test_oversize_network_is_refused_with_what_would_fit(sizes, batch):
    plan = plan_tiles(model("rlif", sizes), 700, 20, batch, MK2, steps=100)
    assert not plan.fits
    message = plan.refusal()
    assert "does not fit one ipu-mk2" in message and "KiB" in message
    assert tiles_json(plan)["refusal"] == message
    if batch == 4096:
        assert "batch <=" in message
        smaller = int(message.split("batch <= ")[1].split(";")[0].rstrip("."))
        assert plan_tiles(model("rlif", sizes), 700, 20, smaller, MK2, steps=100).fits
        assert not plan_tiles(model("rlif", sizes), 700, 20, smaller + 1, MK2, steps=100).fits


def test_tight_tiles_walk_the_batch_in_passes():
    # Where the whole batch's spike lists do not fit next to the weights, a population
    # takes fewer samples per pass, the most that fit; the bytes moved stay the same.
    cfg = model("rlif", seed_sizes(2))
    plan = plan_tiles(cfg, 700, 20, 48, MK2, steps=250)
    passes = {p.population.name: p.chunk for p in plan.populations}
    assert passes["readout"] == 48 and 1 <= passes["layer0"] < 48
    pop = plan.population("layer0")
    from ipu_snn.ipu.tiles import tile_bytes, selected_samples

    widest = max(plan.loads_of("layer0"), key=lambda t: t.total_bytes)
    n = widest.neuron_end - widest.neuron_begin
    one_more = tile_bytes(pop.population, n, pop.tiles, plan.sizing, selected_samples(48, pop.tiles, 0), pop.chunk + 1)
    assert sum(one_more.values()) > plan.tile_capacity_bytes >= widest.total_bytes


def test_refusal_suggests_smaller_layers_or_more_ipus():
    plan = plan_tiles(model("lif", [8000, 8000]), 700, 20, 8, MK2, 0.02)
    message = plan.refusal()
    assert "layers of" in message and "IPUs" in message


def test_mk1_has_less_room_than_mk2():
    cfg = model("rlif", seed_sizes(2))
    mk2 = plan_tiles(cfg, 700, 20, 48, MK2, steps=100)
    mk1 = plan_tiles(cfg, 700, 20, 48, MK1, steps=100)
    assert mk1.tile_capacity_bytes * mk1.tiles_total < mk2.tile_capacity_bytes * mk2.tiles_total
    assert mk1.tile_capacity_bytes == 256 * 1024 and mk1.tiles_total == 1216
    # Both fit at T=100, Mk1 only in smaller passes over the batch; twice the history does not fit Mk1.
    assert mk2.fits and mk1.fits
    assert all(a.chunk <= b.chunk for a, b in zip(mk1.populations, mk2.populations))
    assert mk1.population("layer1").chunk < mk2.population("layer1").chunk
    assert plan_tiles(cfg, 700, 20, 48, MK2, steps=200).fits
    assert not plan_tiles(cfg, 700, 20, 48, MK1, steps=200).fits


def test_non_ipu_spec_is_refused():
    with pytest.raises(ValueError, match="IPU spec"):
        plan_tiles(model("lif", [10]), 10, 2, 1, SPECS["h100"])


def test_split_even():
    assert split_even(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert split_even(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]


def random_spikes(batch, n, capacity, density, seed):
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(batch, n, generator=g) < density).float()
    return SparseSpikes.from_dense(z, capacity, overflow="drop_and_count", backend="cpu"), g


@pytest.mark.parametrize("batch, n_in, n_out, tiles, density", [
    (4, 30, 17, 5, 0.2), (8, 64, 40, 40, 0.05), (3, 12, 9, 1, 0.5), (6, 50, 7, 7, 0.0),
])
def test_emulator_equals_dense_reference(batch, n_in, n_out, tiles, density):
    spikes, g = random_spikes(batch, n_in, max(1, n_in // 3), density, seed=n_in)
    weight = torch.randn(n_in, n_out, generator=g)
    grad_out = torch.randn(batch, n_out, generator=g)
    slices = [(t, b, e) for t, (b, e) in enumerate(split_even(n_out, tiles))]
    report = emulate_spike_matmul(spikes, weight, grad_out, slices, 1 << 20)

    z = spikes.to_dense().requires_grad_()
    w = weight.clone().requires_grad_()
    out = z @ w
    out.backward(grad_out)
    torch.testing.assert_close(report.out, out.detach())
    torch.testing.assert_close(report.grad_weight, w.grad)
    listed = spikes.listed_mask_dense()
    torch.testing.assert_close(report.grad_input, torch.where(listed, z.grad, 0.0))
    assert report.tiles_used == tiles


def test_emulator_accounting_agrees_with_plan():
    # Layer 1 (LIF, fed by layer 0) has one matmul per tile, so the emulator holds what the plan counts.
    cfg = model("lif", [300, 200])
    batch, fraction = 8, 0.25
    plan = plan_tiles(cfg, 100, 5, batch, MK2, fraction)
    m = plan.matmul("layer0->layer1")
    spikes, g = random_spikes(batch, 300, m.source.k, 0.1, seed=1)
    weight = torch.randn(300, 200, generator=g)
    report = emulate_plan_matmul(plan, "layer0->layer1", spikes, weight, torch.randn(batch, 200, generator=g))
    assert report.tiles_used == plan.population("layer1").tiles == m.tiles
    planned = max(t.total_bytes for t in plan.tiles if t.population == "layer1")
    assert report.peak_tile_bytes == pytest.approx(planned, rel=0.10)
    emulated_matmul = sum(v for k, v in report.peak_by_kind.items() if k != "reserved")
    layer1 = max((t for t in plan.tiles if t.population == "layer1"), key=lambda t: t.total_bytes)
    planned_matmul = sum(v for k, v in layer1.bytes_by_kind.items() if k not in NOT_EMULATED)
    assert emulated_matmul == pytest.approx(planned_matmul, rel=0.10)
    assert report.exchange_bytes_forward == pytest.approx(m.exchange_bytes_forward, rel=0.10)
    assert report.exchange_bytes_backward == pytest.approx(m.exchange_bytes_backward, rel=0.10)


def test_tile_overflow_is_a_clear_error():
    spikes, g = random_spikes(4, 64, 16, 0.1, seed=3)
    weight = torch.randn(64, 32, generator=g)
    slices = [(0, 0, 16), (1, 16, 32)]
    with pytest.raises(TileOverflowError, match=r"tile 0 overflows its SRAM: holding weights .* of 2048 B"):
        emulate_spike_matmul(spikes, weight, torch.randn(4, 32, generator=g), slices, 2048)
    # Room for the weights but not the backward's buffers.
    with pytest.raises(TileOverflowError, match="overflows its SRAM"):
        emulate_spike_matmul(spikes, weight, torch.randn(4, 32, generator=g), slices, 9000)


def test_plan_cli_reports_tiles_for_an_ipu(tmp_path, capsys):
    import yaml

    from ipu_snn.cli import main

    seed = {"model": {"layers": [{"type": "lif", "size": 736}, {"type": "lif", "size": 736}]},
            "data": {"dataset": "shd", "path": str(tmp_path), "steps": 100, "batch_size": 48}}
    config = tmp_path / "seed.yaml"
    config.write_text(yaml.safe_dump(seed))
    assert main(["plan", str(config), "--device", "ipu-mk2", "--json"]) == 0
    tiles = json.loads(capsys.readouterr().out)["tiles"]
    assert {"used", "max_tile_bytes", "tile_capacity_bytes"} <= set(tiles)
    assert tiles["fits"] and tiles["max_tile_bytes"] <= tiles["tile_capacity_bytes"] == 624 * 1024


# ------------------------------------------------------------------------------ the BPTT schedule on the tiles


@settings(max_examples=25, deadline=None)
@given(steps=st.integers(1, 60), window=st.integers(1, 12), every=st.integers(1, 4),
       name=st.sampled_from(["uniform", "revolve", "double", "double_revolve", "two_level"]))
def test_tiles_hold_the_schedules_peak_of_taped_windows_and_local_checkpoints(steps, window, every, name, schedules):
    # Every tile's history and checkpoints are, at its peak, the largest over the schedule's actions of its
    # local checkpoints and taped windows (bptt.summarize's profile); off-chip checkpoints take no tile bytes.
    from ipu_snn.bptt import summarize
    from ipu_snn.ipu.tiles import TimeOnTiles, checkpoint_bytes, window_bytes

    time = TimeOnTiles.of(steps, window, schedules(name, every))
    cfg = ModelConfig(layers=[{"type": "rlif", "size": 40, "learn_decay": True}, {"type": "lif", "size": 30}])
    plan = plan_tiles(cfg, 20, 3, 4, MK2, time=time, max_tiles=9)
    profile = summarize(time.schedule).profile
    for pop in plan.populations:
        for load, (_, b, e) in zip(plan.loads_of(pop.population.name), pop.slices()):
            ckpt, win = checkpoint_bytes(pop.population, e - b, plan.sizing), window_bytes(pop.population, e - b,
                                                                                        plan.sizing)
            kept = load.bytes_by_kind["history"] + load.bytes_by_kind["checkpoints"]
            assert kept == max(c * ckpt + k * win for c, k in profile)
    assert plan.streaming_bytes == time.schedule.max_offchip_slots * plan.checkpoint_bytes()
    assert plan.time.evaluated_steps >= steps
    assert time.recomputes == (time.evaluated_steps > steps)


def test_store_all_keeps_every_step_and_a_window_less_of_history_with_double():
    from ipu_snn.bptt import double
    from ipu_snn.ipu.tiles import TimeOnTiles, history_bytes_per_step, start_bits

    cfg = model("rlif", [300])
    full = plan_tiles(cfg, 100, 5, 8, MK2, steps=120, max_tiles=40)
    pop = full.population("layer0").population
    tile = full.loads_of("layer0")[0]
    n = tile.neuron_end - tile.neuron_begin
    assert tile.bytes_by_kind["history"] == 120 * history_bytes_per_step(pop, n, full.sizing) + start_bits(pop, n,
                                                                                                           full.sizing)
    assert tile.bytes_by_kind["checkpoints"] == 0 and not full.time.recomputes and full.streaming_bytes == 0
    # 12 windows of 10 under double with an off-chip checkpoint every 3 windows: 3 windows taped at most
    windowed = plan_tiles(cfg, 100, 5, 8, MK2, time=TimeOnTiles.of(120, 10, lambda W: double(W, 3, 0, "uniform")),
                          max_tiles=40)
    kept = windowed.loads_of("layer0")[0].bytes_by_kind
    assert kept["history"] == 3 * (10 * history_bytes_per_step(pop, n, full.sizing) + start_bits(pop, n, full.sizing))
    assert kept["checkpoints"] == 0  # they are in streaming memory
    assert windowed.streaming_bytes == 3 * windowed.checkpoint_bytes() > 0  # states 3, 6, 9 (window 0 starts at 0)
    assert windowed.streaming_transfer_bytes == 6 * windowed.checkpoint_bytes()  # each stored once, loaded once
    assert kept["state"] == 2 * tile.bytes_by_kind["state"]  # the live state and its adjoint, while recomputing


def test_time_model_counts_recomputation_and_streaming():
    from ipu_snn.bptt import double
    from ipu_snn.ipu.tiles import TimeOnTiles

    cfg = model("rlif", [300])
    full = plan_tiles(cfg, 100, 5, 8, MK2, steps=120).predicted_seconds()
    time = TimeOnTiles.of(120, 10, lambda W: double(W, 3, 0, "uniform"))
    plan = plan_tiles(cfg, 100, 5, 8, MK2, time=time)
    windowed = plan.predicted_seconds()
    assert windowed["total_s"] == pytest.approx(sum(v for k, v in windowed.items() if k != "total_s"))
    # the same steps reversed; every segment but the last run forward twice
    assert windowed["backward_s"] == pytest.approx(full["backward_s"])
    assert time.evaluated_steps == 120 + 90
    assert windowed["forward_s"] == pytest.approx(full["forward_s"] * 210 / 120)
    assert windowed["streaming_s"] == pytest.approx(plan.streaming_transfer_bytes / MK2.offchip_bandwidth)
    assert windowed["streaming_s"] > 0
    assert full["streaming_s"] == 0


def test_streaming_memory_too_small_is_refused_naming_it():
    import dataclasses

    from ipu_snn.bptt import double
    from ipu_snn.ipu.tiles import TimeOnTiles

    tiny = dataclasses.replace(MK2, offchip_bytes=1000)
    plan = plan_tiles(model("rlif", [300]), 100, 5, 8, tiny, time=TimeOnTiles.of(120, 10, lambda W: double(W, 1, 0, "uniform")))
    assert plan.max_tile_bytes <= plan.tile_capacity_bytes and not plan.fits
    assert "streaming memory" in plan.refusal() and "bptt.offchip_every" in plan.refusal()


def test_largest_steps_is_where_the_tiles_stop_fitting():
    from ipu_snn.config import load_config
    from ipu_snn.ipu.tiles import TimeOnTiles, fits_on_tiles
    from ipu_snn.bptt.registry import SCHEDULES
    from ipu_snn.ipu.tile_planning import largest_steps
    from ipu_snn.planner import window_choices

    cfg = load_config("configs/ipu_w1_rlif.yaml", [])
    for schedule in ("store_all", "double"):
        kind = SCHEDULES[schedule]()
        factory = None if schedule == "store_all" else kind.build
        steps, window = largest_steps(cfg, MK2, 700, 20, 128, kind, cap=100_000)
        assert 0 < steps < 100_000
        assert fits_on_tiles(cfg.model, 700, 20, 128, MK2, TimeOnTiles.of(steps, window, factory), 0.25)
        assert not any(fits_on_tiles(cfg.model, 700, 20, 128, MK2, TimeOnTiles.of(steps + 1, w, factory), 0.25)
                       for w in window_choices(steps + 1, None))
        assert plan_tiles(cfg.model, 700, 20, 128, MK2, time=TimeOnTiles.of(steps, window, factory)).fits


def test_w1_fits_one_mk2_under_double_with_a_predicted_time(capsys):
    # The acceptance: W1 (T = 1000, batch 128) does not fit one Mk2 storing every step, and does under
    # double, with a predicted time per iteration; double fits sequences over 10x longer than store_all's.
    from ipu_snn.cli import main

    assert main(["plan", "configs/shd_rlif.yaml", "--device", "ipu-mk2", "bptt.schedule=double", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tiles = out["tiles"]
    # the network op's graph counts every byte (ipu_snn/ipu/graph_plan.py)
    assert tiles["source"] == "graph"
    assert tiles["fits"] and tiles["max_tile_bytes"] <= tiles["tile_capacity_bytes"] == 624 * 1024
    assert tiles["time_loop"]["T"] == 1000 and tiles["time_loop"]["schedule"].startswith("double")
    assert tiles["streaming_memory"]["bytes"] > 0 and tiles["streaming_memory"]["transfer_bytes"] > 0
    assert all(v > 0 for v in tiles["time"].values())  # streaming too: double's checkpoints go off-chip
    largest = tiles["largest_T"]["schedules"]
    assert 0 < largest["store_all"]["T"] < 1000 <= largest["double"]["T"]
    assert largest["double"]["T"] > 10 * largest["store_all"]["T"]
    assert main(["plan", "configs/shd_rlif.yaml", "--device", "ipu-mk2", "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)["tiles"]
    assert not stored["fits"] and "bptt.schedule=" in stored["refusal"]
