"""A run stopped at every file-write boundary of its first epoch, by a kill or by a storage fault, leaves a
folder that the next command accepts: ``--resume`` continues it, or a fresh run (with or without
``--resume``) starts it again. Storage faults are user errors (exit 2) naming the path, and the last
checkpoint stays usable. Faults are injected at each write instead of racing signals against the run."""

import errno
import os
import shutil

import pytest
import yaml
from rich.console import Console

from ipu_snn import loop
from ipu_snn import training as train_module
from ipu_snn.checkpoint import checkpoint_folders, read_checkpoint, save_checkpoint
from ipu_snn.cli import main
from ipu_snn.config import validate_config
from ipu_snn.errors import StorageError, TrainingError
from ipu_snn.run_folder import claim_run_folder
from ipu_snn.training import train

TINY = {
    "model": {"layers": [{"type": "lif", "size": 8, "tau": 0.1}], "fused": False},
    "data": {"steps": 8, "channel_pooling": 70, "batch_size": 16, "val_split": 0.25,
             "synthetic": {"n_train": 32, "n_test": 16, "n_classes": 2}},
    "training": {"epochs": 1, "lr": 0.01, "seed": 1},
    "bptt": {"schedule": "store_all", "window": 8},
}


def tiny(epochs=1):
    return validate_config({**TINY, "training": {**TINY["training"], "epochs": epochs}})


def quiet():
    return Console(quiet=True)


class Killed(BaseException):
    """Stands in for SIGKILL at a write boundary (not an Exception: nothing in ipu_snn catches it)."""


class Faults:
    """Counts the durable steps of every write into ``root`` (fsync, rename, replace) and fails the one
    numbered ``at`` before it happens."""

    def __init__(self, monkeypatch, root, at=None, error=None):
        self.root, self.at, self.error, self.seen = str(root), at, error, []
        for name in ("fsync", "replace", "rename"):
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name, real):
        def op(*args, **kwargs):
            path = str(args[1]) if name != "fsync" else os.readlink(f"/proc/self/fd/{args[0]}")
            if path.startswith(self.root + "/"):
                self.seen.append(f"{name} {path}")
                if len(self.seen) - 1 == self.at:
                    raise self.error()
            return real(*args, **kwargs)
        return op


def boundaries(tmp_path, monkeypatch):
    with monkeypatch.context() as mp:
        faults = Faults(mp, tmp_path / "count")
        train(tiny(), tmp_path / "count", console=quiet())
    return faults.seen


def test_epoch_one_has_the_write_boundaries_expected(tmp_path, monkeypatch):
    seen = boundaries(tmp_path, monkeypatch)
    written = [s.rsplit("/", 1)[-1] for s in seen if not s.startswith("fsync")]
    # the checkpoint first, then the results that describe it, then the activity plots of the last checkpoint
    assert written == ["config.yaml", "epoch-0001", "LATEST", "metrics.csv", "summary.json", "curves.png",
                       "summary.json", "spikes.png", "rates.png"]


def next_commands_work(run, tmp_path):
    """The fresh command and the --resume command, each on a copy of the stopped run's folder."""
    intact = checkpoint_folders(run)
    for resume in (False, True):
        copy = tmp_path / f"next-{resume}"
        shutil.rmtree(copy, ignore_errors=True)
        if run.exists():
            shutil.copytree(run, copy)
        if intact and not resume:  # a checkpoint: the fresh run must not overwrite it, and says how to go on
            with pytest.raises(TrainingError, match="already holds a run .*pass --resume"):
                train(tiny(), copy, console=quiet())
            continue
        if not run.exists() and resume:  # nothing was left: the same as a folder never written
            with pytest.raises(TrainingError, match="no checkpoint"):
                train(tiny(), copy, resume=True, console=quiet())
            continue
        summary = train(tiny(), copy, resume=resume, console=quiet())
        assert summary["epochs"] == 1 and "test_accuracy" in summary
        assert [p.name for p in checkpoint_folders(copy)] == ["epoch-0001"]


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None


def test_a_run_stopped_at_any_write_of_epoch_one_leaves_a_usable_folder(tmp_path, monkeypatch):
    """At each boundary: a kill, then both next commands; a full disk, which must be exit 2 naming the
    path and leave the folder as the kill did (so the next commands work there too)."""
    n = len(boundaries(tmp_path, monkeypatch))
    for at in range(n):
        left = {}
        for fault, error in (("kill", Killed), ("ENOSPC", lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))):
            run = tmp_path / f"{fault}-{at}"
            with monkeypatch.context() as mp:
                Faults(mp, run, at, error)
                with pytest.raises(Killed if fault == "kill" else StorageError) as stopped:
                    train(tiny(), run, console=quiet())
            left[fault] = listing(run)
            for folder in checkpoint_folders(run):  # whatever was kept is whole
                read_checkpoint(folder)
        message = str(stopped.value)
        assert "No space left on device" in message and str(run) in message, message
        assert left["ENOSPC"] == left["kill"], at
        next_commands_work(tmp_path / f"kill-{at}", tmp_path)


# -------------------------------------------------------------------------------- storage faults


def write_config(tmp_path, epochs=2):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "training": {**TINY["training"], "epochs": epochs}}))
    return path


@pytest.mark.parametrize("code", ["ENOSPC", "EFBIG", "EROFS", "EDQUOT"])
def test_storage_faults_in_epoch_two_exit_2_naming_the_path_and_keep_epoch_one(tmp_path, monkeypatch, capsys, code):
    run = tmp_path / "run"

    def fsync(fd):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    def fail_from_epoch_two(epoch, row, network):  # runs after epoch 1's checkpoint and results
        monkeypatch.setattr(os, "fsync", fsync)

    monkeypatch.setattr(train_module, "run", _with_epoch_hook(loop.run, fail_from_epoch_two))
    assert main(["train", str(write_config(tmp_path)), "--out", str(run)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert os.strerror(getattr(errno, code)) in err and str(run) in err and "epoch-0001" in err, err
    assert "Traceback" not in err and err.count("error:") == 1
    monkeypatch.undo()
    read_checkpoint(checkpoint_folders(run)[-1])
    assert [p.name for p in checkpoint_folders(run)] == ["epoch-0001"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]  # no half checkpoint
    assert train(tiny(epochs=2), run, resume=True, console=quiet())["epochs"] == 2


def _with_epoch_hook(run, hook):
    def hooked(*args, **kwargs):
        return run(*args, **{**kwargs, "on_epoch_end": hook})
    return hooked


@pytest.mark.parametrize("how", ["deleted", "renamed"])
def test_a_run_folder_that_goes_away_is_exit_2_naming_it(tmp_path, monkeypatch, capsys, how):
    run = tmp_path / "run"

    def remove(epoch, row, network):
        if how == "deleted":
            shutil.rmtree(run)
        else:
            run.rename(tmp_path / "moved")

    monkeypatch.setattr(train_module, "run", _with_epoch_hook(loop.run, remove))
    assert main(["train", str(write_config(tmp_path)), "--out", str(run)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the run folder {run} has gone" in err and "Traceback" not in err, err
    assert not run.exists()  # not made again behind the user's back


def test_cleanup_never_hides_the_original_error(tmp_path):
    run = tmp_path / "new"

    class Original(Exception):
        pass

    with pytest.raises(Original):
        with claim_run_folder(run, resume=False, say=print):
            shutil.rmtree(run)  # the cleanup's listing of the folder would fail
            raise Original


def test_export_into_a_read_only_run_folder_is_exit_2(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nir")
    run = tmp_path / "run"
    train(tiny(), run, console=quiet())
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # what a read-only filesystem answers to a new file
        if str(path).startswith(str(run)) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["export", str(run), "--keep-subtract-reset"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Read-only file system" in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------------- checkpoint edge cases


def test_a_file_named_like_a_checkpoint_is_refused_not_deleted(tmp_path):
    run = tmp_path / "run"
    train(tiny(), run, console=quiet())
    odd = run / "checkpoints" / "epoch-0002"
    odd.write_text("mine")
    with pytest.raises(TrainingError, match="epoch-0002 is not a folder.*move it out"):
        train(tiny(epochs=3), run, resume=True, console=quiet())
    assert odd.read_text() == "mine"
    with pytest.raises(TrainingError, match="epoch-0002 is not a folder"):
        save_checkpoint(run, 2, _linear(), {})
    odd.unlink()
    (run / "checkpoints" / "notes.txt").write_text("other names are left alone")
    assert train(tiny(epochs=2), run, resume=True, console=quiet())["epochs"] == 2
    assert (run / "checkpoints" / "notes.txt").exists()


def _linear():
    import torch

    return torch.nn.Linear(1, 1)


def test_a_resume_with_no_epochs_left_refreshes_latest_and_trims(tmp_path):
    run = tmp_path / "run"
    train(tiny(epochs=3), run, console=quiet())  # keeps epoch-0002 and epoch-0003
    shutil.copytree(run / "checkpoints" / "epoch-0003", run / "checkpoints" / "epoch-0001")  # an old one left
    (run / "checkpoints" / "LATEST").write_text("epoch-0001\n")  # stale
    assert train(tiny(epochs=3), run, resume=True, console=quiet())["epochs"] == 3
    assert (run / "checkpoints" / "LATEST").read_text() == "epoch-0003\n"
    assert [p.name for p in checkpoint_folders(run)] == ["epoch-0002", "epoch-0003"]


def test_results_of_an_unfinished_run_without_a_checkpoint_restart(tmp_path, capsys):
    """The issue's repro: a run killed after writing its results but before its first checkpoint (the
    order of older versions) left a folder that neither a fresh run nor --resume accepted."""
    for resume in (False, True):
        run = tmp_path / f"run-{resume}"
        run.mkdir()
        (run / "metrics.csv").write_text("epoch,train_loss\n1,0.7\n")
        (run / "summary.json").write_text('{"epochs": 1, "train_loss": 0.7}')  # no test results: unfinished
        (run / "curves.png").write_bytes(b"\x89PNG")
        assert train(tiny(), run, resume=resume, console=Console(record=True)) is not None
        assert [p.name for p in checkpoint_folders(run)] == ["epoch-0001"]
