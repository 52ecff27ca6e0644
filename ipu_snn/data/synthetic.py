"""A built-in SHD-format dataset: classes of spike "words" made of frequency sweeps.

Each class is a template of three sweeps, lines in (time, channel) space like
the formant glides of spoken digits. A sample draws spikes along its class's
sweeps and then applies what makes real recordings hard: a random speaking
rate (time warp) and onset, per-spike timing jitter, spike dropout and
background noise. Classes share channel ranges and time windows, so neither a
channel histogram nor a single time bin identifies them; a network has to
combine where and when.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..config import SyntheticConfig
from ..errors import DataError
from ..files import LockBusy, held_lock, honour_umask
from .recordings import SpikeRecordings, write_recordings

# Bump when the generator changes, so cached files made by an older one are not reused.
GENERATOR_VERSION = 2
SWEEPS_PER_CLASS = 3
SPIKES_PER_SWEEP = 120


def _templates(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """[classes, sweeps, 5]: onset, length (fractions of duration), start and end channel, band width.

    Classes come in pairs that use the same three sweeps in a different order,
    so their channel histograms match and only timing tells them apart.
    """
    c = cfg.n_channels
    n_sets = -(-cfg.n_classes // 2)
    start = rng.uniform(0.05 * c, 0.95 * c, (n_sets, SWEEPS_PER_CLASS))
    end = np.clip(start + rng.uniform(-0.35 * c, 0.35 * c, start.shape), 0, c - 1)
    band = rng.uniform(0.01 * c, 0.03 * c, start.shape)
    out = np.empty((cfg.n_classes, SWEEPS_PER_CLASS, 5))
    for k in range(cfg.n_classes):
        order = rng.permutation(SWEEPS_PER_CLASS)
        if k % 2:  # the pair's second class: a different order of the same sweeps
            while (order == prev).all():
                order = rng.permutation(SWEEPS_PER_CLASS)
        prev = order
        slot = np.arange(SWEEPS_PER_CLASS)
        onset = 0.05 + slot * 0.28 + rng.uniform(-0.03, 0.03, SWEEPS_PER_CLASS)
        length = rng.uniform(0.18, 0.26, SWEEPS_PER_CLASS)
        out[k] = np.stack([onset, length, start[k // 2, order], end[k // 2, order], band[k // 2, order]], axis=-1)
    return out


def _sample(rng: np.random.Generator, template: np.ndarray, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    warp = rng.uniform(0.85, 1.15)
    shift = rng.normal(0.0, 0.03)
    times, units = [], []
    for onset, length, start, end, band in template:
        s = rng.uniform(0.0, 1.0, rng.poisson(SPIKES_PER_SWEEP * (1.0 - cfg.dropout)))
        times.append(((onset + s * length) * warp + shift) * cfg.duration + rng.normal(0.0, cfg.jitter, s.size))
        units.append(start + s * (end - start) + rng.normal(0.0, band, s.size))
    n_noise = rng.poisson(cfg.noise_rate * cfg.n_channels * cfg.duration)
    times.append(rng.uniform(0.0, cfg.duration, n_noise))
    units.append(rng.uniform(0, cfg.n_channels, n_noise))
    t, u = np.concatenate(times), np.rint(np.concatenate(units))
    keep = (t >= 0) & (t < cfg.duration) & (u >= 0) & (u < cfg.n_channels)
    order = np.argsort(t[keep], kind="stable")
    return t[keep][order], u[keep][order].astype(np.int64)


def generate(cfg: SyntheticConfig) -> tuple[SpikeRecordings, SpikeRecordings]:
    """Train and test splits, fully determined by ``cfg`` (including its seed)."""
    rng = np.random.default_rng(cfg.seed)
    templates = _templates(rng, cfg)
    keys = [f"word-{k:02d}" for k in range(cfg.n_classes)]

    def split(n: int) -> SpikeRecordings:
        labels = np.arange(n) % cfg.n_classes  # balanced classes
        rng.shuffle(labels)
        events = [_sample(rng, templates[label], cfg) for label in labels]
        return SpikeRecordings([e[0] for e in events], [e[1] for e in events], labels.astype(np.int64),
                               cfg.n_channels, cfg.n_classes, keys)

    return split(cfg.n_train), split(cfg.n_test)


def default_cache_dir() -> Path:
    return Path(os.environ.get("IPU_SNN_CACHE", Path.home() / ".cache" / "ipu_snn"))


#: Generating a large set takes minutes at most; a lock held longer belongs to a stuck process.
GENERATE_WAIT_S = 600.0
LOCK = ".synthetic.lock"
TEMP_PREFIX = ".synthetic-"


def ensure_synthetic(cfg: SyntheticConfig, cache_dir: str | Path | None = None) -> Path:
    """Generate the dataset once into the cache and return its folder.

    The folder name hashes the parameters, and it appears in one rename, so a
    crash never leaves a half-written dataset behind. One process generates at a
    time (a lock in the cache that dies with its holder); it first removes what a
    generator killed midway left, which no live process can be using then.
    """
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    digest = hashlib.sha256(json.dumps([GENERATOR_VERSION, cfg.model_dump()], sort_keys=True).encode()).hexdigest()
    folder = root / f"synthetic-{digest[:16]}"
    if (folder / "synthetic_test.h5").is_file():
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        with held_lock(root / LOCK, wait_s=GENERATE_WAIT_S, on_wait=lambda holder: print(
                f"waiting for {holder}, which is generating the synthetic dataset in {root}", file=sys.stderr)):
            if not (folder / "synthetic_test.h5").is_file():  # else another process made it while we waited
                _generate_into(cfg, root, folder)
    except LockBusy as busy:
        raise DataError(f"waited {GENERATE_WAIT_S:g} s for {busy.holder} to finish generating the synthetic "
                        f"dataset in {root}; stop that process or set data.cache_dir elsewhere") from None
    except OSError as exc:
        raise DataError(f"cannot write the synthetic dataset cache in {root} ({exc.strerror}); "
                        "set data.cache_dir or $IPU_SNN_CACHE to a writable folder") from None
    return folder


def _generate_into(cfg: SyntheticConfig, root: Path, folder: Path) -> None:
    for leftover in root.glob(f"{TEMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)  # incomplete: written by a version without the rename
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
    try:
        honour_umask(tmp, directory=True)
        train, test = generate(cfg)
        write_recordings(tmp / "synthetic_train.h5", train)
        write_recordings(tmp / "synthetic_test.h5", test)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
