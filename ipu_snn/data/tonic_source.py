"""``dataset: tonic``: any Tonic dataset already on disk, as spike recordings.

Tonic (``pip install 'ipu_snn[tonic]'``) is imported only here and only when this dataset is
asked for. Runs never download: the dataset class is used through a subclass whose ``download``
raises a DataError, so a dataset Tonic does not find complete under ``data.root`` is an error.
Tonic gives each sample as a structured array with a ``t`` field in microseconds and ``x``
(and, for cameras, ``y`` and ``p``) fields on a ``sensor_size = (width, height, polarities)``;
each event becomes one channel of :mod:`ipu_snn.data.pixels` (spatially pooled by
``data.spatial_pooling``) at ``t`` seconds.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .pixels import pixel_channels, pixel_units
from .recordings import SpikeRecordings, check_recordings

MICROSECONDS = 1e-6  # Tonic's unit of the t field


def import_tonic():
    try:
        import tonic.datasets
    except ImportError as exc:
        raise ConfigError(f"data.dataset: tonic needs the tonic package ({exc}); install it with "
                          "pip install 'ipu_snn[tonic]'") from None
    return tonic


def sensor_of(sensor_size) -> tuple[int, int, int]:
    """Tonic's sensor_size as (width, height, polarities): audio sets give (channels, 1, 1)."""
    dims = tuple(int(d) for d in sensor_size) + (1, 1)
    return dims[0], dims[1], dims[2]


def events_to_sample(events: np.ndarray, sensor: tuple[int, int, int], pooling: int, source: str,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(times in seconds, flat channels) of one Tonic event array; a DataError names ``source`` for events
    off the sensor."""
    fields = events.dtype.names or ()
    if "t" not in fields or "x" not in fields:
        raise DataError(f"{source}: Tonic events need fields t and x, got {fields}")
    width, height, polarities = sensor
    x = np.asarray(events["x"], np.int64)
    y = np.asarray(events["y"], np.int64) if "y" in fields else np.zeros_like(x)
    # one polarity: ignore p (Tonic's audio sets write p = 1); two: ON is p > 0, whether p is 0/1, -1/1 or bool
    p = (np.asarray(events["p"]) > 0).astype(np.int64) if polarities == 2 and "p" in fields else np.zeros_like(x)
    if polarities > 2:
        raise DataError(f"{source}: sensor_size {sensor} has {polarities} polarities; ipu_snn reads 1 or 2")
    bad = np.flatnonzero((x < 0) | (x >= width) | (y < 0) | (y >= height))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{source}: event {i} at ({x[i]}, {y[i]}) lies outside the sensor {width}x{height}")
    times = np.asarray(events["t"], np.float64) * MICROSECONDS
    return times.astype(np.float32), pixel_units(x, y, p, sensor, pooling)


def expected_files(dataset) -> list[tuple[Path, bool]]:
    """The archive and the extracted folder a Tonic dataset looks for (its ``filename`` and ``folder_name``
    under ``location_on_system``), each with whether it is there."""
    location = Path(getattr(dataset, "location_on_system", "."))
    names = [getattr(dataset, attr, None) for attr in ("filename", "folder_name")]
    paths = [location / name for name in dict.fromkeys(n for n in names if isinstance(n, str) and n)]
    return [(path, path.exists()) for path in paths]


def _no_download(self):
    name = type(self).__name__
    expected = expected_files(self)
    listed = "; ".join(f"{path} ({'present' if there else 'missing'})" for path, there in expected)
    what = (f"it expects {listed}" + (" (the folder holding the archive's extracted files)"
                                       if any(p.suffix == "" for p, _ in expected) else "")
            if expected else f"nothing under {getattr(self, 'location_on_system', '?')} is what it expects")
    raise DataError(f"data.root: Tonic does not find {name} complete: {what}; runs never download. Download it "
                    f"once with Tonic itself (tonic.datasets.{name}(save_to=...)) and point data.root at that save_to")


def dataset_class(name: str):
    tonic = import_tonic()
    cls = getattr(tonic.datasets, name, None)
    if not isinstance(cls, type):
        known = ", ".join(sorted(n for n in dir(tonic.datasets) if not n.startswith("_") and n[0].isupper()))
        raise ConfigError(f"data.name: tonic.datasets has no dataset '{name}' (known: {known})")
    # same class name: Tonic finds its files under save_to/<class name>
    return type(cls.__name__, (cls,), {"download": _no_download})


def _split_kwargs(cls, split: str) -> dict | None:
    params = inspect.signature(cls.__init__).parameters
    if "train" in params:
        return {"train": split == "train"} if split in ("train", "test") else None
    if "split" in params:
        return {"split": split}
    raise ConfigError(f"data.name: Tonic's {cls.__name__} takes neither train= nor split=, so ipu_snn cannot "
                      "tell its training data from its test data")


def _open(cls, root: Path, split: str):
    kwargs = _split_kwargs(cls, split)
    if kwargs is None:
        return None
    try:
        return cls(str(root), **kwargs)
    except DataError:
        raise
    except (ValueError, KeyError, AssertionError) as exc:
        if split == "valid":  # a dataset without a validation split
            return None
        raise DataError(f"data.root: Tonic's {cls.__name__} cannot open its {split} split under {root}: {exc}") from None


def _classes(dataset, labels: np.ndarray) -> tuple[int, list[str]]:
    names = getattr(dataset, "classes", None)
    if names is not None and len(names):
        keys = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        return len(keys), keys
    count = int(labels.max(initial=0)) + 1
    return count, [str(k) for k in range(count)]


def to_recordings(dataset, pooling: int, source: str) -> SpikeRecordings:
    sensor = sensor_of(dataset.sensor_size)
    times, units, labels = [], [], []
    for i in range(len(dataset)):
        events, target = dataset[i]
        t, u = events_to_sample(events, sensor, pooling, f"{source} sample {i}")
        times.append(t)
        units.append(u)
        labels.append(int(np.asarray(target).item()))
    labels_arr = np.asarray(labels, np.int64)
    n_classes, keys = _classes(dataset, labels_arr)
    rec = SpikeRecordings(times, units, labels_arr, pixel_channels(sensor, pooling), n_classes, keys)
    check_recordings(rec, source)
    return rec


def _root(cfg: DataConfig) -> Path:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root: folder not found: {root}")
    return root


def read_splits(cfg: DataConfig) -> dict[str, SpikeRecordings]:
    cls, root = dataset_class(cfg.name), _root(cfg)
    out = {}
    for split in ("train", "test", "valid"):
        dataset = _open(cls, root, split)
        if dataset is not None:
            out[split] = to_recordings(dataset, cfg.spatial_pooling, f"tonic {cfg.name} ({split}) in {root}")
    return out


def shape(cfg: DataConfig) -> tuple[int, int]:
    """(channels, classes): from the class's sensor_size and the training split's class names (its labels
    when it names none)."""
    cls, root = dataset_class(cfg.name), _root(cfg)
    train = _open(cls, root, "train")
    channels = pixel_channels(sensor_of(cls.sensor_size), cfg.spatial_pooling)
    names = getattr(train, "classes", None)
    if names is not None and len(names):
        return channels, len(names)
    return channels, to_recordings(train, cfg.spatial_pooling, f"tonic {cfg.name} (train) in {root}").n_classes
