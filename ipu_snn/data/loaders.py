"""From a data config to train, validation and test datasets of spike frames.

Binary inputs reach the model as packed bits (ipu_snn/core/bits.py): 1 bit per
channel and step instead of a 4-byte float, so a long batch stays small (at
T = 1600, 32 samples of 700 channels are 4.5 MiB instead of 143 MiB), and a
window of it is unpacked (or multiplied sparsely) only while that window runs.
Spike counts (``data.binary: false``) stay float frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig
from ..errors import DataError
from ..core.bits import pack_spikes
from .binning import bin_events, pooled_channels
from .recordings import SpikeRecordings, read_recordings
from .synthetic import ensure_synthetic

# channels and classes of the public datasets (Cramer et al. 2020)
KNOWN = {"shd": (700, 20), "ssc": (700, 35)}


class SpikeFrames(Dataset):
    """Samples of a recording split, binned on access into ``[T, channels]`` frames: packed bits
    (uint8 [T, ceil(channels / 8)]) for binary inputs, unless ``dense``; float32 otherwise."""

    def __init__(self, rec: SpikeRecordings, indices: np.ndarray, cfg: DataConfig, dense: bool = False):
        self.rec, self.indices = rec, indices
        self.steps, self.dt = cfg.num_steps, cfg.step_seconds
        self.pooling, self.binary = cfg.channel_pooling, cfg.binary
        self.dense = dense

    def as_dense(self) -> "SpikeFrames":
        """The same samples as float frames (for tracers that cannot unpack bits)."""
        view = SpikeFrames.__new__(SpikeFrames)
        view.__dict__.update(self.__dict__, dense=True)
        return view

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        frame = bin_events(self.rec.times[j], self.rec.units[j], steps=self.steps, dt=self.dt,
                           n_channels=self.rec.n_channels, pooling=self.pooling, binary=self.binary)
        frame = torch.from_numpy(frame)
        return (frame if self.dense or not self.binary else pack_spikes(frame)), int(self.rec.labels[j])


@dataclass
class DataSplits:
    train: SpikeFrames
    val: SpikeFrames | None
    test: SpikeFrames
    n_inputs: int
    n_classes: int
    dt: float


def _reader(cfg: DataConfig):
    """The module that reads this dataset (shape, read_splits), for the sources beyond SHD/SSC/synthetic."""
    if cfg.dataset == "events":
        from . import events as reader
    elif cfg.dataset == "nmnist":
        from . import nmnist as reader
    else:
        from . import tonic_source as reader  # imports Tonic only when asked to read
    return reader


def _shape(cfg: DataConfig) -> tuple[int, int]:
    """(channels before channel pooling, classes)."""
    if cfg.dataset == "synthetic":
        return cfg.synthetic.n_channels, cfg.synthetic.n_classes
    if cfg.dataset in KNOWN:
        return KNOWN[cfg.dataset]
    return _reader(cfg).shape(cfg)


def input_shape(cfg: DataConfig) -> tuple[int, int]:
    """(network inputs, classes) of a data config: from the config alone for the built-in and public
    datasets, from the files' headers or labels for events and tonic (errors name the file)."""
    channels, classes = _shape(cfg)
    return pooled_channels(channels, cfg.channel_pooling), classes


def _files(cfg: DataConfig) -> dict[str, Path]:
    if cfg.dataset == "synthetic":
        folder = ensure_synthetic(cfg.synthetic, cfg.cache_dir)
        return {"train": folder / "synthetic_train.h5", "test": folder / "synthetic_test.h5"}
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.path: folder not found: {folder}")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DataError(f"data.path: no permission to read the folder {folder}")
    names = {"train": "train", "test": "test"} | ({"valid": "valid"} if cfg.dataset == "ssc" else {})
    return {split: folder / f"{cfg.dataset}_{name}.h5" for split, name in names.items()}


def read_splits(cfg: DataConfig) -> dict[str, SpikeRecordings]:
    """The recordings of each split the dataset has: train, test, and valid where it ships one."""
    if cfg.dataset not in KNOWN and cfg.dataset != "synthetic":
        return _reader(cfg).read_splits(cfg)
    shape = _shape(cfg)
    return {split: read_recordings(path, *shape) for split, path in _files(cfg).items()}


def load_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Read the files and split off validation data.

    Datasets that ship a validation split (SSC, events with data.files.valid) use it; the others
    hold out a seeded fraction ``val_split`` of the training data.
    """
    recordings = read_splits(cfg)
    train, test = recordings["train"], recordings["test"]

    order = np.random.default_rng(seed).permutation(len(train))
    if "valid" in recordings:
        valid = recordings["valid"]
        val_set = SpikeFrames(valid, np.arange(len(valid)), cfg)
        train_set = SpikeFrames(train, np.arange(len(train)), cfg)
    else:
        n_val = int(round(cfg.val_split * len(train)))
        val_set = SpikeFrames(train, np.sort(order[:n_val]), cfg) if n_val else None
        train_set = SpikeFrames(train, np.sort(order[n_val:]), cfg)
        if not len(train_set):
            raise DataError(f"data.val_split: holding out {cfg.val_split} of the {len(train)} training samples "
                            "leaves none to train on")
    test_set = SpikeFrames(test, np.arange(len(test)), cfg)
    return DataSplits(train_set, val_set, test_set, pooled_channels(train.n_channels, cfg.channel_pooling),
                      train.n_classes, cfg.step_seconds)


def make_loader(dataset: Dataset, batch_sampler: Sampler[list[int]]) -> DataLoader:
    # Workers stay at 0: binning is cheap next to BPTT, and one process keeps
    # the batch order a pure function of the sampler.
    return DataLoader(dataset, batch_sampler=batch_sampler)
