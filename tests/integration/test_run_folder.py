"""A run folder under abuse: two runs at once, kills, lost or lying LATEST files, damaged checkpoints,
leftovers, file modes. Nothing is lost and nothing happens silently."""

import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml

from ipu_snn.checkpoint import MANIFEST, STATE, WEIGHTS, checkpoint_folders, read_checkpoint
from ipu_snn.cli import main
from ipu_snn.errors import TrainingError
from ipu_snn.files import lock_holder
from ipu_snn.run_folder import LOCK, newest_intact_checkpoint
from ipu_snn.training import train


RUN_TIMEOUT_S = 180  # bounds every subprocess: a hang fails the test instead of the suite


@pytest.fixture
def config_file(small_run):
    """``config_file(folder, **training)``: the small run's config written to folder/small.yaml."""
    def make(folder, **training):
        path = folder / "small.yaml"
        path.write_text(yaml.safe_dump({**small_run, "training": {**small_run["training"], **training}}))
        return path

    return make


def cli(*args):
    return [sys.executable, "-m", "ipu_snn.cli", *map(str, args)]


def run_cli(*args):
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def wait_for(predicate, timeout_s=RUN_TIMEOUT_S, what="a condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------------- one owner per folder


def test_two_runs_into_one_folder_one_is_refused_naming_the_owner(tmp_path, config_file):
    path, out = config_file(tmp_path, epochs=4), tmp_path / "run"
    runs = [subprocess.Popen(cli("train", path, *extra, "--out", out), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for extra in ([], ["training.lr=0.02"])]
    outputs = [p.communicate(timeout=RUN_TIMEOUT_S) for p in runs]
    results = [(p.returncode, *output) for p, output in zip(runs, outputs)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    loser_err = results[1 - winner][2]
    assert f"{out} is in use by another ipu-snn run (pid {runs[winner].pid} on" in " ".join(loser_err.split())
    assert "Traceback" not in loser_err
    # the folder holds the winner's run, whole
    lr = yaml.safe_load((out / "config.yaml").read_text())["training"]["lr"]
    assert lr == (0.01, 0.02)[winner]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 4


def test_a_killed_run_leaves_no_stale_lock(tmp_path, config_file):
    path, out = config_file(tmp_path, epochs=5), tmp_path / "run"
    run = subprocess.Popen(cli("train", path, "--out", out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (out / "checkpoints" / "epoch-0001").is_dir() or run.poll() is not None, what="epoch 1")
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait(timeout=RUN_TIMEOUT_S)
    assert run.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (out / LOCK).is_file()  # the file stays; the lock died with its holder
    resumed = run_cli("train", path, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 5


def test_a_refused_run_leaves_no_folder_behind(tmp_path, quiet, small):
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(small(epochs=1), tmp_path / "new", resume=True, console=quiet())
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------- a new run never overwrites one


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small, quiet):
    """A 2-epoch run with both checkpoints kept; tests copy it before changing it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(small(epochs=2), out, console=quiet())
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def another_run(root):
    """A copy of this run's first checkpoint in another run's folder; its absolute path."""
    other = root.parent.parent / "other" / "checkpoints" / "epoch-0001"
    shutil.copytree(root / "epoch-0001", other)
    return other


LATEST_DAMAGE = {
    "deleted": lambda root: (root / "LATEST").unlink(),
    "dangling": lambda root: (root / "LATEST").write_text("epoch-0009\n"),
    "absolute path": lambda root: (root / "LATEST").write_text(str(another_run(root))),
    "binary garbage": lambda root: (root / "LATEST").write_bytes(bytes(range(128, 256))),
}


@pytest.mark.parametrize("damage", sorted(LATEST_DAMAGE))
def test_latest_is_only_a_hint(run_copy, capsys, damage, quiet, small, config_file):
    LATEST_DAMAGE[damage](run_copy / "checkpoints")
    before = sorted(p.name for p in checkpoint_folders(run_copy))
    with pytest.raises(TrainingError, match="already holds a run"):
        train(small(epochs=2), run_copy, console=quiet())
    assert sorted(p.name for p in checkpoint_folders(run_copy)) == before == ["epoch-0001", "epoch-0002"]
    # --resume takes the newest intact epoch folder, and says what was wrong with LATEST
    assert main(["train", str(config_file(run_copy.parent, epochs=3)), "--out", str(run_copy), "--resume"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "checkpoints/LATEST" in out and "the epoch folders were searched instead" in out
    assert "resuming" in out and "after epoch 2 (epoch-0002)" in out


def test_results_without_checkpoints_are_not_overwritten(run_copy, quiet, small):
    shutil.rmtree(run_copy / "checkpoints")
    metrics = (run_copy / "metrics.csv").read_bytes()
    with pytest.raises(TrainingError, match="already holds a run .*metrics.csv"):
        train(small(epochs=2), run_copy, console=quiet())
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(small(epochs=2), run_copy, resume=True, console=quiet())
    assert (run_copy / "metrics.csv").read_bytes() == metrics


# ------------------------------------------------------------------------------ checkpoint integrity


def flip_tensor_bytes(folder, n=64):
    """Change n bytes inside the tensor data of the weights file (past its JSON header)."""
    path = folder / WEIGHTS
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for i in range(header, header + n):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_flipped_bytes_fail_the_checksum_and_the_previous_checkpoint_stands_in(run_copy, capsys, config_file):
    newest = run_copy / "checkpoints" / "epoch-0002"
    flip_tensor_bytes(newest)
    with pytest.raises(TrainingError, match=f"{WEIGHTS} does not match its checksum"):
        read_checkpoint(newest)
    found = newest_intact_checkpoint(run_copy)
    assert found.folder.name == "epoch-0001" and found.state["epoch"] == 1
    assert main(["train", str(config_file(run_copy.parent, epochs=2)), "--out", str(run_copy), "--resume"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "epoch-0002" in out and "does not match its checksum" in out and "using epoch-0001" in out
    assert "after epoch 1 (epoch-0001)" in out
    read_checkpoint(newest)  # epoch 2 trained again, intact


def test_a_missing_manifest_is_damage_not_a_checkpoint_without_checks(run_copy, capsys, config_file):
    newest = run_copy / "checkpoints" / "epoch-0002"
    (newest / MANIFEST).unlink()
    flip_tensor_bytes(newest)  # would load silently if a missing manifest turned the checksum off
    with pytest.raises(TrainingError, match=f"{MANIFEST} is missing"):
        read_checkpoint(newest)
    assert main(["train", str(config_file(run_copy.parent, epochs=2)), "--out", str(run_copy), "--resume"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{MANIFEST} is missing" in out and "using epoch-0001" in out


def rewrite_state(folder, data: bytes):
    """Replace state.pt, with a manifest that vouches for it (a forgery that the checksum cannot catch)."""
    (folder / STATE).write_bytes(data)
    sums = json.loads((folder / MANIFEST).read_text())
    sums["sha256"][STATE] = hashlib.sha256(data).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(sums))


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


STATES = {
    "empty dict": (lambda: torch_bytes({}), "lacks epoch, optimizer"),
    "list": (lambda: torch_bytes([1, 2, 3]), "holds a list, not a run state"),
    "random bytes": (lambda: os.urandom(4096), "is not a readable run state"),
    "wrong types": (lambda: torch_bytes({"epoch": "2", "optimizer": {}, "scheduler": {}, "rng": {}, "history": [],
                                         "wall_s": 1.0, "config": {}}), "wrong type: epoch"),
    "incomplete metric rows": (lambda: torch_bytes({"epoch": 2, "optimizer": {}, "scheduler": {}, "rng": {},
                                                    "history": [{"epoch": 1}, {"epoch": 2}], "wall_s": 1.0,
                                                    "config": {}}),
                               "the metric row of epoch 1 lacks the number(s) lr, train_loss"),
}


@pytest.mark.parametrize("case", sorted(STATES))
def test_a_state_that_is_no_run_state_is_a_clear_error(run_copy, capsys, case, config_file):
    make, message = STATES[case]
    for folder in checkpoint_folders(run_copy):
        rewrite_state(folder, make())
    code = main(["train", str(config_file(run_copy.parent, epochs=3)), "--out", str(run_copy), "--resume"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err
    assert "no intact checkpoint" in err and message in err and f"epoch-0002: {STATE}" in err
    assert "weights_only" not in err


# ------------------------------------------------------------------------- leftovers and file modes


def test_leftovers_of_a_killed_write_are_removed_on_the_next_start(run_copy, capsys, config_file):
    # what a kill inside save_checkpoint and replace_atomically leaves behind
    torn = run_copy / "checkpoints" / ".tmp-abc123"
    torn.mkdir()
    (torn / WEIGHTS).write_bytes(b"half a file")
    (run_copy / ".tmp-metrics.csv.x1y2").write_text("epoch,")
    (run_copy / "checkpoints" / ".tmp-LATEST.z9").write_text("epo")
    assert main(["train", str(config_file(run_copy.parent, epochs=3)), "--out", str(run_copy), "--resume"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "removed what an interrupted run left" in out and "checkpoints/.tmp-abc123" in out
    assert not list(run_copy.rglob(".tmp-*"))


def test_results_and_checkpoints_honour_the_umask(tmp_path, quiet, small):
    old = os.umask(0o022)
    try:
        train(small(epochs=1), tmp_path / "run", console=quiet())
    finally:
        os.umask(old)
    out = tmp_path / "run"
    files = ["metrics.csv", "summary.json", "curves.png", "config.yaml", "checkpoints/LATEST",
             f"checkpoints/epoch-0001/{WEIGHTS}", f"checkpoints/epoch-0001/{STATE}", f"checkpoints/epoch-0001/{MANIFEST}"]
    modes = {name: stat.S_IMODE((out / name).stat().st_mode) for name in files}
    assert modes == {name: 0o644 for name in files}
    assert stat.S_IMODE((out / "checkpoints" / "epoch-0001").stat().st_mode) == 0o755


# --------------------------------------------------------------------------------------- --out


def test_out_is_checked_before_training(tmp_path, capsys, monkeypatch, config_file):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    config = config_file(tmp_path, epochs=1)
    unwritable = tmp_path / "locked"
    unwritable.mkdir(mode=0o500)
    # root writes anywhere it may: /proc takes no new folders from anyone
    cases = {"": '--out "" names no folder', str(a_file): "is a file, not a folder",
             str(tmp_path / ("x" * 300)): "File name too long",
             str(unwritable / "run") if os.geteuid() else "/proc/ipu-snn-run": "cannot write the run folder"}
    for out, message in cases.items():
        assert main(["train", str(config), "--out", out]) == 2, out
        err = " ".join(capsys.readouterr().err.split())
        assert message in err and "Traceback" not in err, err
    # ~ means the home folder, in --out as in the config's out_dir
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(config), "--out", "~/run"]) == 0
    assert (tmp_path / "home" / "run" / "summary.json").is_file() and not (tmp_path / "~").exists()
    assert main(["train", str(config), "out_dir=~/run2"]) == 0
    assert (tmp_path / "home" / "run2" / "summary.json").is_file()


def test_a_holder_caught_before_it_wrote_its_pid_is_still_named(tmp_path):
    # a second run can find the lock taken in the instant before its holder writes "pid N on HOST"
    lock = tmp_path / ".lock"
    lock.write_text("")
    writer = threading.Timer(0.1, lambda: lock.write_text("pid 4242 on somehost\n"))
    writer.start()
    try:
        assert lock_holder(lock) == "pid 4242 on somehost"
    finally:
        writer.join()
    lock.write_text("")
    assert lock_holder(lock, settle_s=0.05) == "another process (it has not written its pid yet)"
