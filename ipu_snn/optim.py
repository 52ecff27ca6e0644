"""Optimizer and learning-rate schedule from the training config."""

from __future__ import annotations

import math

import torch

from .config import TrainingConfig


def make_optimizer(cfg: TrainingConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainingConfig, optimizer: torch.optim.Optimizer):
    """Stepped once per epoch."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_size, gamma=cfg.lr_gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def resumed_scheduler(cfg: TrainingConfig, optimizer: torch.optim.Optimizer, state: dict, done: int):
    """The schedule of a run resumed after ``done`` epochs with the saved scheduler ``state``, extended where
    ``training.epochs`` now asks for more epochs than a cosine schedule was made for: a cosine that has run
    its course starts a new cycle over the added epochs, from the configured lr down to 0 (a warm restart,
    as SGDR); one still annealing is stretched to end with the new last epoch. Other schedules go on as
    they are."""
    scheduler = make_scheduler(cfg, optimizer)
    scheduler.load_state_dict(state)
    if cfg.lr_schedule != "cosine":
        return scheduler
    k, cycle, remaining = scheduler.last_epoch, scheduler.T_max, cfg.epochs - done
    if k + remaining <= cycle:
        return scheduler
    if k >= cycle:  # annealed to 0 already: a new cycle over the added epochs
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=remaining)
    scheduler.T_max = k + remaining  # still annealing: end at the new last epoch, from where it is now
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * k / scheduler.T_max)) / 2
    return scheduler
