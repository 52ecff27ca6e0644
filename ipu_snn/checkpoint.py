"""Run checkpoints that survive a crash at any moment and prove they are intact.

Each checkpoint is a folder ``checkpoints/epoch-NNNN`` with the weights
(safetensors), the rest of the run state (optimizer, scheduler, RNG, epoch,
metric history) in a torch file, and ``manifest.json`` with the SHA-256 of
both. The folder is written under a temporary name, flushed to disk and renamed
into place, and a one-line ``LATEST`` file, replaced atomically, names the
newest one. A crash leaves either the old or the new checkpoint, never a torn
one; a file damaged later fails its checksum when read.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .errors import TrainingError
from .files import TEMP_PREFIX, honour_umask, replace_atomically, write_synced

WEIGHTS = "model.safetensors"
STATE = "state.pt"
MANIFEST = "manifest.json"
LATEST = "LATEST"
FOLDER = re.compile(r"epoch-(\d{4,})")

#: What a run state holds, and the type of each entry (both trainers write it).
STATE_FIELDS = {"epoch": int, "optimizer": dict, "scheduler": dict, "rng": dict, "history": list,
                "wall_s": (int, float), "config": dict}
#: What every row of a run state's metric history holds (numbers), which a resumed run's summary reads.
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_accuracy", "samples_per_s", "epoch_s")


def save_checkpoint(run_dir: Path, epoch: int, model: torch.nn.Module, state: dict, keep: int = 2) -> Path:
    """Write ``checkpoints/epoch-NNNN`` of ``run_dir`` (which must exist: a run folder deleted under a run
    is not made again), point ``LATEST`` at it and keep the newest ``keep`` checkpoints.

    A failed write (a full disk) removes its temporary folder and leaves the checkpoints as they were.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(exist_ok=True)
    final = root / f"epoch-{epoch:04d}"
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise TrainingError(odd_entry_message(final))
    weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files = {WEIGHTS: weights, STATE: buffer.getvalue()}
    manifest = {"sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
    try:
        honour_umask(tmp, directory=True)
        for name, data in files.items():
            write_synced(tmp / name, data)
        write_synced(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        if final.exists():  # a run that crashed after writing this epoch but before LATEST moved
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    point_latest(run_dir, final, keep)
    return final


def point_latest(run_dir: Path, newest: Path, keep: int) -> None:
    """Make ``LATEST`` name ``newest`` and delete the checkpoint folders older than the ``keep`` newest."""
    replace_atomically(Path(run_dir) / "checkpoints" / LATEST, (newest.name + "\n").encode())
    number = int(FOLDER.fullmatch(newest.name).group(1))
    older = [p for p in checkpoint_folders(run_dir) if int(FOLDER.fullmatch(p.name).group(1)) < number]
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """The run's ``epoch-NNNN`` folders, oldest first (intact or not); links and files are not among them
    (see ``odd_entries``)."""
    found = [p for p in _entries(run_dir) if FOLDER.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: int(FOLDER.fullmatch(p.name).group(1)))


def odd_entries(run_dir: Path) -> list[Path]:
    """Entries of ``checkpoints/`` named like a checkpoint folder that are not one (a file, a link): a run
    would write over them, and ipu_snn deletes nothing it did not write, so they are refused. Entries
    with other names are ignored."""
    return sorted(p for p in _entries(run_dir) if FOLDER.fullmatch(p.name) and (p.is_symlink() or not p.is_dir()))


def odd_entry_message(path: Path) -> str:
    kind = "a link" if path.is_symlink() else "not a folder"
    return (f"{path} is {kind}, not a checkpoint folder written by ipu_snn; move it out of {path.parent} "
            "(nothing there is deleted that ipu_snn did not write)")


def _entries(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    return list(root.iterdir()) if root.is_dir() else []


def read_checkpoint(folder: Path) -> tuple[dict, dict]:
    """The weights and the run state of a checkpoint folder, verified against its manifest.

    Any damage (a missing file, a checksum that does not match, a state that is
    not a run state) is a TrainingError that names the folder and the file.
    """
    folder = Path(folder)
    blobs = {}
    for name in (WEIGHTS, STATE):
        try:
            blobs[name] = (folder / name).read_bytes()
        except OSError as exc:
            raise TrainingError(f"checkpoint {folder}: cannot read {name} ({exc.strerror})") from None
    expected = _manifest(folder)
    for name, data in blobs.items():
        if hashlib.sha256(data).hexdigest() != expected.get(name):
            raise TrainingError(f"checkpoint {folder}: {name} does not match its checksum in {MANIFEST} "
                                "(the file was damaged after it was written)")
    try:
        weights = load_safetensors(blobs[WEIGHTS])
    except Exception:  # safetensors raises its own error types for every kind of damage
        raise TrainingError(f"checkpoint {folder}: {WEIGHTS} is not a readable safetensors file") from None
    try:
        state = torch.load(io.BytesIO(blobs[STATE]), weights_only=True, map_location="cpu")
    except Exception:  # torch's own message would suggest unsafe loading, which a user must never do
        raise TrainingError(f"checkpoint {folder}: {STATE} is not a readable run state (damaged, or not "
                            "written by ipu_snn)") from None
    check_state(state, folder)
    return weights, state


def _manifest(folder: Path) -> dict:
    """The checksums of a checkpoint: without them nothing proves the files intact, so a missing manifest
    is damage like any other."""
    path = folder / MANIFEST
    if not path.exists():
        raise TrainingError(f"checkpoint {folder}: {MANIFEST} is missing, so its files cannot be checked")
    try:
        sums = json.loads(path.read_bytes())["sha256"]
        if not isinstance(sums, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise TrainingError(f"checkpoint {folder}: {MANIFEST} is damaged") from None
    return sums


def check_state(state, folder: Path) -> None:
    """A TrainingError unless ``state`` has every entry a run state has, each of its type."""
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {folder}: {STATE} holds a {type(state).__name__}, not a run state")
    missing = [k for k in STATE_FIELDS if k not in state]
    if missing:
        raise TrainingError(f"checkpoint {folder}: {STATE} lacks {', '.join(missing)}; it is not a run state")
    wrong = [k for k, kind in STATE_FIELDS.items() if not isinstance(state[k], kind) or isinstance(state[k], bool)]
    if wrong:
        raise TrainingError(f"checkpoint {folder}: {STATE} has entries of the wrong type: {', '.join(wrong)}")
    if len(state["history"]) != state["epoch"] or not all(isinstance(r, dict) for r in state["history"]):
        raise TrainingError(f"checkpoint {folder}: {STATE} holds {len(state['history'])} metric rows for "
                            f"epoch {state['epoch']}")
    for number, row in enumerate(state["history"], 1):
        bad = [k for k in HISTORY_FIELDS if not isinstance(row.get(k), (int, float)) or isinstance(row.get(k), bool)]
        if bad or row["epoch"] != number:
            what = f"lacks the number(s) {', '.join(bad)}" if bad else f"is numbered {row['epoch']}"
            raise TrainingError(f"checkpoint {folder}: {STATE}: the metric row of epoch {number} {what}; it is "
                                "not a run state")


def load_weights(model: torch.nn.Module, weights: dict, folder: Path) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise TrainingError(f"checkpoint {folder} does not match the model of this config: {exc}") from None
