"""Ragged spike events to dense ``[T, channels]`` frames."""

from __future__ import annotations

import numpy as np


def pooled_channels(n_channels: int, pooling: int) -> int:
    return -(-n_channels // pooling)


def bin_events(times: np.ndarray, units: np.ndarray, *, steps: int, dt: float, n_channels: int,
               pooling: int = 1, binary: bool = True) -> np.ndarray:
    """Count events per (step, pooled channel); later events are cropped, short samples zero-padded.

    ``binary`` clips counts to 1, which keeps inputs spike-like after pooling.
    """
    width = pooled_channels(n_channels, pooling)
    # cropped while still float: a time far past the window would overflow the integer step index
    scaled = np.floor(np.asarray(times, dtype=np.float64) / dt)
    keep = scaled < steps
    flat = scaled[keep].astype(np.int64) * width + np.asarray(units)[keep].astype(np.int64) // pooling
    frame = np.bincount(flat, minlength=steps * width).astype(np.float32).reshape(steps, width)
    if binary:
        np.minimum(frame, 1.0, out=frame)
    return frame
