"""The README's "extend a run": training.epochs raised with --resume on a cosine run trains at a non-zero lr."""

import yaml

from ipu_snn.cli import main
from ipu_snn.reporting import read_metrics_csv

RAW = {"model": {"layers": [{"type": "lif", "size": 16}]},
       "data": {"steps": 10, "max_time": 0.4, "channel_pooling": 20, "batch_size": 16, "val_split": 0.25,
                "synthetic": {"n_train": 32, "n_test": 8, "n_classes": 4}},
       "training": {"epochs": 2, "lr": 0.01, "lr_schedule": "cosine"}}


def test_more_epochs_on_resume_restart_the_cosine(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(RAW))
    run = str(tmp_path / "run")
    assert main(["train", str(tmp_path / "c.yaml"), "--out", run]) == 0
    assert main(["train", str(tmp_path / "c.yaml"), "training.epochs=3", "--resume", "--out", run]) == 0
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[1]["lr"] < rows[0]["lr"] == 0.01 and rows[2]["lr"] == 0.01
