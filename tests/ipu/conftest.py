"""Fixtures shared by the IPU tests: a tiny IPU-Model run."""

import copy

import pytest

from ipu_snn.config import validate_config

#: A run PopTorch's stand-in trains in seconds: two layers, two replicas, two device iterations.
TINY = {
    "model": {"layers": [{"type": "rlif", "size": 12}, {"type": "lif", "size": 10}], "readout": {"reduce": "mean"}},
    "data": {"dataset": "synthetic", "steps": 6, "channel_pooling": 35, "batch_size": 16, "val_split": 0.25,
             "synthetic": {"n_train": 64, "n_test": 20, "n_classes": 3}},
    "training": {"epochs": 2, "lr": 0.01, "grad_accumulation": 2, "grad_clip": 1.0, "seed": 3},
    "ipu": {"replication": 2, "device_iterations": 2},
    "device": "ipu-model",
}


@pytest.fixture(scope="session")
def tiny_raw() -> dict:
    """The tiny IPU run's raw config (a copy)."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def tiny():
    """``tiny(section={...})``: the tiny IPU run's config with sections changed."""
    def make(**sections):
        raw = copy.deepcopy(TINY)
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        return validate_config(raw)

    return make

