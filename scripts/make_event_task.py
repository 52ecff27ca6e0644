"""Write a small SHD-layout event task (train.h5, test.h5) for ``data.dataset: events``.

Each class is a template of bursts: short, dense volleys of spikes at a class-specific
(channel, time) spot. Classes come in pairs that fire the same bursts with their times
swapped, so counts per channel cannot tell a pair apart; a sample adds a random onset,
per-spike jitter, spike dropout and background noise on every channel. The task differs
from the built-in synthetic data (sweeps) in shape, so a result on both is not one result.

    python scripts/make_event_task.py --out /tmp/event_task
    python -m ipu_snn.cli train configs/tiny.yaml data.dataset=events data.path=/tmp/event_task \\
        data.files.train=train.h5 data.files.test=test.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ipu_snn.data.recordings import SpikeRecordings, write_recordings

BURSTS_PER_CLASS = 4
SPIKES_PER_BURST = 40
BURST_CHANNELS = 12  # standard deviation of a burst across channels
BURST_SECONDS = 0.02  # standard deviation of a burst in time


def templates(rng: np.random.Generator, n_classes: int, n_channels: int) -> np.ndarray:
    """[classes, bursts, 2]: channel and time (fraction of the duration) of each burst."""
    pairs = []
    for _ in range((n_classes + 1) // 2):
        channels = rng.uniform(0.05, 0.95, BURSTS_PER_CLASS) * n_channels
        times = rng.uniform(0.1, 0.8, BURSTS_PER_CLASS)
        pairs.append(np.stack([channels, times], 1))
        pairs.append(np.stack([channels, times[::-1]], 1))  # same bursts, times reversed: same histogram
    return np.stack(pairs[:n_classes])


def sample(rng: np.random.Generator, template: np.ndarray, n_channels: int, duration: float, jitter: float,
           dropout: float, noise_rate: float) -> tuple[np.ndarray, np.ndarray]:
    onset = rng.uniform(0.0, 0.1) * duration
    times, units = [], []
    for channel, when in template:
        n = rng.binomial(SPIKES_PER_BURST, 1.0 - dropout)
        units.append(rng.normal(channel, BURST_CHANNELS, n))
        times.append(onset + when * duration + rng.normal(0.0, BURST_SECONDS * duration, n) + rng.normal(0, jitter, n))
    n_noise = rng.poisson(noise_rate * duration * n_channels)
    units.append(rng.uniform(0, n_channels, n_noise))
    times.append(rng.uniform(0, duration, n_noise))
    t, u = np.concatenate(times), np.concatenate(units).astype(np.int64)
    keep = (t >= 0) & (t < duration) & (u >= 0) & (u < n_channels)
    order = np.argsort(t[keep], kind="stable")
    return t[keep][order].astype(np.float32), u[keep][order].astype(np.uint16)


def make(n: int, rng: np.random.Generator, table: np.ndarray, args) -> SpikeRecordings:
    labels = rng.integers(0, len(table), n)
    events = [sample(rng, table[y], args.channels, args.duration, args.jitter, args.dropout, args.noise_rate)
              for y in labels]
    return SpikeRecordings([t for t, _ in events], [u for _, u in events], labels, args.channels, len(table),
                           [f"class{i}" for i in range(len(table))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--channels", type=int, default=700)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--jitter", type=float, default=0.01)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--noise-rate", type=float, default=1.5, help="background spikes per channel per second")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    table = templates(rng, args.classes, args.channels)
    args.out.mkdir(parents=True, exist_ok=True)
    write_recordings(args.out / "train.h5", make(args.train, rng, table, args))
    write_recordings(args.out / "test.h5", make(args.test, rng, table, args))
    print(f"wrote {args.train} + {args.test} samples, {args.classes} classes, {args.channels} channels to {args.out}")


if __name__ == "__main__":
    main()
