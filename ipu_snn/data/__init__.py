"""Spike datasets: SHD/SSC HDF5 files, the synthetic generator, binning and loaders."""

from .binning import bin_events, pooled_channels
from .loaders import DataSplits, SpikeFrames, input_shape, load_splits, make_loader
from .recordings import SpikeRecordings, check_recordings, read_recordings, write_recordings
from .synthetic import ensure_synthetic, generate

__all__ = [
    "DataSplits", "SpikeFrames", "SpikeRecordings", "bin_events", "check_recordings", "ensure_synthetic",
    "generate", "input_shape", "load_splits", "make_loader", "pooled_channels", "read_recordings", "write_recordings",
]
