"""Camera events (x, y, polarity) to flat channel indices, with spatial pooling.

A channel is one pooled pixel of one polarity: ``unit = (p * H' + y // k) * W' + x // k`` with
``W' = ceil(W / k)``, ``H' = ceil(H / k)``, so all ON events come before all OFF events and a row
of pixels is contiguous. Pooling k x k blocks sums their events into one channel (clipped to 1 by
``data.binary``), the 2-D counterpart of ``data.channel_pooling``.
"""

from __future__ import annotations

import numpy as np

from .binning import pooled_channels


def pixel_channels(sensor: tuple[int, int, int], pooling: int = 1) -> int:
    width, height, polarities = sensor
    return pooled_channels(width, pooling) * pooled_channels(height, pooling) * polarities


def pixel_units(x: np.ndarray, y: np.ndarray, p: np.ndarray, sensor: tuple[int, int, int],
                pooling: int = 1) -> np.ndarray:
    """Flat channel per event on a ``sensor = (width, height, polarities)``; coordinates must already lie
    on the sensor (the readers check)."""
    width, height, polarities = sensor
    w, h = pooled_channels(width, pooling), pooled_channels(height, pooling)
    units = (np.asarray(p, np.int64) * h + np.asarray(y, np.int64) // pooling) * w + np.asarray(x, np.int64) // pooling
    # uint16 keeps a large event set (N-MNIST: about 250 million events) at 6 bytes per event with float32 times
    return units.astype(np.uint16 if w * h * polarities <= 1 << 16 else np.int64)
