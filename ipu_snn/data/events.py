"""``dataset: events``: a researcher's own HDF5 files in the SHD layout.

Channels and classes come from the config (``data.n_channels``, ``data.n_classes``) when given,
else from what the files store (root attributes ``n_channels`` / ``n_classes``, or the class names
in ``extra/keys``), else from the data (largest unit + 1, largest label + 1 over all the files).
Every source that is present must agree with the others, so a 64-channel, 10-class file never
loads as 700 channels and 20 classes, and a config that disagrees with a file is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .recordings import SpikeRecordings, per_sample, node, read_recordings


@dataclass(frozen=True)
class FileShape:
    """What one file says about channels and classes."""

    max_unit: int  # -1 for a file without events
    max_label: int
    stored_channels: int | None  # the n_channels attribute
    stored_classes: int | None  # the n_classes attribute, else the number of extra/keys


def files(cfg: DataConfig) -> dict[str, Path]:
    base = Path(cfg.path).expanduser() if cfg.path else Path()
    named = {"train": cfg.files.train, "test": cfg.files.test, "valid": cfg.files.valid}
    return {split: base / Path(name).expanduser() for split, name in named.items() if name is not None}


def scan(path: Path) -> FileShape:
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    return _scan(path, stamp)


@lru_cache(maxsize=16)
def _scan(path: Path, stamp: int | None) -> FileShape:
    # the stamp keys the cache to the file's version: input_shape and load_splits both ask, once each per run
    if stamp is None:
        read_recordings(path, 1, 2)  # raises the reader's DataError: missing, or not a file
    try:
        handle = h5py.File(path, "r")
    except OSError:
        read_recordings(path, 1, 2)  # raises the reader's DataError: not HDF5, unreadable
        raise
    with handle as f:
        units = per_sample(f, "spikes/units", path)
        labels = per_sample(f, "labels", path)
        attrs = dict(f.attrs)
        keys = node(f, "extra/keys", path)
        n_keys = len(keys) if isinstance(keys, h5py.Dataset) and keys.ndim == 1 else 0
    if labels.dtype.kind not in "iuf":
        raise DataError(f"{path}: labels are {labels.dtype} values; they must be class indices (whole numbers)")
    tops = []
    for i, u in enumerate(units):
        u = np.asarray(u)
        if u.ndim != 1 or u.dtype.kind not in "iuf":
            raise DataError(f"{path}: sample {i}: units must be a list of channel indices, got "
                            f"{f'dtype {u.dtype}' if u.ndim == 1 else f'shape {u.shape}'}")
        if u.size:
            if not np.isfinite(u).all():
                raise DataError(f"{path}: sample {i}: units must be whole numbers (channel indices); found NaN or "
                                "infinity")
            tops.append(u.max())
    labels = labels.astype(np.float64)  # whole or not, checked by the reader; the largest is all that counts here
    finite = labels[np.isfinite(labels)]
    stored_classes = _count_attribute(attrs, "n_classes", path)
    return FileShape(int(max(tops, default=-1)), int(finite.max(initial=-1)),
                     _count_attribute(attrs, "n_channels", path), stored_classes or n_keys or None)


def _count_attribute(attrs: dict, name: str, path: Path) -> int | None:
    """A root attribute that counts something (n_channels, n_classes): a positive whole number, or absent."""
    if name not in attrs:
        return None
    value = np.asarray(attrs[name])
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise DataError(f"{path}: the attribute {name} must be one whole number, got {attrs[name]!r:.80}")
    number = value.item()
    if not np.isfinite(number) or number != int(number) or number < 1:
        raise DataError(f"{path}: the attribute {name} must be a positive whole number, got {number!r}")
    return int(number)


def _agree(what: str, field: str, configured: int | None, stored: dict[Path, int | None], largest: dict[Path, int],
           ) -> int:
    """The one count every source allows, or a DataError naming the file that disagrees."""
    value, source = configured, f"data.{field}"
    for path, count in stored.items():
        if count is None:
            continue
        if value is None:
            value, source = count, f"{path} (stored)"
        elif count != value:
            raise DataError(f"{path}: stores {count} {what}, but {source} says {value}")
    inferred = max(largest.values()) + 1
    if value is None:
        return max(inferred, 1)
    for path, top in largest.items():
        if top >= value:
            name = "unit" if what == "channels" else "label"
            raise DataError(f"{path}: has {name} {top}, but {source} gives {value} {what} (0 to {value - 1})")
    return value


def shape(cfg: DataConfig) -> tuple[int, int]:
    """(channels, classes) of the event files, checked against each other and the config."""
    scans = {path: scan(path) for path in files(cfg).values()}
    channels = _agree("channels", "n_channels", cfg.n_channels, {p: s.stored_channels for p, s in scans.items()},
                      {p: s.max_unit for p, s in scans.items()})
    classes = _agree("classes", "n_classes", cfg.n_classes, {p: s.stored_classes for p, s in scans.items()},
                     {p: s.max_label for p, s in scans.items()})
    if classes < 2:
        raise DataError(f"{files(cfg)['train']}: the files hold only label 0; a classifier needs at least 2 classes "
                        "(set data.n_classes if the other classes are absent from these files)")
    return channels, classes


def read_splits(cfg: DataConfig) -> dict[str, SpikeRecordings]:
    n_channels, n_classes = shape(cfg)
    return {split: read_recordings(path, n_channels, n_classes) for split, path in files(cfg).items()}
