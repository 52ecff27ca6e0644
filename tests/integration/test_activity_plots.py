"""spikes.png and rates.png: written at the end of training and by ``eval --plots``, from the last checkpoint."""

import pytest
import torch
from rich.console import Console

from ipu_snn.cli import main
from ipu_snn.config import validate_config
from ipu_snn.data import load_splits
from ipu_snn.network import build_network
from ipu_snn.reporting import record_activity
from ipu_snn.run_folder import newest_intact_checkpoint
from ipu_snn.training import train

PNG = b"\x89PNG\r\n\x1a\n"
RAW = {"model": {"layers": [{"type": "rlif", "size": 24}, {"type": "lif", "size": 12}]},
       "data": {"steps": 20, "max_time": 0.4, "channel_pooling": 20, "batch_size": 16, "val_split": 0.25,
                "synthetic": {"n_train": 32, "n_test": 20, "n_classes": 4}},
       "training": {"epochs": 1}}


@pytest.mark.plots
def test_training_and_eval_plots_write_the_networks_spikes(tmp_path, capsys):
    cfg = validate_config(RAW)
    run = tmp_path / "run"
    train(cfg, run, console=Console(quiet=True))
    for name in ("spikes.png", "rates.png"):
        assert (run / name).read_bytes()[:8] == PNG and (run / name).stat().st_size > 5000
        (run / name).unlink()
    assert main(["eval", str(run), "--plots"]) == 0
    out = capsys.readouterr().out
    for name in ("spikes.png", "rates.png"):
        assert (run / name).read_bytes()[:8] == PNG and f"wrote {run / name}" in " ".join(out.split())

    # what they show: the network's spikes
    splits = load_splits(cfg.data, cfg.training.seed)
    net = build_network(cfg.model, splits.n_inputs, splits.n_classes, splits.dt)
    net.load_state_dict(newest_intact_checkpoint(tmp_path / "run").weights)
    rasters, labels, rates = record_activity(net, splits.test, samples=2, rate_samples=20, batch=8)
    x = torch.stack([splits.test.as_dense()[i][0] for i in range(20)]).float()
    counts = net(x, with_counts=True).counts  # per layer [2, n]: each neuron's spikes over the batch and steps
    for rate, count in zip(rates, counts):
        torch.testing.assert_close(torch.from_numpy(rate), count[0].double() / (20 * cfg.data.steps))
    assert [r.shape for r in rasters] == [(2, 20, 24), (2, 20, 12)]
    assert rasters[0].sum() == sum(net(x[:2], with_counts=True).counts[0][0]).item() > 0
    assert labels == [splits.test[i][1] for i in range(2)]
