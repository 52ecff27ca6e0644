"""Best-epoch selection and early stopping: pure functions of the metric history, so a resumed run decides
as an uninterrupted one would (the history is in every checkpoint)."""

from __future__ import annotations

from .config import TrainingConfig

#: Where ``training.keep_best`` keeps the best validation epoch's checkpoint, inside the run folder
BEST = "best"


def selection_metric(training: TrainingConfig) -> str:
    """The validation metric that ranks epochs: early_stopping's, else val_loss."""
    return training.early_stopping.metric if training.early_stopping is not None else "val_loss"


def _better(metric: str, value: float, than: float, by: float = 0.0) -> bool:
    return value < than - by if metric == "val_loss" else value > than + by


def best_epoch(history: list[dict], metric: str, min_delta: float = 0.0) -> int | None:
    """The epoch (1-based) of the best ``metric`` in ``history``; a later epoch wins only by more than
    ``min_delta``; None before any validated epoch."""
    best = None
    for row in history:
        if metric in row and (best is None or _better(metric, row[metric], best[1], min_delta)):
            best = (row["epoch"], row[metric])
    return None if best is None else best[0]


def is_best_epoch(history: list[dict], metric: str) -> bool:
    """Whether the latest epoch of ``history`` is the best so far (ties keep the earlier one)."""
    return bool(history) and best_epoch(history, metric) == history[-1]["epoch"]


def should_stop(history: list[dict], training: TrainingConfig) -> bool:
    """Early stopping: the metric has not improved by ``min_delta`` in the last ``patience`` epochs."""
    stopping = training.early_stopping
    if stopping is None or not history:
        return False
    best = best_epoch(history, stopping.metric, stopping.min_delta)
    return best is not None and history[-1]["epoch"] - best >= stopping.patience
