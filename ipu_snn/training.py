"""``train`` (the API's ``ipu_snn.train``): one run as the config says, through the driver of its device.

The loop itself (epochs, validation, checkpoints, resume) is ``ipu_snn.loop``;
the drivers are ``ipu_snn.torch_driver`` (CPU, CUDA, ipu-emulator; launched by
torchrun to scale) and ``ipu_snn.ipu.trainer`` (PopTorch on IPUs or the IPU
Model; launched by poprun to scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from rich.console import Console

from .config import Config, load_config, validate_config
from .devices import POPTORCH_DEVICES
from .loop import Driver, OnEpochEnd, run
from .run_folder import out_dir_path
from .torch_driver import TorchDriver


def make_driver(cfg: Config) -> Driver:
    """The driver of the config's device, joined to the run's processes."""
    if cfg.device in POPTORCH_DEVICES:
        from .ipu.trainer import PopTorchDriver  # PopTorch is imported only for an IPU run

        return PopTorchDriver(cfg)
    return TorchDriver(cfg)


def train(cfg: Config | Mapping | str | Path, out: str | Path, *, resume: bool = False,
          console: Console | None = None, on_epoch_end: OnEpochEnd | None = None) -> dict:
    """Train as the config says, on its device, writing a run folder.

    Every process of a multi-process run (torchrun, poprun) calls this; only the main one prints and writes.

    Parameters
    ----------
    cfg : Config, dict or path
        The run's config (`ipu_snn.config.load_config`), or a dict or YAML file validated into one.
    out : str or Path
        The run folder: ``metrics.csv``, ``summary.json``, ``curves.png``, ``config.yaml``, ``checkpoints/``
        (created; an existing run is continued only with ``resume``).
    resume : bool
        Continue from the folder's newest intact checkpoint.
    console : rich.console.Console or None
        Where progress goes (default: the terminal).
    on_epoch_end : callable or None
        Called after each epoch's checkpoint with (epoch, its row of metrics, the network).

    Returns
    -------
    dict
        The summary, also written to ``summary.json``.
    """
    if not isinstance(cfg, Config):
        cfg = validate_config(dict(cfg)) if isinstance(cfg, Mapping) else load_config(cfg)
    out_dir = out_dir_path(out)
    initial_weights = None
    if cfg.model.from_nir is not None:  # the graph gives the layers, the readout and their first weights
        from .interop.nir import resolve_from_nir

        cfg, initial_weights = resolve_from_nir(cfg)
    return run(make_driver(cfg), cfg, out_dir, resume=resume, console=console, on_epoch_end=on_epoch_end,
               initial_weights=initial_weights)

