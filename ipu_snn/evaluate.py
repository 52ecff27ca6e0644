"""Evaluate a finished (or interrupted) run from its folder alone."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .checkpoint import load_weights
from .config import load_config
from .data import load_splits
from .devices import POPTORCH_DEVICES, device_spec, host_device, resolve_device
from .errors import TrainingError
from .executor import TimeLoop
from .losses import make_objective
from .metrics import WorkloadTally, static_metrics
from .network import build_network
from .reporting import write_activity_plots
from .loop import stored_plan
from .planner import check_evaluation_fits
from .run_folder import newest_intact_checkpoint
from .selection import BEST
from .torch_driver import evaluate, load_backends


def evaluate_run(run_dir: Path, split: str = "test", device: str | None = None, with_metrics: bool = False,
                 say: Callable[[str], None] = print, plots: bool = False, checkpoint: str = "latest"):
    """Evaluate the newest intact checkpoint of a run folder.

    Parameters
    ----------
    run_dir : Path
        A folder written by `ipu_snn.train`.
    split : {"test", "val", "train"}
    device : str or None
        Where to evaluate (default: the run's own device; the host CPU for IPU runs).
    with_metrics : bool
        Also return the NeuroBench-style metrics (`ipu_snn.metrics`) of that split.
    say : callable
        Hears which checkpoints were passed over, and why.
    checkpoint : {"latest", "best"}
        The newest intact checkpoint, or the best validation epoch's (``training.keep_best``).
    plots : bool
        Also (re)write the run's spikes.png and rates.png from that checkpoint, on the test split.

    Returns
    -------
    tuple
        (loss, accuracy), and with ``with_metrics`` the metrics as a third item.
    """
    if checkpoint == "best" and not (run_dir / BEST).is_dir():
        raise TrainingError(f"{run_dir}: no best checkpoint ({run_dir / BEST} is missing): the run was trained "
                            "without training.keep_best: true")
    found = newest_intact_checkpoint(run_dir / BEST if checkpoint == "best" else run_dir)
    for note in found.notes:
        say(f"note: {note}")
    cfg = load_config(run_dir / "config.yaml")
    # an IPU run's checkpoints are host copies of its weights: evaluating them needs no compiled graph
    name = device or ("cpu" if cfg.device in POPTORCH_DEVICES else cfg.device)
    asked = device  # None: the run's own device (a torch.device from here on)
    device = resolve_device(name)
    load_backends(name)
    # the windows and product policies the run trained with (its checkpoint stores its plan); no schedule:
    # nothing is differentiated. Refused from shapes alone before any data is loaded or anything built.
    run_plan = stored_plan(found.state, cfg, cfg.data.batch_size)
    check_evaluation_fits(cfg, device_spec(name), run_plan.window)
    splits = load_splits(cfg.data, cfg.training.seed)
    # an IPU run's host copy is built for its own device row: the host's tensors, its products as the op left them
    built_for = host_device(cfg.device) if asked is None and cfg.device in POPTORCH_DEVICES else name
    model = build_network(cfg.model, splits.n_inputs, splits.n_classes, splits.dt, loop=TimeLoop(run_plan.window),
                          binary_inputs=cfg.data.binary, device=built_for, crossovers=run_plan.crossovers)
    load_weights(model, found.weights, found.folder)
    dataset = getattr(splits, split)
    if dataset is None:
        raise TrainingError(f"the run has no {split} split (data.val_split is 0)")
    if plots:
        for path in write_activity_plots(run_dir, model.to(device), splits.test, splits.dt):
            say(f"wrote {path}")
    tally = WorkloadTally() if with_metrics else None
    objective = make_objective(cfg.training, [layer.n_out for layer in model.layers], splits.n_classes)
    loss, accuracy = evaluate(model.to(device), dataset, cfg.data.batch_size, device, tally=tally,
                              objective=objective)
    if not with_metrics:
        return loss, accuracy
    return loss, accuracy, static_metrics(model) | tally.metrics(model.state_dict())
