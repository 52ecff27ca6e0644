"""Event augmentations (``data.augment``): time jitter, channel shift and event drop on one sample's events.

A pure function of the events, the settings and a generator; the training split draws the generator from
(training.seed, epoch, sample), so a run (and its resume) sees the same augmented samples, new each epoch.
"""

from __future__ import annotations

import numpy as np

from ..config import AugmentConfig


def active(aug: AugmentConfig) -> bool:
    return aug.time_jitter > 0 or aug.channel_shift > 0 or aug.event_drop > 0


def generator(seed: int, epoch: int, sample: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, sample])


def augment_events(times: np.ndarray, units: np.ndarray, n_channels: int, aug: AugmentConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(times, units) after dropping each event with probability ``event_drop``, moving every channel by one
    whole draw in [-channel_shift, channel_shift] (events shifted off the channels are dropped), and each
    time by a normal draw of std ``time_jitter`` seconds (clipped at 0), in that order."""
    keep = rng.random(times.shape[0]) >= aug.event_drop if aug.event_drop > 0 else np.ones(times.shape[0], bool)
    units = units.astype(np.int64)
    if aug.channel_shift > 0:
        units = units + int(rng.integers(-aug.channel_shift, aug.channel_shift + 1))
        keep &= (units >= 0) & (units < n_channels)
    times, units = times[keep], units[keep]
    if aug.time_jitter > 0:
        times = np.maximum(times + rng.normal(0.0, aug.time_jitter, times.shape[0]), 0.0).astype(times.dtype)
    return times, units
