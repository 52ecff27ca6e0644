"""training.loss, rate_regularization, keep_best and early_stopping through the training loop and eval."""

import json

import pytest
from rich.console import Console

from ipu_snn.cli import main
from ipu_snn.config import validate_config
from ipu_snn.errors import ConfigError
from ipu_snn.reporting import read_metrics_csv
from ipu_snn.selection import best_epoch, should_stop
from ipu_snn.training import train

SMALL = {
    "model": {"layers": [{"type": "rlif", "size": 24, "tau": 0.1}], "readout": {"reduce": "mean"}},
    "data": {"steps": 20, "channel_pooling": 20, "batch_size": 32, "val_split": 0.2,
             "synthetic": {"n_train": 160, "n_test": 40, "n_classes": 4}},
    "training": {"epochs": 3, "lr": 0.01, "seed": 1},
}


def small(**training):
    return validate_config({**SMALL, "training": {**SMALL["training"], **training}})


def test_spike_count_loss_with_rate_bounds_trains_and_evaluates_with_its_loss(tmp_path, capsys):
    cfg = small(loss="count_ce", rate_regularization=[{"layer": 0, "lower": 0.01, "upper": 0.2}], keep_best=True)
    summary = train(cfg, tmp_path, console=Console(quiet=True))
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # the best epoch's checkpoint is kept apart, and eval reads it with the run's own loss
    best = int(best_epoch(rows, "val_loss"))
    assert [p.name for p in (tmp_path / "best" / "checkpoints").glob("epoch-*")] == [f"epoch-{best:04d}"]
    assert main(["eval", str(tmp_path), "--split", "val", "--checkpoint", "best"]) in (0, None)
    out = capsys.readouterr().out
    assert f"val: loss {rows[best - 1]['val_loss']:.4f}" in out
    assert summary["epochs"] == 3


def test_early_stopping_ends_the_run_when_the_metric_stalls(tmp_path):
    # lr 0 leaves the weights as they are: no epoch improves on the first
    summary = train(small(epochs=10, lr=1e-12, early_stopping={"patience": 2, "metric": "val_accuracy",
                                                               "min_delta": 0.5}),
                    tmp_path, console=Console(quiet=True))
    assert summary["epochs"] == 3
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 3


def test_selection_is_a_function_of_the_history():
    rows = [{"epoch": 1, "val_loss": 1.0}, {"epoch": 2, "val_loss": 0.5}, {"epoch": 3, "val_loss": 0.6},
            {"epoch": 4, "val_loss": 0.49}]
    assert best_epoch(rows, "val_loss") == 4
    assert best_epoch(rows, "val_loss", min_delta=0.05) == 2
    es = small(early_stopping={"patience": 2, "min_delta": 0.05}).training
    assert should_stop(rows, es) and not should_stop(rows[:3], es)


def test_bad_training_options_are_named(tmp_path):
    with pytest.raises(ConfigError, match="rate_regularization.0.layer"):
        small(rate_regularization=[{"layer": 3, "upper": 0.1}])
    with pytest.raises(ConfigError, match="multiple of 4"):
        _train_with_size(tmp_path / "a", 10)
    assert not (tmp_path / "a").exists()
    raw = {**SMALL, "data": {**SMALL["data"], "val_split": 0.0}, "training": {**SMALL["training"], "keep_best": True}}
    with pytest.raises(ConfigError, match="no validation split"):
        train(validate_config(raw), tmp_path / "b", console=Console(quiet=True))
    assert not (tmp_path / "b").exists()


def _train_with_size(out, size):
    raw = {**SMALL, "model": {**SMALL["model"], "layers": [{"type": "rlif", "size": size}]},
           "training": {**SMALL["training"], "loss": "first_spike_ce"}}
    train(validate_config(raw), out, console=Console(quiet=True))


@pytest.mark.parametrize("device", ["ipu", "ipu-model", "ipu-emulator"])
def test_devices_without_the_torch_network_refuse_spike_losses_and_dropout(device):
    with pytest.raises(ConfigError, match=f"not yet on {device}"):
        validate_config({**SMALL, "device": device, "training": {"loss": "count_ce"}})
    layers = [{"type": "rlif", "size": 24, "dropout": 0.2}]
    with pytest.raises(ConfigError, match="dropout runs on cpu and cuda"):
        validate_config({**SMALL, "device": device, "model": {"layers": layers}})
