"""From a data config to train, validation and test datasets of dense spike frames."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig
from ..errors import DataError
from .binning import bin_events, pooled_channels
from .recordings import SpikeRecordings, read_recordings
from .synthetic import ensure_synthetic

# channels and classes of the public datasets (Cramer et al. 2020)
KNOWN = {"shd": (700, 20), "ssc": (700, 35)}


class SpikeFrames(Dataset):
    """Samples of a recording split, binned on access into ``[T, channels]`` float frames."""

    def __init__(self, rec: SpikeRecordings, indices: np.ndarray, cfg: DataConfig):
        self.rec, self.indices = rec, indices
        self.steps, self.dt = cfg.num_steps, cfg.step_seconds
        self.pooling, self.binary = cfg.channel_pooling, cfg.binary

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        frame = bin_events(self.rec.times[j], self.rec.units[j], steps=self.steps, dt=self.dt,
                           n_channels=self.rec.n_channels, pooling=self.pooling, binary=self.binary)
        return torch.from_numpy(frame), int(self.rec.labels[j])


@dataclass
class DataSplits:
    train: SpikeFrames
    val: SpikeFrames | None
    test: SpikeFrames
    n_inputs: int
    n_classes: int
    dt: float


def input_shape(cfg: DataConfig) -> tuple[int, int]:
    """(network inputs, classes) of a data config, known without reading any file."""
    channels, classes = (cfg.synthetic.n_channels, cfg.synthetic.n_classes) if cfg.dataset == "synthetic" \
        else KNOWN[cfg.dataset]
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


def load_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Read the files and split off validation data.

    SSC ships its own validation file; SHD and the synthetic set do not, so a
    seeded fraction ``val_split`` of the training file is held out.
    """
    files = _files(cfg)
    shape = (cfg.synthetic.n_channels, cfg.synthetic.n_classes) if cfg.dataset == "synthetic" else KNOWN[cfg.dataset]
    train = read_recordings(files["train"], *shape)
    test = read_recordings(files["test"], *shape)

    order = np.random.default_rng(seed).permutation(len(train))
    if "valid" in files:
        valid = read_recordings(files["valid"], *shape)
        val_set = SpikeFrames(valid, np.arange(len(valid)), cfg)
        train_set = SpikeFrames(train, np.arange(len(train)), cfg)
    else:
        n_val = int(round(cfg.val_split * len(train)))
        val_set = SpikeFrames(train, np.sort(order[:n_val]), cfg) if n_val else None
        train_set = SpikeFrames(train, np.sort(order[n_val:]), cfg)
        if not len(train_set):
            raise DataError(f"data.val_split: holding out {cfg.val_split} of the {len(train)} samples in "
                            f"{files['train']} leaves none to train on")
    test_set = SpikeFrames(test, np.arange(len(test)), cfg)
    return DataSplits(train_set, val_set, test_set, pooled_channels(shape[0], cfg.channel_pooling),
                      shape[1], cfg.step_seconds)


def make_loader(dataset: Dataset, batch_sampler: Sampler[list[int]]) -> DataLoader:
    # Workers stay at 0: binning is cheap next to BPTT, and one process keeps
    # the batch order a pure function of the sampler.
    return DataLoader(dataset, batch_sampler=batch_sampler)
