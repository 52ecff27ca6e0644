"""HDF5 round trip, binning, the synthetic generator, and every corrupt-file error."""

import os

import h5py
import numpy as np
import pytest
import torch

from ipu_snn.config import DataConfig, SyntheticConfig
from ipu_snn.data import (SpikeRecordings, bin_events, ensure_synthetic, generate, load_splits, read_recordings,
                          write_recordings)
from ipu_snn.errors import DataError
from ipu_snn.core.bits import pack_spikes


def small_recordings(n=6, channels=700, classes=20, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 50, n)
    times = [np.sort(rng.uniform(0, 1.2, s)).astype(np.float32) for s in sizes]
    units = [rng.integers(0, channels, s) for s in sizes]
    return SpikeRecordings(times, units, rng.integers(0, classes, n), channels, classes,
                           [f"class-{k}" for k in range(classes)])


def test_round_trip(tmp_path):
    rec = small_recordings()
    write_recordings(tmp_path / "shd_train.h5", rec)
    back = read_recordings(tmp_path / "shd_train.h5", 700, 20)
    assert back.keys == rec.keys and back.labels.tolist() == rec.labels.tolist()
    for a, b, ua, ub in zip(rec.times, back.times, rec.units, back.units):
        np.testing.assert_allclose(a, b)
        assert ua.tolist() == ub.tolist()


def test_binning_counts_crops_and_pools():
    times = np.array([0.0, 0.004, 0.011, 0.011, 0.5])  # the last is past T*dt and cropped
    units = np.array([0, 3, 4, 5, 1])
    frame = bin_events(times, units, steps=3, dt=0.005, n_channels=6, pooling=2, binary=False)
    expected = np.zeros((3, 3), np.float32)
    expected[0, 0] = 1  # t=0 unit 0
    expected[0, 1] = 1  # t=0.004 unit 3 -> channel 1
    expected[2, 2] = 2  # two events at t=0.011 in units 4, 5 -> channel 2
    np.testing.assert_array_equal(frame, expected)
    assert bin_events(times, units, steps=3, dt=0.005, n_channels=6, pooling=2).max() == 1.0


def _write_raw(path, times, units, labels, skip=()):
    with h5py.File(path, "w") as f:
        if "times" not in skip:
            d = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.float32))
            for i, t in enumerate(times):
                d[i] = np.asarray(t, np.float32)
        if "units" not in skip:
            d = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
            for i, u in enumerate(units):
                d[i] = np.asarray(u, np.uint16)
        f.create_dataset("labels", data=np.asarray(labels))


CORRUPT = {
    "missing dataset": (dict(times=[[0.1]], units=[[1]], labels=[0], skip=("units",)), "missing dataset(s) spikes/units"),
    "ragged mismatch": (dict(times=[[0.1], [0.1, 0.2]], units=[[1], [2]], labels=[0, 1]),
                        "sample 1 has 2 spike times but 1 units"),
    "label out of range": (dict(times=[[0.1], [0.2]], units=[[1], [2]], labels=[0, 20]),
                           "1 label(s) outside [0, 20), first at sample 1 (label 20)"),
    "unit out of range": (dict(times=[[0.1, 0.2]], units=[[1, 700]], labels=[0]), "unit 700 outside [0, 700)"),
    "count mismatch": (dict(times=[[0.1], [0.2]], units=[[1], [2]], labels=[0]), "2 spike-time lists, 2 unit lists and 1 labels"),
    "negative time": (dict(times=[[-0.1]], units=[[1]], labels=[0]), "negative or non-finite spike times"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_file_errors(tmp_path, case):
    kwargs, message = CORRUPT[case]
    _write_raw(tmp_path / "bad.h5", **kwargs)
    with pytest.raises(DataError) as info:
        read_recordings(tmp_path / "bad.h5", 700, 20)
    assert message in str(info.value) and "bad.h5" in str(info.value)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_recordings(tmp_path / "shd_train.h5", 700, 20)
    (tmp_path / "shd_train.h5.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match="decompress it first"):
        read_recordings(tmp_path / "shd_train.h5", 700, 20)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        read_recordings(tmp_path / "text.h5", 700, 20)
    with pytest.raises(DataError, match="data.path: folder not found"):
        load_splits(DataConfig(dataset="shd", path=str(tmp_path / "nowhere")), seed=0)


def test_shd_folder_splits(tmp_path):
    write_recordings(tmp_path / "shd_train.h5", small_recordings(n=40))
    write_recordings(tmp_path / "shd_test.h5", small_recordings(n=10, seed=1))
    splits = load_splits(DataConfig(dataset="shd", path=str(tmp_path), steps=100, max_time=1.0,
                                    channel_pooling=7, val_split=0.25), seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    assert set(splits.train.indices).isdisjoint(splits.val.indices)
    x, y = splits.train[0]
    # binary inputs come packed: 100 channels in 13 bytes per step, the frames of bin_events bit for bit
    assert x.shape == (100, 13) and x.dtype == torch.uint8
    assert splits.n_inputs == 100 and splits.n_classes == 20 and 0 <= y < 20
    dense, _ = splits.train.as_dense()[0]
    assert dense.shape == (100, 100) and torch.equal(pack_spikes(dense), x)


def test_ssc_uses_its_valid_file(tmp_path):
    for split, n in [("train", 12), ("valid", 5), ("test", 4)]:
        write_recordings(tmp_path / f"ssc_{split}.h5", small_recordings(n=n, classes=35))
    splits = load_splits(DataConfig(dataset="ssc", path=str(tmp_path), steps=10), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test), splits.n_classes) == (12, 5, 4, 35)


def test_synthetic_is_deterministic_cached_and_balanced(tmp_path):
    cfg = SyntheticConfig(n_train=60, n_test=20, n_classes=4, seed=5)
    a_train, _ = generate(cfg)
    b_train, _ = generate(cfg)
    assert all(np.array_equal(x, y) for x, y in zip(a_train.times, b_train.times))
    assert np.bincount(a_train.labels).tolist() == [15] * 4
    folder = ensure_synthetic(cfg, tmp_path)
    stamp = (folder / "synthetic_train.h5").stat().st_mtime_ns
    assert ensure_synthetic(cfg, tmp_path) == folder  # second call reuses the files
    assert (folder / "synthetic_train.h5").stat().st_mtime_ns == stamp
    assert ensure_synthetic(cfg.model_copy(update={"seed": 6}), tmp_path) != folder
    back = read_recordings(folder / "synthetic_train.h5", cfg.n_channels, cfg.n_classes)
    assert back.labels.tolist() == a_train.labels.tolist()


def test_synthetic_pairs_share_channel_histograms():
    # the two classes of a pair use the same sweeps in another order: equal channel counts, other timing
    cfg = SyntheticConfig(n_train=400, n_test=2, n_classes=4, noise_rate=0.0, dropout=0.0, jitter=0.0)
    train, _ = generate(cfg)

    def mean_hist(label, axis):
        picks = [i for i in range(len(train)) if train.labels[i] == label]
        if axis == "units":
            return np.mean([np.bincount(train.units[i] // 50, minlength=14) for i in picks], axis=0)
        return np.mean([np.bincount((train.times[i] * 10).astype(int), minlength=10)[:10] for i in picks], axis=0)

    units_gap = np.abs(mean_hist(0, "units") - mean_hist(1, "units")).sum()
    other_gap = np.abs(mean_hist(0, "units") - mean_hist(2, "units")).sum()
    assert units_gap < 0.25 * other_gap


def test_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="data.cache_dir"):
        ensure_synthetic(SyntheticConfig(n_train=4, n_test=2), blocker / "cache")


def _write_layout(path, build):
    """An HDF5 file laid out by ``build(f)``, starting from a valid two-sample file."""
    _write_raw(path, times=[[0.1], [0.2]], units=[[1], [2]], labels=[0, 1])
    with h5py.File(path, "a") as f:
        build(f)


def _replace(name, **kwargs):
    def build(f):
        del f[name]
        if kwargs.pop("group", False):
            f.create_group(name)
        else:
            f.create_dataset(name, **kwargs)
    return build


def _vlen(values, dtype):
    def build(f):
        del f["spikes/" + values[0]]
        d = f.create_dataset("spikes/" + values[0], (len(values[1]),), dtype=h5py.vlen_dtype(dtype))
        for i, v in enumerate(values[1]):
            d[i] = np.asarray(v, dtype)
    return build


def _empty(f):
    for name in ("spikes/times", "spikes/units", "labels"):
        del f[name]
    f.create_dataset("spikes/times", (0,), dtype=h5py.vlen_dtype(np.float32))
    f.create_dataset("spikes/units", (0,), dtype=h5py.vlen_dtype(np.uint16))
    f.create_dataset("labels", data=np.zeros(0, np.uint16))


BAD_LAYOUTS = {
    "scalar labels": (_replace("labels", data=3), "labels is a scalar; the SHD/SSC layout has one entry per sample"),
    "scalar times": (_replace("spikes/times", data=0.5), "spikes/times is a scalar"),
    "one time per sample": (_replace("spikes/times", data=np.array([0.1, 0.2])),
                            "sample 0: times must be a list of numbers, got shape ()"),
    "group for labels": (_replace("labels", group=True), "labels is a group; the SHD/SSC layout has a dataset there"),
    "group for units": (_replace("spikes/units", group=True), "spikes/units is a group"),
    "2-D labels": (_replace("labels", data=np.zeros((2, 2), int)), "labels is of shape (2, 2)"),
    "string labels": (_replace("labels", data=np.array([b"yes", b"no"])), "labels are |S3 values; they must be whole"),
    "float labels": (_replace("labels", data=np.array([0.0, 1.7])),
                     "labels must be whole numbers (class indices); found 1.7, first at sample 1"),
    "float units": (_vlen(("units", [[1.0], [2.5]]), np.float32),
                    "sample 1: units must be whole numbers (channel indices); found 2.5 (entry 0)"),
    "huge spike time": (_vlen(("times", [[0.1], [1e30]]), np.float64),
                        "sample 1: times[0] = 1e+30 s, beyond 1e+06 s; spike times are seconds"),
    "no samples": (_empty, "holds no samples"),
}


@pytest.mark.parametrize("case", sorted(BAD_LAYOUTS))
def test_bad_layouts_name_the_file_sample_and_field(tmp_path, case):
    build, message = BAD_LAYOUTS[case]
    _write_layout(tmp_path / "bad.h5", build)
    with pytest.raises(DataError) as info:
        read_recordings(tmp_path / "bad.h5", 700, 20)
    assert str(info.value).startswith(str(tmp_path / "bad.h5")) and message in str(info.value), str(info.value)


def test_whole_float_labels_are_read_as_classes(tmp_path):
    _write_layout(tmp_path / "ok.h5", _replace("labels", data=np.array([3.0, 1.0])))
    rec = read_recordings(tmp_path / "ok.h5", 700, 20)
    assert rec.labels.tolist() == [3, 1] and rec.labels.dtype == np.int64


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_split_file_stops_the_run_before_training(tmp_path, split):
    for name, n in (("train", 8), ("test", 4)):
        write_recordings(tmp_path / f"shd_{name}.h5", small_recordings(n=0 if name == split else n))
    with pytest.raises(DataError, match=f"shd_{split}.h5: holds no samples"):
        load_splits(DataConfig(dataset="shd", path=str(tmp_path), steps=10), seed=0)


def test_a_validation_split_that_leaves_nothing_to_train_on(tmp_path):
    write_recordings(tmp_path / "shd_train.h5", small_recordings(n=2))
    write_recordings(tmp_path / "shd_test.h5", small_recordings(n=2))
    with pytest.raises(DataError, match="data.val_split: holding out 0.9 of the 2 training samples leaves none"):
        load_splits(DataConfig(dataset="shd", path=str(tmp_path), steps=10, val_split=0.9), seed=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders without read permission")
def test_a_data_folder_without_read_permission(tmp_path):
    write_recordings(tmp_path / "shd_train.h5", small_recordings())
    write_recordings(tmp_path / "shd_test.h5", small_recordings())
    tmp_path.chmod(0o300)
    try:
        with pytest.raises(DataError, match="data.path: no permission to read the folder"):
            load_splits(DataConfig(dataset="shd", path=str(tmp_path), steps=10), seed=0)
    finally:
        tmp_path.chmod(0o700)


@pytest.mark.parametrize("pooling", [1, 4])
def test_times_far_past_the_window_are_cropped_not_wrapped(pooling):
    times = np.array([0.0, 1e30, 2.0**63 * 0.01])
    units = np.array([5, 6, 7])
    frame = bin_events(times, units, steps=10, dt=0.01, n_channels=8, pooling=pooling, binary=False)
    expected = np.zeros_like(frame)
    expected[0, 5 // pooling] = 1
    np.testing.assert_array_equal(frame, expected)


def test_a_killed_generator_leaves_nothing_for_long(tmp_path):
    leftover = tmp_path / ".synthetic-abc123"
    leftover.mkdir()
    (leftover / "synthetic_train.h5").write_bytes(b"half")
    folder = ensure_synthetic(SyntheticConfig(n_train=4, n_test=2), tmp_path)
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synthetic.lock", folder.name]
