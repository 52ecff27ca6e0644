"""The Python API as docs/python_api.md shows it (its code blocks run in order) and the examples/ scripts."""

import importlib
import inspect
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import ipu_snn

ROOT = Path(__file__).resolve().parents[2]


def doc_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_python_api_page_runs(monkeypatch, capsys):
    blocks = doc_blocks(ROOT / "docs" / "python_api.md")
    assert len(blocks) >= 5
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": "python_api_doc"}
    for block in blocks:
        exec(compile(block, "docs/python_api.md", "exec"), namespace)
    # what the page claims, checked on what its blocks made
    assert namespace["rec"].spikes.shape == namespace["rec"].membranes.shape == (50, 16, 128)
    assert namespace["summary"]["epochs"] == 2 and (namespace["run"] / "best").is_dir()
    assert "double(" in capsys.readouterr().out


def test_the_top_level_api_is_lazy_and_complete():
    code = "import sys, ipu_snn; assert 'ipu_snn.api' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    for name in ipu_snn.API:
        assert getattr(ipu_snn, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ipu_snn.nothing  # noqa: B018
    # `ipu_snn.train` is the function, whether or not the module that defines it was imported first
    training = importlib.import_module("ipu_snn.training")
    assert ipu_snn.train is training.train and inspect.isfunction(ipu_snn.train)


def run_example(name: str, *args: str, capsys) -> str:
    """``python examples/NAME ARGS``'s output, run in this process (as ``__main__``, with its argv): a
    subprocess would only add an interpreter and torch's import. An exception fails the test, as exit 1 would."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [str(ROOT / "examples" / name), *args])
        runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
    return capsys.readouterr().out


def test_a_custom_rate_loss_trains_under_double_and_sparse_auto(capsys):
    out = run_example("custom_rate_loss.py", "--batches", "8", "--target", "0.02", capsys=capsys)
    rates = [float(r) for r in re.findall(r"layer 0 rate ([0-9.]+)", out)]
    assert "double(" in out
    # the rate term pulls layer 0 from its initial rate towards the target
    assert abs(rates[-1] - 0.02) < 0.5 * abs(rates[0] - 0.02), out


def test_record_and_train_examples(tmp_path, capsys):
    out = run_example("record_spikes.py", "--samples", "2", capsys=capsys)
    assert "spikes (50, 2, 128), membranes (50, 2, 128)" in out
    out = run_example("train_from_config.py", str(tmp_path / "run"), "--epochs", "1", capsys=capsys)
    assert '"epochs": 1' in out and (tmp_path / "run" / "best").is_dir()
