"""A BPTT schedule as PopART recomputation and, for off-chip checkpoints, execution phases.

On the IPU the backward pass is PopART's, not the BPTT engine's, so a schedule
cannot be executed action by action. What carries over is the forward pass of
the schedule over the executor's windows: the window states it stores
(``Store`` before the first ``Reverse``, ipu_snn.executor.kept_windows) are
marked with ``poptorch.recomputationCheckpoint`` and kept; with PopART's
explicit recomputation of everything else (``RecomputeAll``) each span between
two kept states is recomputed in the backward pass, in tile memory, while it is
reversed. That is the fine level.

The off-chip tier (``double``'s coarse checkpoints, ``two_level``'s) becomes
phased execution: each segment of windows between two off-chip checkpoints is
one execution phase (a ``poptorch.Block`` of ``SerialPhasedExecution``), so the
checkpoint a segment starts from crosses phases and goes to streaming memory,
and the segment's backward phase recomputes it from there (ipu_snn/ipu/README.md,
"Streaming memory and phases", for the evidence).

This is a single recomputation level per span: the nested inner schedule of
``double`` within a segment (its local slots) is kept as further checkpoints
inside the phase, not as its own schedule, so a span between two checkpoints is
recomputed once, whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bptt.schedules import Store
from ..executor import TimeLoop, kept_windows


@dataclass(frozen=True)
class Recomputation:
    """Window states kept through the forward pass; state n is the one before window n (0 < n < W)."""

    checkpoints: frozenset[int]
    offchip_windows: frozenset[int] = frozenset()  # those the schedule keeps in the off-chip tier

    @property
    def phase_starts(self) -> tuple[int, ...]:
        """The first window of each execution phase: 0 and each window an off-chip checkpoint starts;
        empty (no phases) when nothing is off-chip."""
        return (0, *sorted(self.offchip_windows)) if self.offchip_windows else ()

    @property
    def blocks(self) -> tuple[str, ...]:
        """The ``poptorch.Block`` ids of the phases, in order."""
        return tuple(phase_block(n) for n in self.phase_starts)


def phase_block(window: int) -> str:
    """The Block id of the phase that starts at ``window``."""
    return f"windows_from_{window}"


def recomputation_for(loop: TimeLoop, steps: int) -> Recomputation | None:
    """None for store_all (no schedule): PopART keeps every step and recomputes nothing."""
    if loop.schedule is None:
        return None
    windows = len(loop.bounds(steps))
    kept = kept_windows(loop, windows)
    schedule = loop.schedule(windows)
    offchip = frozenset(a.n for a in schedule.actions[: schedule.forward_phase_end]
                        if isinstance(a, Store) and a.n in kept and a.tier == "offchip")
    return Recomputation(kept, offchip)
