"""``dataset: nmnist``: the original N-MNIST binary event files (Orchard et al. 2015).

``data.path`` holds the unpacked archives: ``Train/<digit>/<id>.bin`` and ``Test/<digit>/<id>.bin``.
Each event is 40 bits in 5 bytes: x (byte 0), y (byte 1), polarity (bit 7 of byte 2) and a 23-bit
timestamp in microseconds (the low 7 bits of byte 2, then bytes 3 and 4, big-endian). The layout
is the one Tonic's reader decodes (``tonic.io.read_mnist_file``, neuromorphs/tonic, adapted from
gorchard/event-Python), including its treatment of ``y == 240`` as a timestamp-overflow marker
that adds 2^13 us to every later event rather than an event.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .pixels import pixel_channels, pixel_units
from .recordings import SpikeRecordings, check_recordings

SENSOR = (34, 34, 2)  # width, height, polarities
CLASSES = [str(digit) for digit in range(10)]
SPLITS = {"train": "Train", "test": "Test"}
_OVERFLOW_Y = 240
_OVERFLOW_US = 1 << 13


def decode_events(raw: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(timestamps in us, x, y, polarity) of the bytes of one file; a DataError names ``source`` if they
    cannot be N-MNIST events."""
    if raw.size % 5:
        raise DataError(f"{source}: {raw.size} bytes is not a whole number of 5-byte N-MNIST events "
                        "(truncated or not an N-MNIST file)")
    b = raw.reshape(-1, 5).astype(np.int64)
    x, y = b[:, 0], b[:, 1]
    p = b[:, 2] >> 7
    t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    overflow = y == _OVERFLOW_Y
    if overflow.any():
        t = t + _OVERFLOW_US * np.cumsum(overflow)
        keep = ~overflow
        x, y, p, t = x[keep], y[keep], p[keep], t[keep]
    width, height, _ = SENSOR
    bad = np.flatnonzero((x >= width) | (y >= height))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{source}: event {i} lies at pixel ({x[i]}, {y[i]}), outside the {width}x{height} "
                        "N-MNIST sensor (a corrupt file, or not N-MNIST)")
    return t, x, y, p


def read_events_file(path: Path, pooling: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(times in seconds as float32, flat channel per event) of one ``.bin`` file."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})") from None
    t, x, y, p = decode_events(raw, str(path))
    return (t * 1e-6).astype(np.float32), pixel_units(x, y, p, SENSOR, pooling)


def read_split(folder: Path, pooling: int = 1) -> SpikeRecordings:
    """Every ``<digit>/<id>.bin`` under ``folder``, in a fixed order (digit, then file name)."""
    if not folder.is_dir():
        raise DataError(f"data.path: no {folder.name}/ folder at {folder} (N-MNIST unpacks into Train/ and Test/, "
                        "each with one folder per digit)")
    times, units, labels = [], [], []
    for label, digit in enumerate(CLASSES):
        for path in sorted((folder / digit).glob("*.bin")):
            t, u = read_events_file(path, pooling)
            times.append(t)
            units.append(u)
            labels.append(label)
    if not labels:
        raise DataError(f"{folder}: no N-MNIST files (expected {folder}/<digit>/<id>.bin for digits 0-9)")
    rec = SpikeRecordings(times, units, np.asarray(labels, np.int64), channels(pooling), len(CLASSES), CLASSES)
    check_recordings(rec, str(folder))
    return rec


def channels(pooling: int = 1) -> int:
    return pixel_channels(SENSOR, pooling)


def read_splits(cfg: DataConfig) -> dict[str, SpikeRecordings]:
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path: folder not found: {root}")
    return {split: read_split(root / name, cfg.spatial_pooling) for split, name in SPLITS.items()}


def shape(cfg: DataConfig) -> tuple[int, int]:
    return channels(cfg.spatial_pooling), len(CLASSES)
