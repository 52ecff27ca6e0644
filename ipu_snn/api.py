"""The Python API a notebook uses (docs/python_api.md): a config, its network, its data, its objective, training.

Everything here composes what ``ipu-snn train`` runs: the network a config
builds runs its windows under the planner's BPTT schedule with the configured
sparse products, in a loop of one's own as in the project's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import Tensor

from .calibration import crossovers
from .config import Config, apply_override, load_config as _load_yaml, validate_config
from .data import DataSplits, input_shape, load_splits, make_loader
from .devices import device_spec, resolve_device
from .distributed import DistContext, GlobalBatchSampler
from .evaluate import evaluate_run
from .losses import Objective
from .losses import make_objective as _make_objective
from .network import NetworkOutput, SpikingNetwork, build_network
from .planner import plan
from .taps import Recording, Taps
from .torch_driver import load_backends
from .training import train


def load_config(source: str | Path | Mapping | Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A validated config from a YAML file, a dict (as the YAML would read) or a Config.

    Parameters
    ----------
    source : path, dict or Config
        The config.
    overrides : list of str
        ``a.b=c`` settings applied on top, as on the command line.

    Returns
    -------
    Config
        Raises `ipu_snn.errors.ConfigError` naming the field where the config is invalid.
    """
    if isinstance(source, Config):
        source = source.model_dump(mode="json")
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))  # overrides must not change the caller's dict
        for item in overrides:
            apply_override(raw, item)
        return validate_config(raw, "the config dict")
    return _load_yaml(source, list(overrides))


def build(cfg: Config, *, batch: int | None = None) -> SpikingNetwork:
    """The network of ``cfg`` on its device, run as training runs it.

    Its windows and BPTT schedule are the planner's choice for ``cfg.bptt`` (from its cost model: training
    measures window costs where the choice depends on time) at ``batch`` samples (default
    ``data.batch_size``); a config that cannot fit is refused before anything is allocated. Its products
    are sparse or dense as ``model.sparse`` says: under ``auto`` (the default) at the crossovers the
    calibration step measures on this machine, as training runs them (`ipu_snn.calibration.crossovers`,
    cached). A ``model.from_nir`` graph gives the layers and first weights.

    Returns
    -------
    SpikingNetwork
        ``net(x)`` takes packed input bits [B, T, ceil(inputs / 8)] (what `batches` yields) or float
        frames [B, T, inputs] and returns a `NetworkOutput`; ``record=`` and ``taps=`` add per-step
        spikes and membranes, differentiable rates and the like (`Taps`).
    """
    weights = None
    if cfg.model.from_nir is not None:
        from .interop.nir import resolve_from_nir

        cfg, weights = resolve_from_nir(cfg)
    n_inputs, n_classes = input_shape(cfg.data)
    p = plan(cfg, device_spec(cfg.device), n_inputs=n_inputs, n_classes=n_classes,
             batch=batch or cfg.data.batch_size, compare_all=True)
    run_plan = p.run_plan()  # refuses, saying what would fit, when nothing does
    load_backends(cfg.device)
    # model.sparse: auto decides by the crossovers the calibration step measures here (cached)
    measured = crossovers(cfg, n_inputs, n_classes, cfg.device)[0] if cfg.device in ("cpu", "cuda") else None
    net = build_network(cfg.model, n_inputs, n_classes, cfg.data.step_seconds, loop=run_plan.loop(),
                        binary_inputs=cfg.data.binary, device=cfg.device, crossovers=measured)
    if weights is not None:
        net.load_state_dict(weights, strict=True)
    return net.to(resolve_device(cfg.device))


def load_data(cfg: Config) -> DataSplits:
    """The config's train, validation (None without one) and test sets, as training splits them."""
    return load_splits(cfg.data, cfg.training.seed)


def batches(dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0, epoch: int = 0,
            device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
    """(packed input bits [B, T, ceil(inputs / 8)], labels [B]) batches of a dataset of `load_data`, in
    the seeded order training uses for that epoch (``shuffle=False``: in order, every sample)."""
    sampler = GlobalBatchSampler(len(dataset), batch_size, DistContext(), shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    for x, y in make_loader(dataset, sampler):
        yield x.to(device), y.to(device)


def make_objective(cfg: Config, net: SpikingNetwork) -> Objective:
    """The config's ``training.loss`` and ``training.rate_regularization`` for ``net``:
    ``loss, scores = objective(net(x, taps=objective.taps), y, steps)`` (the loss summed over the batch)."""
    objective = _make_objective(cfg.training, [layer.n_out for layer in net.layers], net.readout.n_out)
    objective.prepare(net)
    return objective


__all__ = ["Config", "NetworkOutput", "Objective", "Recording", "SpikingNetwork", "Taps", "batches", "build",
           "evaluate_run", "load_config", "load_data", "make_objective", "train"]
