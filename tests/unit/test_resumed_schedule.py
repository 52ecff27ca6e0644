"""training.epochs raised on --resume: a cosine schedule is extended, never left at lr 0."""

import math

import torch

from ipu_snn.config import TrainingConfig
from ipu_snn.optim import make_optimizer, make_scheduler, resumed_scheduler


def run_epochs(cfg, epochs, optimizer=None, scheduler=None):
    optimizer = optimizer or make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    scheduler = scheduler or make_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs, optimizer, scheduler


def resume(cfg, optimizer, scheduler, done):
    fresh = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    fresh.load_state_dict(optimizer.state_dict())
    return fresh, resumed_scheduler(cfg, fresh, scheduler.state_dict(), done)


def test_a_finished_cosine_restarts_over_the_added_epochs():
    first = TrainingConfig(epochs=20, lr=0.01, lr_schedule="cosine")
    lrs, opt, sched = run_epochs(first, 20)
    assert lrs[0] == 0.01 and opt.param_groups[0]["lr"] < 1e-12  # annealed: epoch 21 would train at lr 0
    more = TrainingConfig(epochs=24, lr=0.01, lr_schedule="cosine")
    opt, sched = resume(more, opt, sched, 20)
    added, _, _ = run_epochs(more, 4, opt, sched)
    expected = [0.01 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(added, expected)), added
    one = TrainingConfig(epochs=21, lr=0.01, lr_schedule="cosine")
    _, opt1, sched1 = run_epochs(first, 20)
    opt1, sched1 = resume(one, opt1, sched1, 20)
    assert opt1.param_groups[0]["lr"] == 0.01  # the README's training.epochs=21 --resume


def test_an_unfinished_cosine_is_stretched_and_a_plain_resume_unchanged():
    cfg = TrainingConfig(epochs=10, lr=0.01, lr_schedule="cosine")
    full, _, _ = run_epochs(cfg, 10)
    head, opt, sched = run_epochs(cfg, 4)
    opt, sched = resume(cfg, opt, sched, 4)
    tail, _, _ = run_epochs(cfg, 6, opt, sched)
    assert head + tail == full  # same epochs: the schedule goes on exactly
    longer = TrainingConfig(epochs=20, lr=0.01, lr_schedule="cosine")
    _, opt, sched = run_epochs(cfg, 4)
    opt, sched = resume(longer, opt, sched, 4)
    tail, opt, _ = run_epochs(longer, 16, opt, sched)
    expected = [0.01 * (1 + math.cos(math.pi * k / 20)) / 2 for k in range(4, 20)]
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12) for a, b in zip(tail, expected))
    assert opt.param_groups[0]["lr"] < 1e-12  # ends annealed at the new last epoch
