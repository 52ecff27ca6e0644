"""Run checkpoints that survive a crash at any moment.

Each checkpoint is a folder ``checkpoints/epoch-NNNN`` with the weights
(safetensors) and the rest of the run state (optimizer, scheduler, RNG, epoch,
metric history) in a torch file. The folder is written under a temporary name
and renamed into place, and a one-line ``LATEST`` file, replaced atomically,
names the newest complete folder. A crash leaves either the old or the new
checkpoint as LATEST, never a torn one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import TrainingError
from .files import replace_atomically

WEIGHTS = "model.safetensors"
STATE = "state.pt"


def save_checkpoint(run_dir: Path, epoch: int, model: torch.nn.Module, state: dict, keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    if final.exists():  # a run that crashed after writing this epoch but before LATEST moved
        shutil.rmtree(final)
    tmp.rename(final)
    replace_atomically(root / "LATEST", (final.name + "\n").encode())
    older = sorted(p for p in root.glob("epoch-*") if p.name != final.name)
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "LATEST"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    return folder if (folder / STATE).is_file() and (folder / WEIGHTS).is_file() else None


def read_checkpoint(folder: Path) -> tuple[dict, dict]:
    """The weights and the run state of a checkpoint folder."""
    try:
        weights = load_file(str(folder / WEIGHTS))
        state = torch.load(folder / STATE, weights_only=True, map_location="cpu")
    except Exception as exc:  # any corruption is reported the same way
        raise TrainingError(f"checkpoint {folder} cannot be read: {exc}") from None
    return weights, state


def load_weights(model: torch.nn.Module, weights: dict, folder: Path) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise TrainingError(f"checkpoint {folder} does not match the model of this config: {exc}") from None
