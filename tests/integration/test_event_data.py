"""The event-data sources: own SHD-layout files (events), N-MNIST binaries, Tonic event arrays; their errors."""

import importlib.util
import sys

import h5py
import numpy as np
import pytest

from ipu_snn.cli import main
from ipu_snn.config import validate_config
from ipu_snn.data import input_shape, load_splits, write_recordings
from ipu_snn.data import nmnist
from ipu_snn.data.pixels import pixel_units
from ipu_snn.data.recordings import SpikeRecordings
from ipu_snn.data.tonic_source import events_to_sample, sensor_of
from ipu_snn.errors import ConfigError, DataError

HAS_TONIC = importlib.util.find_spec("tonic") is not None


def recordings(n, channels, classes, seed=0, keys=True):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, n)
    times = [np.sort(rng.uniform(0, 0.5, s)) for s in sizes]
    units = [rng.integers(0, channels, s) for s in sizes]
    units[0][0] = channels - 1  # the largest unit occurs
    labels = np.arange(n) % classes
    return SpikeRecordings(times, units, labels, channels, classes, [f"k{c}" for c in range(classes)] if keys else [])


def data_cfg(**data):
    return validate_config({"model": {"layers": [{"type": "lif", "size": 4}]}, "data": data}).data


# ------------------------------------------------------------------------------------------------ events


def test_events_take_channels_and_classes_from_the_files(tmp_path):
    write_recordings(tmp_path / "a.h5", recordings(30, 64, 10))
    write_recordings(tmp_path / "b.h5", recordings(10, 64, 10, seed=1))
    cfg = data_cfg(dataset="events", path=str(tmp_path), files={"train": "a.h5", "test": "b.h5"}, steps=20,
                   max_time=0.5, channel_pooling=2)
    assert input_shape(cfg) == (32, 10)  # not SHD's 700 / 20
    splits = load_splits(cfg, seed=0)
    assert (splits.n_inputs, splits.n_classes, len(splits.train), len(splits.val), len(splits.test)) == (32, 10, 27, 3, 10)
    x, y = splits.train.as_dense()[0]
    assert x.shape == (20, 32) and 0 <= y < 10


def test_events_without_keys_infer_classes_from_labels_and_use_a_valid_file(tmp_path):
    for name, n in [("tr.h5", 12), ("va.h5", 4), ("te.h5", 5)]:
        write_recordings(tmp_path / name, recordings(n, 16, 3, keys=False))
    cfg = data_cfg(dataset="events", path=str(tmp_path), files={"train": "tr.h5", "test": "te.h5", "valid": "va.h5"},
                   steps=5)
    splits = load_splits(cfg, seed=0)
    assert (splits.n_inputs, splits.n_classes, len(splits.train), len(splits.val)) == (16, 3, 12, 4)


def test_events_config_counts_win_when_the_data_fits(tmp_path):
    write_recordings(tmp_path / "a.h5", recordings(8, 64, 4, keys=False))
    cfg = data_cfg(dataset="events", files={"train": str(tmp_path / "a.h5"), "test": str(tmp_path / "a.h5")},
                   n_channels=100, n_classes=6, steps=5)
    assert input_shape(cfg) == (100, 6)


def _stored(path, **attrs):
    with h5py.File(path, "a") as f:
        f.attrs.update(attrs)


@pytest.mark.parametrize("case", ["config channels too few", "config classes disagree with keys",
                                  "stored attribute disagrees", "file unit beyond stored channels"])
def test_events_that_disagree_are_errors_naming_the_file(tmp_path, case, capsys):
    write_recordings(tmp_path / "train.h5", recordings(8, 64, 10))
    write_recordings(tmp_path / "test.h5", recordings(4, 64, 10))
    data = {"dataset": "events", "path": str(tmp_path), "files": {"train": "train.h5", "test": "test.h5"}, "steps": 5}
    if case == "config channels too few":
        data["n_channels"], expected = 32, "train.h5: has unit 63, but data.n_channels gives 32 channels"
    elif case == "config classes disagree with keys":
        data["n_classes"], expected = 20, "train.h5: stores 10 classes, but data.n_classes says 20"
    elif case == "stored attribute disagrees":
        _stored(tmp_path / "test.h5", n_channels=128)
        _stored(tmp_path / "train.h5", n_channels=64)
        expected = "test.h5: stores 128 channels, but"
    else:
        _stored(tmp_path / "train.h5", n_channels=48)
        expected = "train.h5: has unit 63, but"
    with pytest.raises(DataError, match=expected.replace("(", r"\(")):
        input_shape(data_cfg(**data))
    # through the CLI: exit 2, a message naming the file, and no run folder
    raw = {"model": {"layers": [{"type": "lif", "size": 4}]}, "data": data, "training": {"epochs": 1}}
    path = tmp_path / "run.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    assert expected.split(":")[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_events_missing_file_and_config_errors(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        input_shape(data_cfg(dataset="events", files={"train": str(tmp_path / "no.h5"), "test": "x.h5"}))
    with pytest.raises(ConfigError, match="dataset 'events' needs data.files"):
        data_cfg(dataset="events")
    with pytest.raises(ConfigError, match="apply to dataset 'events'"):
        data_cfg(n_channels=5)


# ------------------------------------------------------------------------------------------------ N-MNIST


def encode_nmnist(t_us, x, y, p) -> bytes:
    t_us, x, y, p = (np.asarray(a, np.int64) for a in (t_us, x, y, p))
    raw = np.stack([x, y, (p << 7) | ((t_us >> 16) & 0x7F), (t_us >> 8) & 0xFF, t_us & 0xFF], axis=1)
    return raw.astype(np.uint8).tobytes()


def write_nmnist(root, per_digit=2, seed=0):
    rng = np.random.default_rng(seed)
    truth = {}
    for split in ("Train", "Test"):
        for digit in range(10):
            folder = root / split / str(digit)
            folder.mkdir(parents=True)
            for k in range(per_digit):
                n = int(rng.integers(5, 60))
                ev = (np.sort(rng.integers(0, 300_000, n)), rng.integers(0, 34, n), rng.integers(0, 34, n),
                      rng.integers(0, 2, n))
                path = folder / f"{k:05d}.bin"
                path.write_bytes(encode_nmnist(*ev))
                truth[path] = ev
    return truth


def test_nmnist_decodes_the_40_bit_events(tmp_path):
    # a timestamp above 2^16 uses the 7 bits in byte 2; polarity is byte 2's top bit
    t, x, y, p = [5, 70_000, 8_388_607], [0, 33, 17], [33, 0, 5], [1, 0, 1]
    path = tmp_path / "one.bin"
    path.write_bytes(encode_nmnist(t, x, y, p))
    assert path.stat().st_size == 15
    times, units = nmnist.read_events_file(path)
    np.testing.assert_allclose(times, np.array(t) * 1e-6, rtol=1e-6)
    assert units.tolist() == [(pi * 34 + yi) * 34 + xi for xi, yi, pi in zip(x, y, p)]
    # the overflow marker (y == 240) is no event; it moves every later timestamp by 2^13 us, as Tonic reads it
    marker = bytes([0, 240, 0, 0, 0])
    path.write_bytes(encode_nmnist(t[:1], x[:1], y[:1], p[:1]) + marker + encode_nmnist([7], [1], [1], [0]))
    times, units = nmnist.read_events_file(path)
    np.testing.assert_allclose(times, np.array([5, 7 + 8192]) * 1e-6, rtol=1e-6)


def test_nmnist_folder_pooling_and_labels(tmp_path):
    truth = write_nmnist(tmp_path)
    cfg = data_cfg(dataset="nmnist", path=str(tmp_path), spatial_pooling=2, steps=30, max_time=0.3, val_split=0.0)
    assert input_shape(cfg) == (17 * 17 * 2, 10)
    splits = load_splits(cfg, seed=0)
    assert (len(splits.train), len(splits.test), splits.n_inputs, splits.n_classes) == (20, 20, 578, 10)
    rec = splits.train.rec
    assert rec.labels.tolist() == [d for d in range(10) for _ in range(2)]
    first = tmp_path / "Train" / "0" / "00000.bin"
    t, x, y, p = truth[first]
    assert rec.units[0].tolist() == ((p * 17 + y // 2) * 17 + x // 2).tolist()
    frame, label = splits.train.as_dense()[0]
    assert frame.shape == (30, 578) and label == 0 and frame.sum() > 0


@pytest.mark.parametrize("corruption,message", [
    (lambda b: b[:-2], "is not a whole number of 5-byte N-MNIST events"),
    (lambda b: bytes([40]) + b[1:], "event 0 lies at pixel (40,"),
])
def test_corrupt_nmnist_file_is_an_error_naming_it(tmp_path, corruption, message, capsys):
    write_nmnist(tmp_path / "nmnist", per_digit=1)
    bad = tmp_path / "nmnist" / "Test" / "3" / "00000.bin"
    bad.write_bytes(corruption(bad.read_bytes()))
    with pytest.raises(DataError) as info:
        load_splits(data_cfg(dataset="nmnist", path=str(tmp_path / "nmnist"), steps=5), seed=0)
    assert str(bad) in str(info.value) and message in str(info.value)
    code = main(["train", "configs/ipu_seed_alif_nmnist.yaml", f"data.path={tmp_path / 'nmnist'}", "device=cpu",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "out").exists()


def test_nmnist_missing_folders(tmp_path):
    with pytest.raises(DataError, match="no Train/ folder"):
        load_splits(data_cfg(dataset="nmnist", path=str(tmp_path), steps=5), seed=0)
    (tmp_path / "Train").mkdir()
    with pytest.raises(DataError, match="no N-MNIST files"):
        load_splits(data_cfg(dataset="nmnist", path=str(tmp_path), steps=5), seed=0)


def test_seed_nmnist_config_reads_nmnist():
    from ipu_snn.config import load_config

    assert load_config("configs/ipu_seed_alif_nmnist.yaml").data.path == "data/nmnist"  # validates as shipped
    with pytest.raises(ConfigError, match="dataset 'nmnist' needs data.path"):
        load_config("configs/ipu_seed_alif_nmnist.yaml", ["data.path="])
    cfg = load_config("configs/ipu_seed_alif_nmnist.yaml", ["data.path=/data/nmnist"])
    assert cfg.data.dataset == "nmnist" and input_shape(cfg.data) == (2312, 10)


# ------------------------------------------------------------------------------------------------ Tonic


def tonic_events(x, y, t, p):
    # the structured dtype Tonic's camera datasets (NMNIST, DVSGesture, ...) give each sample
    dtype = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])
    out = np.zeros(len(x), dtype=dtype)
    out["x"], out["y"], out["t"], out["p"] = x, y, t, p
    return out


def test_tonic_camera_events_become_pixel_channels():
    ev = tonic_events([0, 33, 5], [0, 2, 33], [10, 2_000, 300_000], [1, 0, 1])
    times, units = events_to_sample(ev, (34, 34, 2), pooling=1, source="s")
    np.testing.assert_allclose(times, [1e-5, 2e-3, 0.3], rtol=1e-6)
    assert units.tolist() == pixel_units(ev["x"], ev["y"], ev["p"], (34, 34, 2)).tolist() == [1156, 101, 2283]
    # -1/1 polarities read as OFF/ON; pooling sums 2x2 blocks
    ev["p"] = [1, -1, 1]
    _, units = events_to_sample(ev, (34, 34, 2), pooling=2, source="s")
    assert units.tolist() == [289, 16 + 1 * 17, 289 + 2 + 16 * 17]


def test_tonic_audio_events_ignore_polarity():
    # Tonic's SHD: fields t, x, p with p = 1 on a (700, 1, 1) sensor
    dtype = np.dtype([("t", int), ("x", int), ("p", int)])
    ev = np.array([(1_000, 699, 1), (2_000, 3, 1)], dtype=dtype)
    assert sensor_of((700,)) == (700, 1, 1)
    times, units = events_to_sample(ev, sensor_of((700, 1, 1)), pooling=1, source="s")
    assert units.tolist() == [699, 3] and np.allclose(times, [1e-3, 2e-3])
    with pytest.raises(DataError, match="s: event 0 at \\(699, 0\\) lies outside the sensor 10x1"):
        events_to_sample(ev, (10, 1, 1), pooling=1, source="s")


def test_tonic_absent_names_the_extra(tmp_path, monkeypatch):
    # Tonic is in the test extra; a None entry in sys.modules makes its import fail as if it were absent
    monkeypatch.setitem(sys.modules, "tonic", None)
    monkeypatch.setitem(sys.modules, "tonic.datasets", None)
    with pytest.raises(ConfigError, match=r"pip install 'ipu_snn\[tonic\]'"):
        input_shape(data_cfg(dataset="tonic", name="NMNIST", root=str(tmp_path)))


@pytest.mark.skipif(not HAS_TONIC, reason="needs the tonic extra (pip install 'ipu_snn[tonic]')")
def test_tonic_shd_on_disk_loads_and_never_downloads(tmp_path):
    # Tonic's SHD looks for save_to/SHD/shd_{train,test}.h5 next to the .zip it downloaded
    folder = tmp_path / "SHD"
    folder.mkdir()
    for split, n in [("train", 12), ("test", 6)]:
        write_recordings(folder / f"shd_{split}.h5", recordings(n, 700, 20, seed=n))
        with h5py.File(folder / f"shd_{split}.h5", "a") as f:
            f.create_dataset("extra/speaker", data=np.zeros(n, np.uint16))
        (folder / f"shd_{split}.h5.zip").write_bytes(b"")
    cfg = data_cfg(dataset="tonic", name="SHD", root=str(tmp_path), steps=10, max_time=0.5, val_split=0.25)
    assert input_shape(cfg) == (700, 20)
    splits = load_splits(cfg, seed=0)
    direct = recordings(12, 700, 20, seed=12)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 6)
    assert splits.train.rec.units[0].tolist() == direct.units[0].tolist()
    np.testing.assert_allclose(splits.train.rec.times[0], direct.times[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(DataError, match="runs never download"):
        load_splits(data_cfg(dataset="tonic", name="NMNIST", root=str(tmp_path), steps=5), seed=0)
    with pytest.raises(ConfigError, match="tonic.datasets has no dataset 'NoSuch'"):
        input_shape(data_cfg(dataset="tonic", name="NoSuch", root=str(tmp_path)))


@pytest.mark.skipif(not HAS_TONIC, reason="needs the tonic extra (pip install 'ipu_snn[tonic]')")
def test_tonic_without_its_archives_names_the_files_it_expected(tmp_path):
    (tmp_path / "NMNIST").mkdir()
    (tmp_path / "NMNIST" / "train.zip").write_bytes(b"")  # the archive, but not its extracted folder
    with pytest.raises(DataError) as err:
        load_splits(data_cfg(dataset="tonic", name="NMNIST", root=str(tmp_path), steps=5), seed=0)
    message = " ".join(str(err.value).split())
    assert f"{tmp_path / 'NMNIST' / 'train.zip'} (present)" in message
    assert f"{tmp_path / 'NMNIST' / 'Train'} (missing)" in message and "runs never download" in message
