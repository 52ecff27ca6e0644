"""A BPTT schedule as PopART recomputation: which time steps' states to keep, and where.

On the IPU the backward pass is PopART's, not the BPTT engine's, so a schedule
cannot be executed action by action. What carries over is the forward pass of
the schedule: the states it stores (``Store`` before the first ``Reverse``) are
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

from ..bptt.schedules import Schedule, Store


@dataclass(frozen=True)
class Recomputation:
    """States kept through the forward pass; state n is the one after n steps (0 < n < T)."""

    checkpoints: frozenset[int]
    offchip: bool  # some are in the off-chip tier: put activations in streaming memory


def recomputation_for(schedule: Schedule | None) -> Recomputation | None:
    """None for store_all (no schedule): PopART keeps every step and recomputes nothing."""
    if schedule is None:
        return None
    forward = schedule.actions[: schedule.forward_phase_end]
    # state 0 is the zero initial state and state T is never needed by backward
    stores = [a for a in forward if isinstance(a, Store) and 0 < a.n < schedule.T]
    return Recomputation(frozenset(a.n for a in stores), any(a.tier == "offchip" for a in stores))
