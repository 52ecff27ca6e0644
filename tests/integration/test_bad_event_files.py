"""``dataset: events`` files of every wrong kind the fuzzing of issue 22 found: each one exits 2 with one
message naming the file and what is wrong, in ``validate``'s sibling ``plan --no-measure`` (which reads
the files' shapes) and in ``train`` (which reads them whole)."""

import h5py
import numpy as np
import pytest
import yaml

from ipu_snn.cli import main


def write(path, *, times=None, units=None, labels=None, attrs=None, edit=None):
    n = 4
    times = [np.array([0.1, 0.2], np.float32)] * n if times is None else times
    units = [np.array([i, 3], np.uint16) for i in range(n)] if units is None else units
    with h5py.File(path, "w") as f:
        t = f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.asarray(times[0]).dtype))
        u = f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.asarray(units[0]).dtype))
        for i in range(n):
            t[i], u[i] = times[i], units[i]
        f.create_dataset("labels", data=np.array([0, 1, 0, 1], np.uint16) if labels is None else labels)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        if edit is not None:
            edit(f)


def replace(name, value):
    def edit(f):
        del f[name]
        if isinstance(value, str) and value == "group":
            f.create_group(name).create_dataset("x", data=[1])
        elif isinstance(value, (h5py.SoftLink, h5py.ExternalLink)):
            f[name] = value
        else:
            f.create_dataset(name, data=value)
    return edit


CASES = {
    "units a group": (dict(edit=replace("spikes/units", "group")), "spikes/units is a group"),
    "labels a group": (dict(edit=replace("labels", "group")), "labels is a group"),
    "scalar units": (dict(edit=replace("spikes/units", 3)), "spikes/units is a scalar"),
    "string labels": (dict(labels=np.array([b"a", b"b", b"a", b"b"])), "labels are |S1 values"),
    "NaN units": (dict(units=[np.array([0.0, np.nan])] * 4), "found NaN"),
    "n_channels a string": (dict(attrs={"n_channels": "64"}), "the attribute n_channels must be one whole number"),
    "n_channels an array": (dict(attrs={"n_channels": [64, 64]}), "n_channels must be one whole number"),
    "n_channels NaN": (dict(attrs={"n_channels": np.nan}), "n_channels must be a positive whole number, got nan"),
    "n_channels 64.5": (dict(attrs={"n_channels": 64.5}), "n_channels must be a positive whole number, got 64.5"),
    "n_classes a string": (dict(attrs={"n_classes": "2"}), "the attribute n_classes must be one whole number"),
    "dangling soft link": (dict(edit=replace("labels", h5py.SoftLink("/nowhere"))),
                           "labels is a link that does not resolve"),
    "missing external link": (dict(edit=replace("labels", h5py.ExternalLink("gone.h5", "/labels"))),
                              "labels is a link that does not resolve"),
    "dangling class names": (dict(edit=lambda f: f.__setitem__("extra/keys", h5py.SoftLink("/nowhere"))),
                             "extra/keys is a link that does not resolve"),
    "integer times (milliseconds)": (dict(times=[np.array([100, 200], np.int64)] * 4),
                                     "spike times are integers (int64)"),
    "every sample empty": (dict(times=[np.zeros(0, np.float32)] * 4, units=[np.zeros(0, np.uint16)] * 4,
                                attrs={"n_channels": 4}), "none of its 4 samples holds a spike"),
}


def config(tmp_path, data_file):
    path = tmp_path / "events.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"layers": [{"type": "lif", "size": 4}], "fused": False},
        "data": {"dataset": "events", "files": {"train": str(data_file), "test": str(data_file)}, "steps": 4,
                 "batch_size": 2},
        "training": {"epochs": 1},
        "bptt": {"schedule": "store_all", "window": 4},
    }))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_events_file_is_exit_2_with_one_message(tmp_path, capsys, case):
    kwargs, message = CASES[case]
    data = tmp_path / "bad.h5"
    write(data, **kwargs)
    cfg = config(tmp_path, data)
    # plan reads the files' shapes only (the counts); train reads them whole: both must refuse, and say why
    for argv in (["plan", str(cfg), "--no-measure"], ["train", str(cfg), "--out", str(tmp_path / "run")]):
        code = main(argv)
        err = " ".join(capsys.readouterr().err.split())
        if argv[0] == "plan" and code == 0:  # a shape that only the whole read can fault (times, emptiness)
            continue
        assert code == 2 and "Traceback" not in err and err.count("error:") == 1, (argv[0], err)
        assert str(data) in err and message in err, (argv[0], err)
    assert not (tmp_path / "run").exists()  # bad data leaves no run folder


def test_the_good_file_of_these_cases_trains(tmp_path):
    data = tmp_path / "good.h5"
    write(data, attrs={"n_channels": 4, "n_classes": 2})
    assert main(["train", str(config(tmp_path, data)), "--out", str(tmp_path / "run")]) == 0
