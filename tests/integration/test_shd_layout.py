"""``data.dataset: shd`` on files of another layout: refused naming the counts, pointing at ``events``."""

import numpy as np
import pytest
import yaml

from ipu_snn.cli import main
from ipu_snn.config import DataConfig
from ipu_snn.data import SpikeRecordings, load_splits, write_recordings
from ipu_snn.errors import DataError


def recordings(n, channels, classes, seed=0, keys=True):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(20, 60, n)
    return SpikeRecordings([np.sort(rng.uniform(0, 1.0, s)).astype(np.float32) for s in sizes],
                           [rng.integers(0, channels, s) for s in sizes], rng.integers(0, classes, n), channels,
                           classes, [f"c{k}" for k in range(classes)] if keys else [])


@pytest.mark.parametrize("keys", [True, False])
def test_shd_refuses_a_64_channel_10_class_file_naming_the_counts(tmp_path, keys):
    write_recordings(tmp_path / "shd_train.h5", recordings(30, 64, 10, keys=keys))
    write_recordings(tmp_path / "shd_test.h5", recordings(10, 64, 10, seed=1, keys=keys))
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(dataset="shd", path=str(tmp_path), steps=10), seed=0)
    message = str(err.value)
    assert "700 channels and 20 classes" in message and "units up to 63 (64 channels)" in message
    assert ("10 classes (extra/keys)" if keys else "labels up to 9") in message
    assert "data.dataset: events" in message


def test_shd_refuses_stored_class_names_of_another_count(tmp_path):
    write_recordings(tmp_path / "shd_train.h5", recordings(30, 700, 10))
    write_recordings(tmp_path / "shd_test.h5", recordings(10, 700, 10, seed=1))
    with pytest.raises(DataError, match=r"\(700 channels\) and 10 classes \(extra/keys\)"):
        load_splits(DataConfig(dataset="shd", path=str(tmp_path), steps=10), seed=0)


def test_shd_layout_files_and_the_cli_exit_code(tmp_path, capsys):
    write_recordings(tmp_path / "shd_train.h5", recordings(30, 700, 20))
    write_recordings(tmp_path / "shd_test.h5", recordings(10, 700, 20, seed=1))
    splits = load_splits(DataConfig(dataset="shd", path=str(tmp_path), steps=10), seed=0)
    assert (splits.n_inputs, splits.n_classes) == (700, 20)
    other = tmp_path / "other"
    other.mkdir()
    write_recordings(other / "shd_train.h5", recordings(30, 64, 10))
    write_recordings(other / "shd_test.h5", recordings(10, 64, 10, seed=1))
    raw = {"model": {"layers": [{"type": "lif", "size": 8}]}, "data": {"dataset": "shd", "path": str(other),
                                                                       "steps": 10}, "training": {"epochs": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "(64 channels) and 10 classes" in err and "Traceback" not in err
