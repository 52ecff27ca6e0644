"""data.augment: time jitter, channel shift and event drop; seeded, new each epoch, training split only."""

import numpy as np
import pytest
import torch

from ipu_snn.config import AugmentConfig, DataConfig, validate_config
from ipu_snn.data import load_splits
from ipu_snn.data.augment import augment_events, generator
from ipu_snn.errors import ConfigError


def events(n=20000, channels=700, seed=0):
    rng = np.random.default_rng(seed)
    return np.sort(rng.uniform(0.1, 0.9, n)).astype(np.float32), rng.integers(0, channels, n).astype(np.uint16)


def test_event_drop_keeps_a_binomial_share_of_the_events_unchanged():
    t, u = events()
    t2, u2 = augment_events(t, u, 700, AugmentConfig(event_drop=0.3), generator(0, 1, 5))
    kept = len(t2) / len(t)
    assert abs(kept - 0.7) < 4 * np.sqrt(0.3 * 0.7 / len(t))  # 4 standard deviations
    pairs = set(zip(t.tolist(), u.tolist()))
    assert all(p in pairs for p in zip(t2.tolist(), u2.tolist()))


def test_channel_shift_moves_every_channel_together_and_drops_what_leaves():
    t, u = events()
    shifts = set()
    for epoch in range(30):
        t2, u2 = augment_events(t, u, 700, AugmentConfig(channel_shift=5), generator(0, epoch, 0))
        shift = int(u2[0]) - int(u[np.flatnonzero(t == t2[0])[0]])
        shifts.add(shift)
        inside = (u.astype(int) + shift >= 0) & (u.astype(int) + shift < 700)
        np.testing.assert_array_equal(t2, t[inside])
        np.testing.assert_array_equal(u2, u[inside].astype(int) + shift)
    assert shifts <= set(range(-5, 6)) and len(shifts) > 3


def test_time_jitter_has_the_configured_spread_and_never_goes_negative():
    t, u = events()
    t2, u2 = augment_events(t, u, 700, AugmentConfig(time_jitter=0.01), generator(0, 0, 0))
    np.testing.assert_array_equal(u2, u)
    assert abs(np.std(t2.astype(np.float64) - t) - 0.01) < 0.0005
    t3, _ = augment_events(np.zeros(1000, np.float32), np.zeros(1000, np.uint16), 700,
                           AugmentConfig(time_jitter=0.05), generator(0, 0, 0))
    assert t3.min() == 0.0 and (t3 > 0).mean() > 0.3


def test_augmentation_is_seeded_new_each_epoch_and_for_the_training_split_only(tmp_path):
    base = {"steps": 40, "max_time": 0.5, "val_split": 0.25, "cache_dir": str(tmp_path),
            "synthetic": {"n_train": 16, "n_test": 8, "n_classes": 4}}
    plain = load_splits(DataConfig(**base), seed=3)
    aug = {"augment": {"time_jitter": 0.01, "channel_shift": 3, "event_drop": 0.2}}
    a, b = (load_splits(DataConfig(**base, **aug), seed=3) for _ in range(2))
    a.train.set_epoch(1)
    b.train.set_epoch(1)
    frames = [a.train.as_dense()[i][0] for i in range(4)]
    assert all(torch.equal(x, b.train.as_dense()[i][0]) for i, x in enumerate(frames))  # seeded
    assert not all(torch.equal(x, plain.train.as_dense()[i][0]) for i, x in enumerate(frames))  # augmented
    b.train.set_epoch(2)
    assert not all(torch.equal(x, b.train.as_dense()[i][0]) for i, x in enumerate(frames))  # new each epoch
    for split in ("val", "test"):
        for i in range(len(getattr(plain, split))):
            assert torch.equal(getattr(a, split)[i][0], getattr(plain, split)[i][0])


def test_augment_settings_are_checked():
    with pytest.raises(ConfigError, match="data.augment.event_drop"):
        validate_config({"data": {"augment": {"event_drop": 1.0}}})
    with pytest.raises(ConfigError, match="data.augment.channel_shift"):
        validate_config({"data": {"augment": {"channel_shift": -1}}})
