"""The time loop's one executor: a network run in windows of L steps, under a BPTT schedule over windows.

Within a window the network goes layer by layer, each layer's window one fused
Function (ipu_snn.neuron.window): no Python per step on the CPU, spikes kept as
bits. Window boundaries are where checkpoints go: the state of every layer (v,
a, the last spikes) and the readout's membrane. A schedule (ipu_snn.bptt), as
data over the T / L windows, says which boundaries are kept, in which tier
(local, or off-chip: pinned host memory on CUDA, host memory on the CPU, IPU
streaming memory), and which windows are recomputed in backward; the BPTT
engine (ipu_snn.bptt.engine) executes it, treating a window as its step:

* forward runs every window, taping only the windows the schedule keeps;
* backward walks the windows in reverse, recomputing a window's forward from
  its checkpoint where it was not taped (fused, keeping what its backward
  reads), then running its fused backward, with the adjoint of the window's
  final state in and of its initial state out.

``store_all`` tapes every window (nothing is recomputed): memory grows with T at
the fused loop's few bytes per neuron-step. ``uniform``, ``revolve``,
``double`` and ``two_level`` hold a few window states and one segment of
windows at a time. The planner (ipu_snn.planner) picks L and the schedule.

"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .bptt import Schedule, ScanStats, scan


@dataclass(frozen=True)
class TimeLoop:
    """How the executor runs T steps.

    Parameters
    ----------
    window : int or None
        Steps per window (None: one window of T).
    schedule : callable or None
        The number of windows -> the BPTT `Schedule` over them (``lambda n: revolve(n, 4)``);
        None: store_all, every window taped.
    """

    window: int | None = None
    schedule: Callable[[int], Schedule] | None = None

    def bounds(self, steps: int) -> list[tuple[int, int]]:
        return window_bounds(steps, self.window or steps)


def window_bounds(steps: int, window: int) -> list[tuple[int, int]]:
    """[t0, t1) of each window: ``window`` steps each, the last one shorter if T is not a multiple."""
    if steps < 1 or window < 1:
        raise ValueError(f"window_bounds: T and the window must be >= 1, got {steps}, {window}")
    return [(t0, min(t0 + window, steps)) for t0 in range(0, steps, window)]


def scan_windows(module: nn.Module, x: Tensor, state0, steps: int, loop: TimeLoop,
                 stats: ScanStats | None = None) -> tuple[Tensor, object]:
    """Run T steps window by window, differentiable under the loop's schedule.

    Parameters
    ----------
    module : nn.Module
        ``module(state, x, t0, t1) -> (state after step t1 - 1, the window's output [B, ...])``; its
        parameters are what backward differentiates.
    x : Tensor
        The batch (caller-owned), read by each window; its bytes are not counted as the schedule's.
    state0 : nested tuple of Tensor or None
        The state before step 0.
    steps : int
        T.
    loop : TimeLoop
        Windows and schedule.
    stats : ScanStats or None
        Filled with the executor's accounting (windows run, bytes kept) when given.

    Returns
    -------
    ys : Tensor
        Every window's output, stacked [W, B, ...].
    state : nested tuple
        The state after the last step.
    """
    bounds = loop.bounds(steps)
    named = list(module.named_parameters())
    names, params = [n for n, _ in named], [p for _, p in named]
    flat0, unflatten = _flatten(state0)
    leaves = _leaves_of(state0)
    slots = _parameter_slots(module, names)

    def cell(params, flat_state, n):
        # the engine passes the parameters explicitly, so that it can differentiate a window it replays
        t0, t1 = bounds[int(n)]
        if slots is None:
            state, y = torch.func.functional_call(module, dict(zip(names, params)),
                                                  (unflatten(flat_state), x, t0, t1))
        else:
            with _swapped(slots, params):
                state, y = module(unflatten(flat_state), x, t0, t1)
        return leaves(state), y

    index = torch.arange(len(bounds))
    ys, final = scan(cell, params, flat0, index, loop.schedule, stats=stats, owned=(x,))
    return ys, unflatten(final)


def _parameter_slots(module: nn.Module, names: list[str]) -> list[tuple[nn.Module, str]] | None:
    """(owning module, attribute) of each named parameter, resolved once per scan, so that a window swaps
    the engine's tensors in with a few dict writes instead of torch.func.functional_call's per-call
    reparametrisation (most of a window's fixed Python cost: docs/benchmarks/window_cost.md).
    None where a parameter is shared under two names (tied weights), which functional_call handles."""
    if len(list(module.named_parameters(remove_duplicate=False))) != len(names):
        return None
    slots = []
    for name in names:
        owner, _, leaf = name.rpartition(".")
        slots.append((module.get_submodule(owner) if owner else module, leaf))
    return slots


@contextmanager
def _swapped(slots: list[tuple[nn.Module, str]], tensors):
    """The module's parameters replaced by ``tensors`` (in ``slots``' order) inside the block."""
    saved = [owner._parameters[leaf] for owner, leaf in slots]
    try:
        for (owner, leaf), tensor in zip(slots, tensors):
            owner._parameters[leaf] = tensor
        yield
    finally:
        for (owner, leaf), tensor in zip(slots, saved):
            owner._parameters[leaf] = tensor


def _flatten(state) -> tuple[tuple[Tensor, ...], Callable]:
    """The tensors of a nested state (None leaves, such as a LIF's missing adaptation, dropped),
    and the function that puts tensors back into that structure."""
    if _plain(state):
        # tuples (named or not) of tensors and None, as the network's states are: rebuilt directly, a
        # few calls per window instead of torch's pytree registry walk
        def unflatten(tensors):
            return _rebuild(state, iter(tensors))

        return _leaves(state), unflatten
    leaves, spec = pytree.tree_flatten(state)
    present = [leaf is not None for leaf in leaves]

    def unflatten(tensors):
        it = iter(tensors)
        return pytree.tree_unflatten([next(it) if p else None for p in present], spec)

    return tuple(leaf for leaf in leaves if leaf is not None), unflatten


def _plain(state) -> bool:
    if isinstance(state, tuple):
        return all(_plain(item) for item in state)
    return state is None or isinstance(state, Tensor)


def _leaves(state) -> tuple[Tensor, ...]:
    """The tensors of a `_plain` state, in `_flatten`'s order."""
    out: list[Tensor] = []

    def walk(node):
        if isinstance(node, Tensor):
            out.append(node)
        elif node is not None:
            for item in node:
                walk(item)

    walk(state)
    return tuple(out)


def _rebuild(like, tensors):
    """``like``'s structure with its tensors taken from the iterator ``tensors``."""
    if isinstance(like, Tensor):
        return next(tensors)
    if like is None:
        return None
    items = [_rebuild(item, tensors) for item in like]
    return type(like)(*items) if hasattr(like, "_fields") else type(like)(items)


def _leaves_of(state0) -> Callable:
    """The function from a state shaped like ``state0`` to its tensors, as `_flatten` orders them."""
    return _leaves if _plain(state0) else (lambda state: _flatten(state)[0])
