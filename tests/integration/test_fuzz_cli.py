"""Fuzzing the CLI as a careless user would: mutated configs and mutated event files through ``validate``,
``plan --no-measure`` and a short ``train``. Every example must exit 0 or 2 (never a traceback, never exit 1)
within a time bound. Runs in-process (a subprocess per example costs seconds).

CI runs a few hundred examples; ``IPU_SNN_FUZZ_SCALE=N`` multiplies them, and ``IPU_SNN_FUZZ_REPORT=FILE``
writes the counts (examples per command, exits by code) as JSON; docs/robustness.md has a longer run's.
"""

import contextlib
import io
import json
import os
import signal
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipu_snn.cli import main

SCALE = int(os.environ.get("IPU_SNN_FUZZ_SCALE", "1"))
EXAMPLES = {"validate": 150 * SCALE, "plan": 80 * SCALE, "train": 6 * SCALE}
BOUND_S = {"validate": 10, "plan": 30, "train": 60}  # per example; well beyond what a tiny one takes
COUNTS: Counter = Counter()

BASE = {
    "model": {"layers": [{"type": "lif", "size": 8, "tau": 0.1}], "fused": False},
    "data": {"steps": 8, "channel_pooling": 70, "batch_size": 16, "val_split": 0.25,
             "synthetic": {"n_train": 32, "n_test": 16, "n_classes": 2}},
    "training": {"epochs": 1, "lr": 0.01, "seed": 1},
    "bptt": {"schedule": "store_all", "window": 8},
}

#: Where mutations go: every field a user writes, and a few that do not exist.
PATHS = [
    ("model", "layers", 0, "type"), ("model", "layers", 0, "size"), ("model", "layers", 0, "tau"),
    ("model", "layers", 0, "beta"), ("model", "layers", 0, "threshold"), ("model", "layers", 0, "reset"),
    ("model", "layers", 0, "surrogate"), ("model", "layers", 0, "surrogate", "scale"), ("model", "layers"),
    ("model", "readout", "reduce"), ("model", "readout", "tau"), ("model", "sparse"), ("model", "sparse_capacity"),
    ("model", "fused"), ("model", "from_nir"), ("data", "dataset"), ("data", "steps"), ("data", "dt"),
    ("data", "max_time"), ("data", "channel_pooling"), ("data", "batch_size"), ("data", "val_split"),
    ("data", "binary"), ("data", "batch_scope"), ("data", "path"), ("data", "synthetic", "n_classes"),
    ("data", "synthetic", "n_channels"), ("data", "synthetic", "duration"), ("data", "synthetic", "jitter"),
    ("training", "lr"), ("training", "optimizer"), ("training", "weight_decay"), ("training", "momentum"),
    ("training", "lr_schedule"), ("training", "grad_clip"), ("training", "grad_accumulation"),
    ("training", "seed"), ("training", "keep_checkpoints"), ("bptt", "schedule"), ("bptt", "window"),
    ("bptt", "every"), ("bptt", "slots"), ("bptt", "budget_gib"), ("device",), ("out_dir",),
    ("distributed", "timeout_s"), ("nonsense",), ("model", "layers", 0, "nonsense"),
]
#: Fields a short train may not scale up: a run asked to train for hours is not a hang.
WORKLOAD = {("training", "epochs"): 1, ("data", "synthetic", "n_train"): 32, ("data", "synthetic", "n_test"): 16}

NUMBERS = st.one_of(
    st.integers(-10, 10), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2**31, 2**63, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e300, -1e300, 1e-300, 5e-324, 0.5, 1.0]))
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "\x00", "~", "/", "lif", "auto", "cpu", "1e-3",
                                                        "nan", "\x1b[31m", "a" * 300]))
SCALARS = st.one_of(NUMBERS, TEXT, st.booleans(), st.none())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)


def put(raw, path, value):
    node = raw
    for key in path[:-1]:
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                return
            node = node[key]
        elif isinstance(node, dict):
            node = node.setdefault(key, {}) if not isinstance(node.get(key), (dict, list)) else node[key]
            if not isinstance(node, (dict, list)):
                return
        else:
            return
    if isinstance(node, dict):
        node[path[-1]] = value
    elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        node[path[-1]] = value


def delete(raw, path):
    node = raw
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


MUTATION = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), VALUES),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
)


def mutated(mutations, for_train=False):
    raw = json.loads(json.dumps(BASE))
    for kind, path, value in mutations:
        if kind == "set":
            put(raw, path, value)
        else:
            delete(raw, path)
    if for_train:  # bounded work, and an out_dir of the test's own choosing
        for path, value in WORKLOAD.items():
            put(raw, path, value)
        raw.pop("out_dir", None)
    return raw


#: Text a YAML file may hold besides a mapping: garbage a careless edit leaves.
YAML_NOISE = st.sampled_from(["", "\x01", ": :", "[", "model: &a [*a]", "- 1\n- 2", "a: " + "[" * 5000,
                              "training:\n  lr: 1" + "0" * 5000, "\ufeffmodel: 1", "model:\n\tlayers: 1"])


def write_yaml(folder, raw, noise):
    path = Path(folder) / "fuzz.yaml"
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except (yaml.YAMLError, RecursionError, ValueError):
        text = str(raw)
    path.write_text(text + (noise or ""), encoding="utf-8", errors="surrogatepass")
    return path


class Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise Hang


def run(command, argv):
    """main(argv) in-process: its exit code and what it printed on stderr, bounded in time."""
    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(BOUND_S[command])
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's usage errors: exit 2
                code = exc.code
    except Hang:
        pytest.fail(f"{command} ran past {BOUND_S[command]} s: {argv}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    COUNTS[(command, code)] += 1
    text = err.getvalue()
    assert code in (0, 2) and "Traceback" not in text, f"{argv}: exit {code}\n{text[-4000:]}"
    return code, text


def fuzz_settings(command):
    return settings(max_examples=EXAMPLES[command], deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@fuzz_settings("validate")
@given(mutations=st.lists(MUTATION, max_size=4), noise=st.one_of(st.none(), YAML_NOISE),
       overrides=st.lists(st.tuples(st.sampled_from(PATHS), TEXT), max_size=2))
def test_validate_never_tracebacks(tmp_path_factory, mutations, noise, overrides):
    folder = tmp_path_factory.mktemp("validate")
    argv = ["validate", str(write_yaml(folder, mutated(mutations), noise))]
    argv += [".".join(map(str, path)) + "=" + text for path, text in overrides]
    run("validate", argv)


#: Mutations of an SHD-layout events file: what each dataset and attribute may hold instead.
FILE_FIELDS = {
    "spikes/times": st.sampled_from(["ints", "nan", "negative", "huge", "empty", "scalar", "group", "2d"]),
    "spikes/units": st.sampled_from(["floats", "nan", "negative", "huge", "empty", "scalar", "group", "strings"]),
    "labels": st.sampled_from(["floats", "halves", "negative", "huge", "strings", "scalar", "group", "one class",
                               "dangling", "external"]),
    "n_channels": st.sampled_from(["string", "array", "nan", "64.5", "0", "-3", "huge", "4"]),
    "n_classes": st.sampled_from(["string", "nan", "1", "2", "huge"]),
    "extra/keys": st.sampled_from(["group", "dangling", "numbers", "names"]),
}


def ragged(f, name, values, dtype):
    data = f.create_dataset(name, (len(values),), dtype=h5py.vlen_dtype(dtype))
    for i, v in enumerate(values):
        data[i] = np.asarray(v, dtype)


def write_events(path, faults):
    n = 4
    times = {"ints": ([[1, 2]] * n, np.int64), "nan": ([[0.1, np.nan]] * n, np.float32),
             "negative": ([[-0.1, 0.2]] * n, np.float32), "huge": ([[0.1, 1e30]] * n, np.float64),
             "empty": ([[]] * n, np.float32)}
    units = {"floats": ([[0.0, 1.5]] * n, np.float32), "nan": ([[0.0, np.nan]] * n, np.float32),
             "negative": ([[-1, 2]] * n, np.int64), "huge": ([[0, 2**40]] * n, np.int64),
             "empty": ([[]] * n, np.uint16)}
    labels = {"floats": np.array([0.0, 1.0, 0.0, 1.0]), "halves": np.array([0.5, 1, 0, 1]),
              "negative": np.array([-1, 1, 0, 1]), "huge": np.array([0, 2**40, 0, 1]),
              "strings": np.array([b"a", b"b", b"a", b"b"]), "one class": np.zeros(n, np.int64)}
    attrs = {"string": "64", "array": [4, 4], "nan": np.nan, "64.5": 64.5, "0": 0, "-3": -3, "huge": 2**62,
             "4": 4, "1": 1, "2": 2}
    with h5py.File(path, "w") as f:
        for name, table, default in (("spikes/times", times, ([[0.1, 0.2]] * n, np.float32)),
                                     ("spikes/units", units, ([[0, 3]] * n, np.uint16))):
            fault = faults.get(name)
            if fault == "scalar":
                f.create_dataset(name, data=3)
            elif fault == "group":
                f.create_group(name)
            elif fault == "2d":
                f.create_dataset(name, data=np.zeros((n, 2)))
            elif fault == "strings":
                f.create_dataset(name, data=np.array([b"x"] * n))
            else:
                ragged(f, name, *table.get(fault, default))
        fault = faults.get("labels")
        if fault == "scalar":
            f.create_dataset("labels", data=1)
        elif fault == "group":
            f.create_group("labels")
        elif fault == "dangling":
            f["labels"] = h5py.SoftLink("/nowhere")
        elif fault == "external":
            f["labels"] = h5py.ExternalLink("gone.h5", "/labels")
        else:
            f.create_dataset("labels", data=labels.get(fault, np.array([0, 1, 0, 1], np.uint16)))
        for name in ("n_channels", "n_classes"):
            if name in faults:
                f.attrs[name] = attrs[faults[name]]
        keys = faults.get("extra/keys")
        if keys == "group":
            f.create_group("extra/keys")
        elif keys == "dangling":
            f["extra/keys"] = h5py.SoftLink("/nowhere")
        elif keys == "numbers":
            f.create_dataset("extra/keys", data=np.arange(3))
        elif keys == "names":
            f.create_dataset("extra/keys", data=np.array([b"a", b"b"]))


FILE_FAULTS = st.dictionaries(st.sampled_from(sorted(FILE_FIELDS)), st.none(), max_size=3).flatmap(
    lambda chosen: st.fixed_dictionaries({k: FILE_FIELDS[k] for k in chosen}))


def events_config(raw, data_file):
    raw = json.loads(json.dumps(raw, default=str))
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    data.pop("synthetic", None)
    raw["data"] = {**data, "dataset": "events", "files": {"train": str(data_file), "test": str(data_file)},
                   "channel_pooling": 1}
    return raw


@fuzz_settings("plan")
@given(mutations=st.lists(MUTATION, max_size=3), faults=st.one_of(st.none(), FILE_FAULTS),
       budget=st.sampled_from([None, "nan", "-1", "0", "1e-9", "inf", "2"]),
       density=st.sampled_from([None, "nan", "-1", "2", "0", "1"]))
def test_plan_never_tracebacks(tmp_path_factory, mutations, faults, budget, density):
    folder = tmp_path_factory.mktemp("plan")
    raw = mutated(mutations)
    if faults is not None:
        write_events(folder / "events.h5", faults)
        raw = events_config(raw, folder / "events.h5")
    argv = ["plan", str(write_yaml(folder, raw, None)), "--no-measure"]
    argv += ["--budget-gib", budget] if budget else []
    argv += ["--density", density] if density else []
    run("plan", argv)


@fuzz_settings("train")
@given(mutations=st.lists(MUTATION, max_size=2), faults=st.one_of(st.none(), FILE_FAULTS), resume=st.booleans())
def test_a_short_train_never_tracebacks(tmp_path_factory, mutations, faults, resume):
    folder = tmp_path_factory.mktemp("train")
    raw = mutated(mutations, for_train=True)
    if faults is not None:
        write_events(folder / "events.h5", faults)
        raw = events_config(raw, folder / "events.h5")
    argv = ["train", str(write_yaml(folder, raw, None)), "--out", str(folder / "run")] + (["--resume"] if resume else [])
    run("train", argv)


def test_report_counts():
    """Runs last in this file: writes the counts of the examples above where asked (the longer run's)."""
    target = os.environ.get("IPU_SNN_FUZZ_REPORT")
    if target:
        Path(target).write_text(json.dumps({f"{c} exit {k}": n for (c, k), n in sorted(COUNTS.items())}, indent=2))
