"""Bad configs fail with exit != 0 and a message naming the field; good ones resolve."""

import subprocess
import sys

import pytest
import yaml

from ipu_snn.cli import main
from ipu_snn.config import apply_override, load_config

GOOD = {
    "model": {"layers": [{"type": "rlif", "size": 32}]},
    "data": {"dataset": "synthetic", "steps": 20},
    "training": {"epochs": 1},
}


def write(tmp_path, raw, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return path


def patched(path, value):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    if value is not None:
        apply_override(raw, f"{path}={value}")
    return raw


BAD = [
    # (description, raw config, text the message must contain)
    ("typo at top level", {**GOOD, "modle": {}}, "modle: unknown field (did you mean 'model'?)"),
    ("typo in a section", patched("training.learning_rate", "0.1"), "training.learning_rate: unknown field"),
    ("unknown layer type", patched("model.layers.0.type", "gru"), "model.layers.0"),
    ("non-positive size", patched("model.layers.0.size", "0"), "model.layers.0.size"),
    ("beta above one", patched("model.layers.0.beta", "1.5"), "model.layers.0.beta"),
    ("beta and tau together", {"model": {"layers": [{"type": "rlif", "size": 8, "beta": 0.9, "tau": 0.02}]}},
     "model.layers.0: give either beta or tau, not both"),
    ("unknown surrogate", patched("model.layers.0.surrogate.name", "relu"), "model.layers.0.surrogate.name"),
    ("unknown reset", patched("model.layers.0.reset", "hard"), "model.layers.0.reset"),
    ("validation split of 1.5", patched("data.val_split", "1.5"), "data.val_split"),
    ("shd without a path", patched("data.dataset", "shd"), "data: Value error, dataset 'shd' needs data.path"),
    ("steps and dt together", patched("data.dt", "0.01"), "give either steps or dt"),
    ("unknown optimizer", patched("training.optimizer", "rmsprop"), "training.optimizer"),
    ("unknown device", patched("device", "tpu"), "device"),
    ("no model", {"data": {"steps": 10}}, "model: required field is missing"),
    ("no layers", patched("model.layers", "[]"), "model.layers"),
    ("text where a number goes", patched("training.lr", "fast"), "training.lr"),
    ("unknown schedule", patched("bptt.schedule", "checkmate"), "bptt.schedule"),
    ("zero slots", patched("bptt.slots", "0"), "bptt.slots"),
    ("negative seed", patched("training.seed", "-1"), "training.seed: Input should be greater than or equal to 0"),
    ("seed past 32 bits", patched("training.seed", "99999999999"), "training.seed: Input should be less than"),
    ("negative data seed", patched("data.synthetic.seed", "-3"), "data.synthetic.seed"),
    ("a bool for an int", patched("training.epochs", "true"), "training.epochs: Input should be a valid integer"),
    ("a float for an int", patched("model.layers.0.size", "2.5"), "model.layers.0.size: Input should be a valid integer"),
    ("an int for a bool", patched("training.tensorboard", "1"), "training.tensorboard: Input should be a valid boolean"),
    ("an empty out_dir", patched("out_dir", "''"), "out_dir: an empty name is no folder"),
    ("a section given twice", "model: {layers: [{type: rlif, size: 8}]}\ntraining: {epochs: 1}\ntraining: {lr: 0.1}\n",
     "training is given twice (lines 2 and 3)"),
    ("a nested key given twice", "model:\n  layers:\n    - type: rlif\n      size: 8\n      size: 9\n",
     "model.layers.0.size is given twice (lines 4 and 5)"),
]


@pytest.mark.parametrize("desc,raw,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_rejected_naming_the_field(tmp_path, capsys, desc, raw, expected):
    code = main(["validate", str(write(tmp_path, raw))])
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    assert expected.replace("Value error, ", "") in " ".join(err.split())


@pytest.mark.parametrize("override,expected", [
    ("training.lr", "expected the form a.b=c"),
    ("model.layers.3.size=4", "model.layers is a list of 1 entries"),
    ("training.epochs.x=1", "training.epochs is a value, not a section"),
    ("training.lr=[1,", "override 'training.lr=[1,': not valid YAML"),
    ("training.lr={", "override 'training.lr={': not valid YAML"),
    ("training={lr: 1, lr: 2}", "training.lr is given twice"),
])
def test_bad_override(tmp_path, capsys, override, expected):
    assert main(["validate", str(write(tmp_path, GOOD)), override]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_missing_file_and_bad_yaml(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) != 0
    assert "config file not found" in capsys.readouterr().err
    assert main(["validate", str(write(tmp_path, "model: [unclosed"))]) != 0
    assert "not valid YAML" in capsys.readouterr().err


def test_a_config_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# réseau\nmodel: {layers: [{type: rlif, size: 8}]}\n".encode("latin-1"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text (byte 0xe9 at offset 3)" in err and "Traceback" not in err


def test_numbers_in_exponent_form_and_home_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(write(tmp_path, GOOD), ["training.lr=3e-3", "training.weight_decay=1E-4", "out_dir=~/runs/x"])
    assert cfg.training.lr == 3e-3 and cfg.training.weight_decay == 1e-4  # YAML 1.1 would read strings
    assert cfg.out_dir == str(tmp_path / "runs" / "x")


def test_overrides_are_typed_and_applied(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["training.lr=3e-3", "model.layers.0.size=64",
                                              "model.layers.0.learn_decay=true", "data.dt=null"])
    assert cfg.training.lr == pytest.approx(3e-3)
    assert cfg.model.layers[0].size == 64 and cfg.model.layers[0].learn_decay is True


def test_validate_prints_resolved_config(tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, GOOD)), "training.epochs=7"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["training"]["epochs"] == 7
    assert resolved["model"]["layers"][0]["threshold"] == 1.0  # defaults filled in


def test_ipu_without_poptorch_names_the_sdk(tmp_path):
    # a real subprocess: the console script's path, exit status and stderr as a user sees them
    path = write(tmp_path, patched("device", "ipu"))
    proc = subprocess.run([sys.executable, "-m", "ipu_snn.cli", "train", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Poplar SDK" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("device, fused", [("cpu", "auto"), ("cuda", "auto"), ("cuda", False), ("ipu", "auto"),
                                           ("ipu-emulator", "auto")])
def test_learn_threshold_runs_where_its_kernels_are(device, fused):
    # every kernel takes a learned threshold, the IPU network op included (tests/ipu/test_network_graph.py)
    from ipu_snn.config import validate_config

    raw = {"device": device, "model": {"fused": fused, "sparse": device == "ipu-emulator",
                                       "layers": [{"type": "lif", "size": 8, "learn_threshold": True}]}}
    assert validate_config(raw).model.layers[0].learn_threshold
