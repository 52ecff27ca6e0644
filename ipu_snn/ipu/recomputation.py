"""A BPTT schedule as PopART recomputation: which window states to keep, and where.

On the IPU the backward pass is PopART's, not the BPTT engine's, so a schedule
cannot be executed action by action. What carries over is the forward pass of
the schedule over the executor's windows: the window states it stores
(``Store`` before the first ``Reverse``, ipu_snn.executor.kept_windows) are
marked with ``poptorch.recomputationCheckpoint`` and kept; with PopART's
explicit recomputation of everything else (``RecomputeAll``) each span between
two kept states is recomputed in the backward pass, in tile memory, while it is
reversed. That is the fine level. If the schedule keeps any state in the
off-chip tier (``double``: the coarse checkpoints), activations are placed in
streaming memory, the IPU's off-chip tier.

This is a single recomputation level per span: the nested inner schedule of
``double`` within a segment (its local slots) has no PopART counterpart, so a
segment is recomputed once, whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bptt.schedules import Store
from ..executor import TimeLoop, kept_windows


@dataclass(frozen=True)
class Recomputation:
    """Window states kept through the forward pass; state n is the one before window n (0 < n < W)."""

    checkpoints: frozenset[int]
    offchip: bool  # some are in the off-chip tier: put activations in streaming memory


def recomputation_for(loop: TimeLoop, steps: int) -> Recomputation | None:
    """None for store_all (no schedule): PopART keeps every step and recomputes nothing."""
    if loop.schedule is None:
        return None
    windows = len(loop.bounds(steps))
    kept = kept_windows(loop, windows)
    schedule = loop.schedule(windows)
    offchip = any(isinstance(a, Store) and a.n in kept and a.tier == "offchip"
                  for a in schedule.actions[: schedule.forward_phase_end])
    return Recomputation(kept, offchip)
