"""Who owns a run folder, and what it holds.

A run folder (``--out``) belongs to one training process at a time: the owner
holds an exclusive lock on ``.lock`` inside it (``fcntl.flock``, so the lock
dies with its process however it dies), and a second run into the same folder
is refused, naming the owner. Under the lock the owner removes what an
interrupted run left behind (temporary files and checkpoint folders), decides
whether it may start (a new run never overwrites an old one) and, to resume,
finds the newest intact checkpoint by scanning the epoch folders: ``LATEST`` is
only a hint, checked before it is believed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .checkpoint import FOLDER, LATEST, checkpoint_folders, odd_entries, odd_entry_message, read_checkpoint
from .errors import STORAGE_ERRNOS, StorageError, TrainingError
from .files import TEMP_PREFIX, LockBusy, held_lock, lock_holder, lock_is_held

LOCK = ".lock"
#: Files a run writes besides its checkpoints, each after the checkpoint of the epoch it describes.
RESULTS = ("metrics.csv", "summary.json", "curves.png")


def out_dir_path(out: str | Path) -> Path:
    """The run folder ``--out`` (or the config's ``out_dir``) names, with ``~`` expanded."""
    if not str(out).strip():
        raise TrainingError('--out "" names no folder; give the run folder, or leave --out out to use the '
                            "config's out_dir (else runs/<config name>)")
    path = Path(os.path.expanduser(str(out)))
    try:
        is_file = path.exists() and not path.is_dir()
    except OSError as exc:  # a name too long, a loop of links, ...
        raise TrainingError(f"--out {path}: {exc.strerror}") from None
    if is_file:
        raise TrainingError(f"--out {path} is a file, not a folder; choose a folder for the run")
    return path


def check_can_start(run_dir: Path, resume: bool, check_lock: bool = True) -> bool:
    """Refuse a run that would overwrite another or that has nothing to resume, and (``check_lock``)
    one into a folder another run is using. Only the process that will own the folder checks the
    lock: under torchrun or poprun, the others would see their own run's owner holding it.

    Every folder a run left is resumable or restartable: one with a checkpoint continues with
    ``--resume``; one without a checkpoint and without a finished summary (a run stopped in its first
    epoch) starts again, with or without ``--resume``. Returns whether ``--resume`` starts from epoch 0.
    """
    if check_lock and lock_is_held(run_dir / LOCK):
        raise _in_use(run_dir, lock_holder(run_dir / LOCK))
    odd = odd_entries(run_dir)
    if odd:
        raise TrainingError(odd_entry_message(odd[0]))
    checkpoints = checkpoint_folders(run_dir)  # intact or not: a new run must not delete them either
    results = [name for name in RESULTS if (run_dir / name).exists()]
    finished = finished_summary(run_dir)
    if not resume and (checkpoints or finished):
        what = f"checkpoint {checkpoints[-1].name}" if checkpoints else "a finished run: " + ", ".join(results)
        raise TrainingError(f"{run_dir} already holds a run ({what}); pass --resume to continue it, or choose "
                            "another --out")
    if resume and not checkpoints:
        started = results or (run_dir / "config.yaml").exists()
        if finished or not started:
            why = " (a finished run whose checkpoints were removed)" if finished else ""
            raise TrainingError(f"--resume: no checkpoint in {run_dir / 'checkpoints'} to continue from{why}")
        return True
    return False


def finished_summary(run_dir: Path) -> bool:
    """Whether ``summary.json`` is a finished run's (it has the test results); an unreadable one counts as
    finished, so that nothing overwrites what cannot be checked."""
    path = run_dir / "summary.json"
    if not path.exists():
        return False
    try:
        return "test_accuracy" in json.loads(path.read_bytes())
    except (OSError, ValueError, TypeError):
        return True


def _in_use(run_dir: Path, holder: str) -> TrainingError:
    return TrainingError(f"{run_dir} is in use by another ipu-snn run ({holder}); wait for it to finish, "
                         "or choose another --out")


@contextmanager
def claim_run_folder(run_dir: Path, resume: bool, say: Callable[[str], None]) -> Iterator[None]:
    """Own ``run_dir`` for the ``with`` block: create it, lock it, clear an interrupted run's
    leftovers, and check again, now that no other run can change it, that this run may start.

    A run that fails before writing anything leaves no folder it created behind.
    """
    created = not run_dir.exists()
    with ExitStack() as lock:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.enter_context(held_lock(run_dir / LOCK))
        except LockBusy as busy:
            raise _in_use(run_dir, busy.holder) from None
        except OSError as exc:
            raise TrainingError(f"cannot write the run folder {run_dir} ({exc.strerror}); choose a writable "
                                "--out") from None
        try:
            removed = remove_leftovers(run_dir)
            if removed:
                say(f"removed what an interrupted run left in {run_dir}: {', '.join(removed)}")
            check_can_start(run_dir, resume, check_lock=False)  # the lock is this process's now
            yield
        except BaseException:
            if created and _holds_only_the_lock(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def _holds_only_the_lock(run_dir: Path) -> bool:
    try:  # never raises: it runs while another error is on its way out (the folder may be gone)
        return [p.name for p in run_dir.iterdir()] == [LOCK]
    except OSError:
        return False


@contextmanager
def storage_faults(run_dir: Path) -> Iterator[None]:
    """Turn a storage fault writing the run folder into a StorageError naming the path: a full disk, a file
    over ``ulimit -f``, a read-only filesystem, or the folder deleted or renamed under the run. What was
    written before stays: the newest complete checkpoint is the one ``--resume`` continues from."""
    try:
        yield
    except OSError as exc:
        gone = not (run_dir / LOCK).exists()
        inside = exc.filename is not None and Path(os.path.abspath(exc.filename)).is_relative_to(
            os.path.abspath(run_dir))
        if exc.errno not in STORAGE_ERRNOS and not (exc.errno == errno.ENOENT and (gone or inside)):
            raise
        if gone:
            raise StorageError(f"the run folder {run_dir} has gone (deleted or renamed while the run wrote to it); "
                               "the run stopped") from None
        path = exc.filename or run_dir
        kept = checkpoint_folders(run_dir)
        keep = (f"the last checkpoint ({kept[-1].name}) is kept; free space or fix the folder, then continue with "
                "--resume") if kept else "no checkpoint was written yet"
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}; the run stopped and {keep}") from None


def remove_leftovers(run_dir: Path) -> list[str]:
    """Delete the temporary files and folders of writes a kill interrupted; returns their names.

    Only the folder's owner may call this: another run's temporaries would be live.
    """
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for path in sorted(folder.glob(f"{TEMP_PREFIX}*")) if folder.is_dir() else []:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(run_dir)))
    return removed


@dataclass(frozen=True)
class Found:
    """The newest intact checkpoint of a run, read and verified, and what was passed over to find it."""

    folder: Path
    weights: dict
    state: dict
    notes: list[str]


def newest_intact_checkpoint(run_dir: Path) -> Found:
    """Read the newest checkpoint that passes its checks; older ones stand in for damaged newer ones.

    The notes say what was skipped and why, for the caller to print. A TrainingError
    if the run has no intact checkpoint.
    """
    folders = checkpoint_folders(run_dir)[::-1]
    if not folders:
        raise TrainingError(f"{run_dir}: no checkpoint found (expected epoch folders in {run_dir / 'checkpoints'})")
    notes = _latest_notes(run_dir, folders[0].name)
    skipped = []
    for folder in folders:
        try:
            weights, state = read_checkpoint(folder)
        except TrainingError as exc:
            skipped.append(str(exc))
            continue
        if skipped:
            notes += [f"{problem}: skipped" for problem in skipped]
            notes.append(f"using {folder.name}, the newest intact checkpoint")
        return Found(folder, weights, state, notes)
    raise TrainingError(f"{run_dir}: no intact checkpoint: " + "; ".join(skipped))


def _latest_notes(run_dir: Path, newest: str) -> list[str]:
    """What is wrong with ``checkpoints/LATEST``, which should name ``newest``."""
    pointer = run_dir / "checkpoints" / LATEST
    try:
        name = pointer.read_bytes().decode("ascii").strip()
        if not FOLDER.fullmatch(name):
            problem = f"names {name[:80]!r}, which is not a checkpoint folder of this run"
        elif name != newest:
            problem = f"names {name}, but {newest} is newer"
        else:
            return []
    except FileNotFoundError:
        problem = "is missing"
    except (OSError, UnicodeDecodeError):
        problem = "is not readable text"
    return [f"{pointer} {problem}; the epoch folders were searched instead"]
