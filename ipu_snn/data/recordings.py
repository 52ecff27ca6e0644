"""SHD/SSC-layout HDF5 files: reading with validation, and writing.

The layout (Cramer et al. 2020): ``spikes/times`` (ragged, seconds),
``spikes/units`` (ragged channel index), ``labels`` and ``extra/keys`` (class
names). Files are read whole: SHD is a few hundred MB at most, and holding the
ragged arrays lets every epoch bin them anew with the config's T and pooling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError

REQUIRED = ("spikes/times", "spikes/units", "labels")


@dataclass
class SpikeRecordings:
    """One split of a spike dataset: ragged events per sample, and labels."""

    times: list[np.ndarray]  # float seconds per sample
    units: list[np.ndarray]  # int channel per event
    labels: np.ndarray  # int64 [N]
    n_channels: int
    n_classes: int
    keys: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def read_recordings(path: str | Path, n_channels: int, n_classes: int) -> SpikeRecordings:
    path = Path(path)
    if not path.is_file():
        gz = path.with_name(path.name + ".gz")
        if gz.is_file():
            raise DataError(f"{path} not found, but {gz.name} is there: decompress it first (gunzip {gz})")
        raise DataError(f"data file not found: {path} (runs never download data; place the file there)")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    with handle as f:
        missing = [name for name in REQUIRED if name not in f]
        if missing:
            raise DataError(f"{path}: not an SHD/SSC-layout file; missing dataset(s) {', '.join(missing)}")
        times = [np.asarray(t, dtype=np.float64) for t in f["spikes/times"][()]]
        units = [np.asarray(u, dtype=np.int64) for u in f["spikes/units"][()]]
        labels = np.asarray(f["labels"][()], dtype=np.int64)
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in f["extra/keys"][()]] if "extra/keys" in f else []
    recordings = SpikeRecordings(times, units, labels, n_channels, n_classes, keys)
    check_recordings(recordings, str(path))
    return recordings


def check_recordings(rec: SpikeRecordings, source: str) -> None:
    """Raise a DataError naming the first sample that breaks the layout."""
    n = len(rec.labels)
    if rec.labels.ndim != 1:
        raise DataError(f"{source}: labels must be one-dimensional, got shape {rec.labels.shape}")
    if len(rec.times) != n or len(rec.units) != n:
        raise DataError(f"{source}: {len(rec.times)} spike-time lists, {len(rec.units)} unit lists "
                        f"and {n} labels; they must have one entry per sample")
    for i, (t, u) in enumerate(zip(rec.times, rec.units)):
        if t.shape != u.shape:
            raise DataError(f"{source}: sample {i} has {t.size} spike times but {u.size} units")
        if t.size and (not np.isfinite(t).all() or t.min() < 0):
            raise DataError(f"{source}: sample {i} has negative or non-finite spike times")
        if u.size and (u.min() < 0 or u.max() >= rec.n_channels):
            raise DataError(f"{source}: sample {i} has unit {int(u.max() if u.max() >= rec.n_channels else u.min())} "
                            f"outside [0, {rec.n_channels})")
    bad = np.flatnonzero((rec.labels < 0) | (rec.labels >= rec.n_classes))
    if bad.size:
        raise DataError(f"{source}: {bad.size} label(s) outside [0, {rec.n_classes}), "
                        f"first at sample {bad[0]} (label {rec.labels[bad[0]]})")


def write_recordings(path: str | Path, rec: SpikeRecordings) -> None:
    """Write in the SHD layout, so the synthetic data goes through the real reader."""
    path = Path(path)
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (len(rec),), dtype=h5py.vlen_dtype(np.float32))
        units = f.create_dataset("spikes/units", (len(rec),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (t, u) in enumerate(zip(rec.times, rec.units)):
            times[i] = np.asarray(t, dtype=np.float32)
            units[i] = np.asarray(u, dtype=np.uint16)
        f.create_dataset("labels", data=np.asarray(rec.labels, dtype=np.uint16))
        f.create_dataset("extra/keys", data=np.array([k.encode() for k in rec.keys], dtype="S"))
