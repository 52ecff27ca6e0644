"""Smaller README promises: the revolve example saves memory, validate shows a from_nir config's layers,
and from_nir is found next to the config file."""

import json
import re
from pathlib import Path

import numpy as np
import yaml

from ipu_snn.cli import main
from ipu_snn.config import load_config, validate_config
from ipu_snn.interop.nir import export_graph, write_graph
from ipu_snn.network import build_network

ROOT = Path(__file__).resolve().parents[2]


def test_the_readmes_revolve_example_keeps_fewer_bytes_than_the_default(capsys):
    line = next(x for x in (ROOT / "README.md").read_text().splitlines() if "bptt.schedule=revolve" in x)
    overrides = [w for w in line.split("#")[0].split() if re.fullmatch(r"[a-z_.0-9]+=\S+", w)]
    assert "configs/tiny.yaml" in line and "bptt.schedule=revolve" in overrides

    def kept(*extra):
        assert main(["plan", str(ROOT / "configs/tiny.yaml"), *extra, "--json", "--no-measure"]) == 0
        result = json.loads(capsys.readouterr().out)
        return {s["name"]: s["local_bytes"] for s in result["strategies"]}, result["choice"]

    default, choice = kept()
    revolve, chosen = kept(*overrides)
    assert choice == "store_all" and chosen == "revolve"
    assert revolve["revolve"] * 4 < default["store_all"], (revolve, default)  # the README says 6x


def _graph(tmp_path):
    layers = [{"type": "lif", "size": 6, "beta": 0.8, "reset": "zero"}]
    data = {"steps": 10, "channel_pooling": 20, "synthetic": {"n_train": 8, "n_test": 4, "n_classes": 4}}
    cfg = validate_config({"model": {"layers": layers}, "data": data})
    net = build_network(cfg.model, 35, 4, cfg.data.step_seconds)
    (tmp_path / "graphs").mkdir()
    write_graph(export_graph(cfg, net.state_dict()), tmp_path / "graphs" / "g.nir")
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"from_nir": "../graphs/g.nir"}, "data": data}))
    return config


def test_from_nir_is_found_next_to_the_config_and_validate_shows_its_layers(tmp_path, capsys, monkeypatch):
    config = _graph(tmp_path)
    monkeypatch.chdir(tmp_path / "graphs")  # nowhere near ../graphs/g.nir from here
    assert Path(load_config(config).model.from_nir).resolve() == (tmp_path / "graphs" / "g.nir").resolve()
    assert main(["validate", str(config)]) == 0
    out = capsys.readouterr().out
    assert "read from" in out and "g.nir" in out
    shown = yaml.safe_load(out)
    assert [layer["size"] for layer in shown["model"]["layers"]] == [6] and shown["model"]["from_nir"] is None
    np.testing.assert_allclose(shown["model"]["layers"][0]["beta"], 0.8, rtol=1e-6)
    # an override names its file from the working folder
    assert load_config(config, ["model.from_nir=g.nir"]).model.from_nir == "g.nir"
