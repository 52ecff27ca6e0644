"""SHD/SSC-layout HDF5 files: reading with validation, and writing.

The layout (Cramer et al. 2020): ``spikes/times`` (ragged, seconds),
``spikes/units`` (ragged channel index), ``labels`` and ``extra/keys`` (class
names). Files are read whole: SHD is a few hundred MB at most, and holding the
ragged arrays lets every epoch bin them anew with the config's T and pooling.
"""

from __future__ import annotations

import os
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


#: Spike times are seconds; one beyond this is a unit mistake (microseconds) or damage, never a recording.
MAX_SPIKE_TIME_S = 1e6


def read_recordings(path: str | Path, n_channels: int, n_classes: int) -> SpikeRecordings:
    path = Path(path)
    if not path.is_file():
        gz = path.with_name(path.name + ".gz")
        if gz.is_file():
            raise DataError(f"{path} not found, but {gz.name} is there: decompress it first (gunzip {gz})")
        raise DataError(f"data file not found: {path} (runs never download data; place the file there)")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: no permission to read the file")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    with handle as f:
        missing = [name for name in REQUIRED if name not in f]
        if missing:
            raise DataError(f"{path}: not an SHD/SSC-layout file; missing dataset(s) {', '.join(missing)}")
        times, units, labels = (per_sample(f, name, path) for name in REQUIRED)
        stored_keys = node(f, "extra/keys", path)
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in np.atleast_1d(stored_keys[()])] \
            if isinstance(stored_keys, h5py.Dataset) else []
    recordings = SpikeRecordings([np.asarray(t) for t in times], [np.asarray(u) for u in units], np.asarray(labels),
                                 n_channels, n_classes, keys)
    check_recordings(recordings, str(path))
    # kept as compact as the file stores them (SHD: 6 bytes an event, not 16): a dense recording is
    # mostly events, and binning reads them in float64 / int64 anyway
    unit_type = np.uint16 if n_channels <= np.iinfo(np.uint16).max else np.int64
    return SpikeRecordings([t if t.dtype in (np.float32, np.float64) else t.astype(np.float64)
                            for t in recordings.times],
                           [u.astype(unit_type, copy=False) for u in recordings.units],
                           recordings.labels.astype(np.int64), n_channels, n_classes, keys)


def node(f: h5py.File, name: str, path: Path):
    """The group or dataset at ``name``, None if there is none; a DataError naming it if it is a link that
    does not resolve (a dangling soft link, an external link to a missing file)."""
    if name not in f:
        return None
    try:
        return f[name]
    except (KeyError, OSError) as exc:  # h5py: the link is there, what it points to is not
        raise DataError(f"{path}: {name} is a link that does not resolve ({exc})") from None


def per_sample(f: h5py.File, name: str, path: Path) -> np.ndarray:
    """A dataset with one entry per sample, read whole; a DataError naming it if it is anything else."""
    node_ = node(f, name, path)
    if node_ is None:
        raise DataError(f"{path}: not an SHD/SSC-layout file; missing dataset {name}")
    if not isinstance(node_, h5py.Dataset):
        raise DataError(f"{path}: {name} is a group; the SHD/SSC layout has a dataset there")
    if node_.ndim != 1:
        what = "a scalar" if node_.ndim == 0 else f"of shape {node_.shape}"
        raise DataError(f"{path}: {name} is {what}; the SHD/SSC layout has one entry per sample there (1-D)")
    try:
        return node_[()]
    except (OSError, TypeError, ValueError) as exc:  # h5py's ways of saying the stored data cannot be read
        raise DataError(f"{path}: {name} cannot be read ({exc})") from None


def check_recordings(rec: SpikeRecordings, source: str) -> None:
    """Raise a DataError naming the source, the sample and the field of the first entry that breaks the
    layout: every reader's recordings pass here, so nothing is silently cast, cropped or wrapped later."""
    n = len(rec.labels)
    if n == 0:
        raise DataError(f"{source}: holds no samples")
    if rec.labels.ndim != 1:
        raise DataError(f"{source}: labels must be one-dimensional, got shape {rec.labels.shape}")
    if len(rec.times) != n or len(rec.units) != n:
        raise DataError(f"{source}: {len(rec.times)} spike-time lists, {len(rec.units)} unit lists "
                        f"and {n} labels; they must have one entry per sample")
    _check_whole(rec.labels, source, "labels", "class indices")
    events = 0
    for i, (t, u) in enumerate(zip(rec.times, rec.units)):
        for field, values in (("times", t), ("units", u)):
            if values.ndim != 1 or values.dtype.kind not in "iuf":
                got = f"dtype {values.dtype}" if values.ndim == 1 else f"shape {values.shape}"
                raise DataError(f"{source}: sample {i}: {field} must be a list of numbers, got {got}")
        if t.dtype.kind in "iu" and t.size:
            raise DataError(f"{source}: sample {i}: spike times are integers ({t.dtype}); they must be seconds as "
                            "floats (integers are usually milliseconds or microseconds: divide and store floats)")
        if t.shape != u.shape:
            raise DataError(f"{source}: sample {i} has {t.size} spike times but {u.size} units")
        if not t.size:
            continue
        events += t.size
        if not np.isfinite(t).all() or t.min() < 0:
            raise DataError(f"{source}: sample {i} has negative or non-finite spike times")
        if t.max() > MAX_SPIKE_TIME_S:
            j = int(np.argmax(t))
            raise DataError(f"{source}: sample {i}: times[{j}] = {t[j]:g} s, beyond {MAX_SPIKE_TIME_S:g} s; spike "
                            "times are seconds (convert microseconds), and no recording is that long")
        _check_whole(u, f"{source}: sample {i}", "units", "channel indices")
        if u.min() < 0 or u.max() >= rec.n_channels:
            raise DataError(f"{source}: sample {i} has unit {int(u.max() if u.max() >= rec.n_channels else u.min())} "
                            f"outside [0, {rec.n_channels})")
    if not events:
        raise DataError(f"{source}: none of its {n} samples holds a spike; a network cannot learn from silence")
    bad = np.flatnonzero((rec.labels < 0) | (rec.labels >= rec.n_classes))
    if bad.size:
        raise DataError(f"{source}: {bad.size} label(s) outside [0, {rec.n_classes}), "
                        f"first at sample {bad[0]} (label {rec.labels[bad[0]]})")


def _check_whole(values: np.ndarray, where: str, field: str, meaning: str) -> None:
    """Integers, or floats that are whole numbers: anything else would be truncated by a cast."""
    if values.dtype.kind in "iu":
        return
    if values.dtype.kind != "f":
        raise DataError(f"{where}: {field} are {values.dtype} values; they must be whole numbers ({meaning})")
    broken = np.flatnonzero(~np.isfinite(values) | (values != np.floor(values)))
    if broken.size:
        j = int(broken[0])
        sample = f", first at sample {j}" if field == "labels" else f" (entry {j})"
        raise DataError(f"{where}: {field} must be whole numbers ({meaning}); found {values[j]:g}{sample}")


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
