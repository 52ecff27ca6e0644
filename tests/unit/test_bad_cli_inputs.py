"""Inputs that used to give a traceback or pass silently (issue 22, failures 7, 9 and 11): each exits 2 with
one message naming what is wrong."""

import pytest
import yaml

from ipu_snn.cli import main

GOOD = {"model": {"layers": [{"type": "lif", "size": 8}]}, "data": {"steps": 8, "channel_pooling": 70},
        "bptt": {"schedule": "store_all", "window": 8}}


def exit_and_message(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's refusal of an option's value
        code = exc.code
    err = " ".join(capsys.readouterr().err.split())
    return code, err


def config_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


GOOD_TEXT = yaml.safe_dump(GOOD)
TEXTS = {
    "a control character": (GOOD_TEXT + "out_dir: a\x01b\n", "special characters are not allowed"),
    "3,000 levels of nesting": ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    "3,000 unclosed levels": ("a: " + "[" * 3000, "nested too deeply"),
    "3,000 levels of block nesting": ("".join(" " * i + f"k{i}:\n" for i in range(0, 3000 * 1, 1))[:2_000_000] + "\n",
                                      None),
    "an integer of 5,000 digits": (GOOD_TEXT + "training:\n  lr: 1" + "0" * 5000 + "\n", "more than 4300 digits"),
}


@pytest.mark.parametrize("case", sorted(TEXTS))
def test_configs_that_used_to_traceback(tmp_path, capsys, case):
    text, message = TEXTS[case]
    code, err = exit_and_message(capsys, ["validate", config_text(tmp_path, text)])
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1, err[-2000:]
    assert message is None or message in err, err[-2000:]


OVERRIDES = {
    "training.lr=1e300": "training.lr: does not fit the float32",
    "training.lr=1e-300": "training.lr: does not fit the float32",
    "training.weight_decay=1e300": "training.weight_decay: does not fit the float32",
    "training.grad_clip=1e39": "training.grad_clip: does not fit the float32",
    "training.lr=.inf": "training.lr: Input should be a finite number",
    "data.max_time=.nan": "data.max_time: Input should be a finite number",
    "model.layers.0.threshold=.inf": "model.layers.0.threshold: Input should be a finite number",
}


@pytest.mark.parametrize("override", sorted(OVERRIDES))
def test_values_beyond_the_training_dtype_are_refused_by_validation(tmp_path, capsys, override):
    code, err = exit_and_message(capsys, ["validate", config_text(tmp_path, GOOD_TEXT), override])
    assert code == 2 and OVERRIDES[override] in err, err


OPTIONS = {
    ("plan", "--budget-gib", "nan"): "--budget-gib: nan is not a positive number of GiB",
    ("plan", "--budget-gib", "-1"): "--budget-gib: -1 is not a positive number of GiB",
    ("plan", "--budget-gib", "inf"): "--budget-gib: inf is not a positive number of GiB",
    ("plan", "--density", "2"): "--density: 2 is not a density between 0 and 1",
    ("plan", "--density", "-1"): "--density: -1 is not a density between 0 and 1",
    ("plan", "--density", "nan"): "--density: nan is not a density between 0 and 1",
    ("plan", "--density", "x"): "--density: 'x' is not a number",
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_options_out_of_range_exit_2(tmp_path, capsys, option):
    command, flag, value = option
    code, err = exit_and_message(capsys, [command, config_text(tmp_path, GOOD_TEXT), "--no-measure", flag, value])
    assert code == 2 and OPTIONS[option] in err, err


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_export_dt_must_be_positive_seconds(tmp_path, capsys, value):
    code, err = exit_and_message(capsys, ["export", str(tmp_path), "--dt", value])
    assert code == 2 and f"--dt: {value} is not a positive number of seconds" in err, err


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_plot_into_a_missing_folder_or_onto_a_folder(tmp_path, capsys, where):
    target = tmp_path / "nowhere" / "plan.png" if where == "missing folder" else tmp_path
    code, err = exit_and_message(capsys, ["plan", config_text(tmp_path, GOOD_TEXT), "--no-measure", "--plot",
                                          str(target)])
    assert code == 2 and "Traceback" not in err, err
    assert ("does not exist" if where == "missing folder" else "is a folder") in err and str(target) in err


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_export_out_into_a_missing_folder_or_onto_a_folder(tmp_path, capsys, where):
    target = tmp_path / "nowhere" / "m.nir" if where == "missing folder" else tmp_path
    code, err = exit_and_message(capsys, ["export", str(tmp_path), "--out", str(target)])
    assert code == 2 and ("does not exist" if where == "missing folder" else "is a folder") in err, err
