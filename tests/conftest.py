import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

# Triton reads TRITON_INTERPRET when it is first imported, and importing torch's
# custom-op machinery (any test that touches ipu_snn.ops) can import it. Setting
# it here, before any test module is collected, makes the Triton kernels run on
# CPU tensors through the interpreter for the whole session when there is no GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Synthetic datasets go to a per-session cache, never the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("IPU_SNN_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _short_calibration():
    """A run calibrates each new shape once per session (the private cache). Here the window costs are
    timed on windows of 8 and 16 steps, once after the warm-up, instead of 16 and 64 steps three times, and
    the dense/sparse crossovers (model.sparse: auto, the default) from one timing of each side instead of
    the fastest of seven: the same code at a fraction of the cost. Tests of the measurement call
    `measure_window_costs` and `ipu_snn.ops.policy.measure_crossover` themselves. A run in a subprocess
    measures in full, once per shape and session (the cache is shared)."""
    from ipu_snn import calibration

    measure = calibration.measure_window_costs
    crossover = calibration.measure_crossover
    mp = pytest.MonkeyPatch()
    mp.setattr(calibration, "measure_window_costs",
               lambda *args, **kwargs: measure(*args, **{"lengths": (8, 16), "repeats": 1, **kwargs}))
    mp.setattr(calibration, "measure_crossover", lambda *args, **kwargs: crossover(*args, **{"repeats": 1, **kwargs}))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _interpreter_built_aside(request, _private_cache):
    """The IPU graph interpreter's library (`ipu_snn.ipu.interpreter.library`: g++ of the Poplar mock and the
    network graph, cached by source hash in the session's cache) is built by a second process from the start
    of a session that reaches tests/ipu/ after other tests, on the other core, while those tests run; the
    first test that needs it then finds it built. Should one need it sooner, it builds its own copy (the
    cache's file is replaced atomically): the same library either way."""
    ipu = [i for i, item in enumerate(request.session.items) if "ipu" in item.path.parent.parts[-1:]]
    if not ipu or ipu[0] == 0 or shutil.which("g++") is None:
        yield
        return
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    build = subprocess.Popen([sys.executable, "-c", "from ipu_snn.ipu.interpreter import library; library()"],
                             cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield
    if build.poll() is None:
        build.kill()
    build.wait()


def _poptorch_importable() -> bool:
    if importlib.util.find_spec("poptorch") is None:
        return False
    try:  # installed but the SDK not enabled (`source enable`) fails here
        import poptorch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(autouse=True)
def _undrawn_plots(request, monkeypatch):
    """curves.png, spikes.png and rates.png keep their atomic write (the same path, a PNG signature) but are
    not drawn: drawing costs about a second per training run, and only the tests marked ``plots`` (which
    draw them) and the CLI's subprocess runs read images. What the plots show is still computed
    (``record_activity`` runs)."""
    if request.node.get_closest_marker("plots") is not None:
        return
    from ipu_snn import loop, reporting
    from ipu_snn.files import replace_atomically

    def undrawn(path, *args):
        replace_atomically(path, b"\x89PNG\r\n\x1a\n")

    monkeypatch.setattr(loop, "plot_curves", undrawn)
    monkeypatch.setattr(reporting, "plot_spikes", undrawn)
    monkeypatch.setattr(reporting, "plot_rates", undrawn)


HAS_CUDA = torch.cuda.is_available()
#: where the Triton kernels run: compiled on a GPU when there is one, interpreted on the CPU otherwise
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``ipu`` run only where the Poplar SDK's PopTorch imports, ``gpu`` only with a CUDA GPU,
    ``triton`` only where Triton is installed."""
    needs = {"ipu": (_poptorch_importable, "needs the Graphcore Poplar SDK (PopTorch)"),
             "gpu": (lambda: HAS_CUDA, "needs a CUDA GPU"),
             "triton": (lambda: importlib.util.find_spec("triton") is not None, "triton is not installed")}
    for name, (available, reason) in needs.items():
        marked = [item for item in items if item.get_closest_marker(name) is not None]
        if marked and not available():
            for item in marked:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")  # not per test: hypothesis' @given tests take it too
def device(request) -> str:
    """The device of a kernel test, parametrized indirectly (``indirect=["device"]``): "cpu" or "cuda" as
    given, "triton" where the Triton kernels run (`TRITON_DEVICE`)."""
    return TRITON_DEVICE if request.param == "triton" else request.param


#: A run small enough to train in seconds: one recurrent layer on the synthetic data, cosine schedule.
SMALL_RUN = {
    "model": {"layers": [{"type": "rlif", "size": 24, "tau": 0.1}], "readout": {"reduce": "mean"}},
    "data": {"steps": 20, "channel_pooling": 20, "batch_size": 32, "val_split": 0.2,
             "synthetic": {"n_train": 160, "n_test": 40, "n_classes": 4}},
    "training": {"epochs": 3, "lr": 0.01, "lr_schedule": "cosine", "seed": 1},
}


@pytest.fixture
def small_run() -> dict:
    """The raw config (a dict) of a run that trains in seconds; each test gets its own copy."""
    return copy.deepcopy(SMALL_RUN)


@pytest.fixture(scope="session")
def small():
    """``small(**training)``: the small run's validated config with training fields changed."""
    from ipu_snn.config import validate_config

    def make(**training):
        raw = copy.deepcopy(SMALL_RUN)
        return validate_config({**raw, "training": {**raw["training"], **training}})

    return make


@pytest.fixture(scope="session")
def quiet():
    """``quiet()``: a console that prints nothing, for runs whose output the test does not read."""
    from rich.console import Console

    return lambda: Console(quiet=True)


def _check_no_validation_split(raw: dict, tmp_path, capsys):
    """``data.val_split=0`` through the CLI: trains, reports no validation, resumes, evaluates; asking to
    evaluate the missing split is a user error."""
    from ipu_snn.cli import main
    from ipu_snn.reporting import read_metrics_csv

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**raw, "data": {**raw["data"], "val_split": 0}}))
    out = tmp_path / "run"
    assert main(["train", str(path), "training.epochs=1", "--out", str(out)]) == 0
    assert "done: val accuracy n/a, test accuracy" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["val_accuracy"] is None
    assert "val_loss" not in read_metrics_csv(out / "metrics.csv")[0]
    assert main(["train", str(path), "training.epochs=2", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    assert main(["eval", str(out)]) == 0
    assert main(["eval", str(out), "--split", "val"]) == 2
    assert "the run has no val split" in capsys.readouterr().err


@pytest.fixture
def check_no_validation_split():
    """A check any driver's tests run: ``data.val_split=0`` through the CLI trains, reports no
    validation, resumes and evaluates."""
    return _check_no_validation_split
