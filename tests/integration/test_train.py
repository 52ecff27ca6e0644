"""The training loop end to end: outputs, resume equivalence, the NaN guard, the tiny run."""

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ipu_snn.cli import main
from ipu_snn.config import load_config, validate_config
from ipu_snn.errors import TrainingError
from ipu_snn.run_folder import newest_intact_checkpoint
from ipu_snn.loop import epoch_line
from ipu_snn.training import train

DETERMINISTIC = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "rate_layer0"]


class Crash(Exception):
    pass


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, small, quiet):
    full = train(small(), tmp_path / "full", console=quiet())

    def crash_after_first(epoch, row, model):
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        train(small(), tmp_path / "resumed", console=quiet(), on_epoch_end=crash_after_first)
    assert newest_intact_checkpoint(tmp_path / "resumed").folder.name == "epoch-0001"
    resumed = train(small(), tmp_path / "resumed", resume=True, console=quiet())

    for key in ["val_accuracy", "train_loss", "test_accuracy", "test_loss", "epochs"]:
        assert resumed[key] == full[key], key
    rows_full = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    rows_resumed = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert len(rows_resumed) == len(rows_full) == 4
    full_w = load_file(tmp_path / "full/checkpoints/epoch-0003/model.safetensors")
    resumed_w = load_file(tmp_path / "resumed/checkpoints/epoch-0003/model.safetensors")
    assert all(torch.equal(full_w[k], resumed_w[k]) for k in full_w)


@pytest.mark.plots  # curves.png drawn
def test_outputs_and_checkpoint_rotation(tmp_path, small, quiet):
    summary = train(small(keep_checkpoints=2), tmp_path, console=quiet())
    assert {"val_accuracy", "train_loss", "samples_per_s", "wall_s", "epochs"} <= set(summary)
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 3
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*")) == ["epoch-0002", "epoch-0003"]
    assert load_config(tmp_path / "config.yaml").training.epochs == 3


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, small, quiet):
    def poison_weights(epoch, row, model):
        if epoch == 1:  # after epoch 1's checkpoint: the next forward pass yields NaN
            with torch.no_grad():
                model.readout.fc.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match="loss became nan at epoch 2, batch 1"):
        train(small(), tmp_path, console=quiet(), on_epoch_end=poison_weights)
    kept = newest_intact_checkpoint(tmp_path)
    assert kept.folder.name == "epoch-0001"
    weights = kept.weights
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1
    resumed = train(small(), tmp_path, resume=True, console=quiet())  # the kept checkpoint still works
    assert resumed["epochs"] == 3


def test_refuses_to_overwrite_and_to_resume_nothing(tmp_path, capsys, small, small_run, quiet):
    train(small(epochs=1), tmp_path / "run", console=quiet())
    with pytest.raises(TrainingError, match="already holds a run"):
        train(small(epochs=1), tmp_path / "run", console=quiet())
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(small(epochs=1), tmp_path / "empty", resume=True, console=quiet())
    other = validate_config({**small_run, "model": {"layers": [{"type": "rlif", "size": 8}]}})
    with pytest.raises(TrainingError, match="differs in model"):
        train(other, tmp_path / "run", resume=True, console=quiet())
    # extending a finished run is allowed
    extended = train(small(epochs=2), tmp_path / "run", resume=True, console=quiet())
    assert extended["epochs"] == 2


def test_eval_command(tmp_path, capsys, small, quiet):
    summary = train(small(epochs=1), tmp_path, console=quiet())
    assert main(["eval", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {summary['test_accuracy']:.2%}" in out


@pytest.mark.slow
def test_tiny_config_reaches_90_percent(tmp_path):
    """The README's main job: configs/tiny.yaml through the CLI, as a user runs it."""
    assert main(["train", "configs/tiny.yaml", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["val_accuracy"] >= 0.90
    assert math.isfinite(summary["samples_per_s"]) and summary["epochs"] == 20
    for name in ["metrics.csv", "curves.png", "config.yaml", "checkpoints/LATEST"]:
        assert (tmp_path / name).is_file()


def test_no_validation_split_trains_evaluates_and_resumes(tmp_path, capsys, small_run, check_no_validation_split):
    check_no_validation_split(small_run, tmp_path, capsys)


def test_epoch_lines_are_whole_in_logs(tmp_path, capsys, small_run):
    # capsys is no terminal, as a log file or a CI console is not
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small_run))
    assert main(["train", str(path), "training.epochs=2", "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("samples/s" in line and " lr " in line for line in epochs), lines
    assert max(map(len, lines)) > 80  # the lines rich would have broken at 80 columns


@pytest.mark.parametrize("rate,text", [(0.456, "0.456"), (12.34, "12.3"), (99.94, "99.9"), (1234.4, "1234")])
def test_rates_keep_three_significant_digits(rate, text):
    row = {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "samples_per_s": rate, "lr": 1e-3}
    assert f" {text} samples/s " in epoch_line(row, 3)


def test_plan_table_names_every_schedule_in_full(capsys):
    args = ["plan", "configs/shd_rlif.yaml", "--device", "h100", "--budget-gib", "4"]
    assert main(args + ["--json"]) == 0
    names = [s["name"] for s in json.loads(capsys.readouterr().out)["strategies"]]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert names and all(name in table for name in names), table
    assert "…" not in table


def test_cli_shows_user_errors_plainly_and_bugs_with_their_traceback(tmp_path, capsys, monkeypatch, small_run):
    path = tmp_path / "c.yaml"
    missing = {"dataset": "shd", "path": str(tmp_path / "no")}
    path.write_text(yaml.safe_dump({**small_run, "data": {**small_run["data"], **missing}}))
    # the user's to fix: one message naming the field, exit status 2
    assert main(["train", str(path), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "error: data.path: folder not found" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()

    def broken_contract(*args, **kwargs):
        raise AssertionError("a broken internal contract")

    # a bug: its traceback, and exit status 1
    monkeypatch.setattr("ipu_snn.loop.train_epoch", broken_contract)
    path.write_text(yaml.safe_dump(small_run))
    assert main(["train", str(path), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "AssertionError: a broken internal contract" in err
    assert "bug in ipu_snn" in err
