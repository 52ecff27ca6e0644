"""A run reports, per layer, the fraction of neuron-steps the listed backward visited (metrics.csv, summary.json)."""

import json

from rich.console import Console

from ipu_snn.config import validate_config
from ipu_snn.reporting import read_metrics_csv
from ipu_snn.training import train


def config(surrogate: str, sparse) -> dict:
    return validate_config({
        "model": {"layers": [{"type": "rlif", "size": 24, "tau": 0.1, "surrogate": {"name": surrogate, "scale": 5.0}},
                             {"type": "lif", "size": 16, "tau": 0.1, "surrogate": {"name": surrogate, "scale": 5.0}}],
                  "readout": {"reduce": "mean"}, "sparse": sparse, "sparse_capacity": 1.0},
        "data": {"steps": 20, "channel_pooling": 20, "batch_size": 32, "val_split": 0.2,
                 "synthetic": {"n_train": 96, "n_test": 32, "n_classes": 4}},
        "training": {"epochs": 2, "lr": 0.01, "seed": 1},
    })


def test_listed_runs_report_what_their_backward_visited(tmp_path):
    summary = train(config("triangle", True), tmp_path / "listed", console=Console(quiet=True))
    rows = read_metrics_csv(tmp_path / "listed" / "metrics.csv")
    for i in (0, 1):
        visited = [row[f"backward_visited_layer{i}"] for row in rows]
        assert all(0.0 < v < 1.0 for v in visited), visited  # spikes and near-threshold neurons: some, not all
        assert summary[f"backward_visited_layer{i}"] == visited[-1]
    assert json.loads((tmp_path / "listed" / "summary.json").read_text())["backward_visited_layer1"] == visited[-1]


def test_dense_adjoint_runs_report_no_backward_sparsity(tmp_path):
    # fast_sigmoid is never zero: auto keeps the dense adjoint, and there is nothing listed to report
    summary = train(config("fast_sigmoid", True), tmp_path / "dense", console=Console(quiet=True))
    assert not any(k.startswith("backward_visited") for k in summary)
    assert not any(k.startswith("backward_visited") for k in read_metrics_csv(tmp_path / "dense" / "metrics.csv")[0])
