"""The IPU plan counted from the network op's graph (ipu_snn.ipu.graph_plan): its per-tile bytes are
the interpreter's record, its time terms come from the graph's programs, and `ipu-snn plan --json`
reports them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ipu_snn.bptt.schedules import double, revolve, store_all, uniform
from ipu_snn.config import load_config
from ipu_snn.executor import window_bounds
from ipu_snn.ipu.graph_plan import (Builds, Candidate, GraphModel, graph_plan, layer_specs, tile_account,
                                    time_terms)
from ipu_snn.ipu.interpreter import HostNetwork, step_actions, tape_slots

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "ipu_emulator_tiny.yaml"


@pytest.mark.parametrize("sizes, name", [(("7", "5"), "store_all"), (("9", "4"), "uniform"), (("6", "6"), "double")])
def test_the_plans_tile_bytes_are_the_interpreters_record(sizes, name):
    cfg = load_config(CONFIG, [f"model.layers.0.size={sizes[0]}", f"model.layers.1.size={sizes[1]}"]).model
    steps, window, batch, n_in = 12, 3, 4, 11
    windows = len(window_bounds(steps, window))
    schedule = {"store_all": store_all, "uniform": lambda w: uniform(w, 2), "double": lambda w: double(w, 2, 1)}[name](windows)
    planned = graph_plan(cfg, n_in, 3, batch, steps, window, schedule)
    run = HostNetwork(batch, steps, n_in, layer_specs(cfg), schedule, window_bounds(steps, window), 3)
    recorded = run.tile_bytes()
    # the op's bytes are the interpreter's record (within 5%: here the same graph, so exact); the plan adds
    # the optimizer's two Adam buffers per parameter, the exchange's landing buffers, vertex state and code
    assert planned["op_max_tile_bytes"] == int(recorded.max())
    fullest = planned["fullest_tile"]
    kinds = fullest["bytes_by_kind"]
    assert kinds["op"] == int(recorded[fullest["tile"]]) and sum(kinds.values()) == planned["max_tile_bytes"]
    assert kinds["optimizer"] > 0 and kinds["exchange"] > 0 and kinds["code"] == 24 * 1024
    # a tile per neuron (the readout's 3 too), and the trace over batch x 3 tiles
    assert planned["tiles_used"] == int((recorded > 0).sum()) == max(int(sizes[0]) + int(sizes[1]) + 3, batch * 3)
    assert planned["source"] == "graph" and planned["fits"]
    time = planned["time"]
    for term in ("compute_s", "exchange_s", "sync_s", "host_io_s"):
        assert time[term] > 0, term
    assert (time["streaming_s"] > 0) == (name == "double")
    assert time["total_s"] == pytest.approx(sum(v for k, v in time.items() if k != "total_s"))


SCHEDULES = {"store_all": store_all, "uniform": lambda w: uniform(w, 2), "double": lambda w: double(w, 2, 1),
             "revolve": lambda w: revolve(w, 2)}


# the network op's other layers (ipumodels): ALIF and cuba with their second state, learned decays (v(t-1)
# taped) and thresholds, bounded surrogates (the listed backward's live bits)
OTHER_LAYERS = [["model.layers.0.type=alif", "model.layers.0.recurrent=true", "model.layers.1.type=cuba"],
                [f"model.layers.{i}.{f}=true" for i in (0, 1) for f in ("learn_decay", "learn_threshold")]
                + ["model.layers.0.surrogate.name=triangle"]]


@pytest.mark.parametrize("extra", [[]] + OTHER_LAYERS)
def test_the_graph_model_is_the_graphs_count(extra):
    # GraphModel solves each tile's bytes, affine in the tape and local slots and T, from four counting graphs;
    # at other slots, T, windows and samples per pass it gives exactly the bytes and the cost walk's terms of
    # the graph built there
    cfg = load_config(CONFIG, ["model.layers.0.size=9", "model.layers.1.size=4", *extra]).model
    batch, n_in = 4, 11
    model = GraphModel(cfg, n_in, 3, batch)
    for name, steps, window, passes in [("store_all", 7, 7, 4), ("uniform", 12, 3, 2), ("double", 12, 3, 1),
                                        ("revolve", 10, 2, 3)]:
        bounds = window_bounds(steps, window)
        c = Candidate.of(steps, window, SCHEDULES[name](len(bounds)))
        actions = step_actions(c.schedule, bounds)
        assert (c.tape, c.builds) == (tape_slots(actions), Builds.of_actions(actions)), name
        host = HostNetwork.from_actions(batch, steps, n_in, model.layers, 3, passes, actions, c.tape, c.local,
                                        c.offchip, holds_data=False)
        real, modelled = tile_account(host, 2), model.account(c.tape, c.local, steps, passes, c.builds)
        for kind in real:
            np.testing.assert_array_equal(modelled[kind], real[kind], err_msg=f"{name} {kind}")
        assert model.streaming_bytes(c) == host.counts()["remote_bytes"]
        whole = HostNetwork.from_actions(batch, steps, n_in, model.layers, 3, batch, actions, c.tape, c.local,
                                         c.offchip, holds_data=False)
        walked = {k: whole.cost(False)[k] + whole.cost(True)[k] for k in whole.cost(False)}
        assert model.program_terms(c) == pytest.approx(walked, rel=1e-12), name
        assert model.time(c) == pytest.approx(time_terms(walked, batch, steps, n_in), rel=1e-12)
    # the whole batch's base and the three slopes' graphs; a base per other samples per pass (2, 1, 3); one per
    # other builds' key (uniform's, and double's and revolve's), whose taped recomputation uniform's gave
    assert model.counted == 4 + 3 + 2


def test_a_longer_sequence_costs_proportionally_more_time():
    cfg = load_config(CONFIG).model
    short = graph_plan(cfg, 11, 3, 4, 8, 8, store_all(1))["time"]
    long = graph_plan(cfg, 11, 3, 4, 16, 16, store_all(1))["time"]
    # twice the steps, twice the step programs' work (the zeroing at the start of each program aside)
    assert 1.8 < long["compute_s"] / short["compute_s"] <= 2.0


@pytest.mark.slow
def test_plan_json_reports_the_graph(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "ipu_snn.cli", "plan", str(CONFIG), "--device", "ipu-mk2",
                             "bptt.schedule=double", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    tiles = json.loads(result.stdout)["tiles"]
    assert tiles["source"] == "graph"
    assert set(tiles["time"]) == {"compute_s", "exchange_s", "sync_s", "host_io_s", "streaming_s", "total_s"}
    assert tiles["fits"] and tiles["max_tile_bytes"] <= tiles["tile_capacity_bytes"]
    # a tile per neuron (32 + 32 and the readout's 4 classes); the trace (batch 32 x 4) over 128 tiles
    assert tiles["used"] == max(32 + 32 + 4, 32 * 4)
    assert tiles["graph"]["vertices"] > 0 and tiles["graph"]["optimizer_slots"] == 2
    # the planner's model of the graph agrees with the count of the chosen graph, tile by tile; largest_T is
    # the model's too
    assert tiles["model_check"]["tiles_equal"] and tiles["largest_T"]["source"] == "graph"
    assert tiles["largest_T"]["schedules"]["store_all"]["T"] >= tiles["time_loop"]["T"]
