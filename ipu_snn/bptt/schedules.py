"""Checkpoint schedules for BPTT, as plain data.

A schedule says, step by step, what to compute, what to keep and where, so that
the gradient of a T-step recurrence can be computed within a memory budget. It
is data: generating one is a pure function of a few integers, it can be checked
(`check_schedule`) and costed (`predicted_time`, `predicted_local_bytes`)
without running a model, and the engine (`ipu_snn.bptt.engine`) only executes
it. This split follows the Firedrake `checkpoint_schedules` package.

Indexing. Step ``n`` (0 <= n < T) maps state ``n`` and input ``x[n]`` to state
``n + 1`` and output ``y[n]``. State 0 is the caller's initial state, state T
the final one. A checkpoint "n" is state n.

The executor keeps one *current state*, starting at state 0, and a *tape*: for
each taped step, what backward needs (the autograd graph of that step).

Actions:

``Advance(n0, n1, store_outputs)``
    The current state must be state ``n0``; run steps ``n0 .. n1-1`` and make
    state ``n1`` current. With ``store_outputs`` each of these steps is taped.
    A step must not be taped twice.
``Reverse(n)``
    Backpropagate through step ``n`` using its tape, then drop the tape. Steps
    are reversed exactly once each, in the order T-1, ..., 0. The current state
    is left as it was.
``Store(n, tier)``
    The current state must be state ``n``; keep a copy in ``tier`` ("local":
    fast device memory, "offchip": large slow memory such as pinned host RAM or
    IPU streaming memory). One checkpoint uses one slot of its tier.
``Load(n, tier)``
    Make checkpoint ``n`` of ``tier`` the current state (the checkpoint stays).
``Free(n, tier)``
    Drop checkpoint ``n`` from ``tier``, releasing its slot.

The *forward phase* is every action before the first ``Reverse``. It must
advance contiguously from state 0 to state T (so that it produces every output
and the final state) and may only ``Advance``, ``Store`` and ``Free``. The rest is
the *backward phase*; at its end no checkpoint and no tape may remain.

``forward_steps`` counts step evaluations as Revolve (Griewank and Walther,
ACM TOMS 26(1), 2000) does: the evaluation of a step that is taped and reversed
at once (``Advance(.., n+1, True)`` directly followed by ``Reverse(n)``) is part
of the reverse sweep and is not counted. Hence ``store_all(T)`` performs T-1
forward steps and ``revolve(T, s)`` performs ``t*T - beta(s+1, t-1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Union


TierName = Literal["local", "offchip"]
TIERS: tuple[str, ...] = ("local", "offchip")


class ScheduleError(ValueError):
    """A schedule that cannot be executed: the message names the action."""


@dataclass(frozen=True, slots=True)
class Advance:
    n0: int
    n1: int
    store_outputs: bool = False


@dataclass(frozen=True, slots=True)
class Reverse:
    n: int


@dataclass(frozen=True, slots=True)
class Store:
    n: int
    tier: TierName = "local"


@dataclass(frozen=True, slots=True)
class Load:
    n: int
    tier: TierName = "local"


@dataclass(frozen=True, slots=True)
class Free:
    n: int
    tier: TierName = "local"


Action = Union[Advance, Reverse, Store, Load, Free]


@dataclass(frozen=True)
class Schedule:
    """A complete BPTT schedule for ``T`` steps (see the module docstring)."""

    name: str
    T: int
    actions: tuple[Action, ...] = field(repr=False)
    forward_steps: int
    max_local_slots: int
    max_offchip_slots: int

    @property
    def forward_phase_end(self) -> int:
        """Index of the first ``Reverse``: actions before it run in the forward pass."""
        for i, a in enumerate(self.actions):
            if isinstance(a, Reverse):
                return i
        return len(self.actions)


@dataclass(frozen=True)
class Costs:
    """Time, in any unit, of the operations a schedule performs.

    ``step`` is one cell evaluation (taped or not), ``tape`` what taping it adds
    (keeping what its backward reads), ``reverse`` one backpropagation through
    a step, and ``*_write`` / ``*_read`` moving one checkpoint into / out of a
    tier. The model is sequential: transfers do not
    overlap compute, as in H-Revolve and Disk-Revolve, which makes it an upper
    bound when the store prefetches.
    """

    step: float = 1.0
    reverse: float = 2.0
    tape: float = 0.0
    local_write: float = 0.0
    local_read: float = 0.0
    offchip_write: float = 0.0
    offchip_read: float = 0.0

    def write(self, tier: str) -> float:
        return self.local_write if tier == "local" else self.offchip_write

    def read(self, tier: str) -> float:
        return self.local_read if tier == "local" else self.offchip_read


@dataclass(frozen=True)
class Summary:
    """What executing a schedule does, counted by `summarize`.

    ``profile[i]`` is ``(local checkpoints held, taped steps held)`` right after
    action ``i``; its maxima give the peak local memory for any state and tape
    size, since both only grow inside a single action.
    """

    evaluations: int
    taped: int  # evaluations that were taped
    forward_steps: int
    reverses: int
    stores: dict[str, int]
    loads: dict[str, int]
    peak_slots: dict[str, int]
    peak_taped: int
    profile: tuple[tuple[int, int], ...]


def beta(s: int, t: int) -> int:
    """Steps reversible with ``s`` slots and ``t`` evaluations per step: C(s+t, s)."""
    return math.comb(s + t, s) if t >= 0 else 0


def _repetitions(T: int, slots: int) -> int:
    """The smallest t with beta(slots, t) >= T."""
    t = 0
    while beta(slots, t) < T:
        t += 1
    return t


def revolve_forward_steps(T: int, slots: int) -> int:
    """Griewank's minimal forward-step count for T steps and ``slots`` checkpoints."""
    _require(T >= 1, "T", T, "at least 1")
    _require(slots >= 1, "slots", slots, "at least 1")
    if T == 1:
        return 0
    t = _repetitions(T, slots)
    return t * T - beta(slots + 1, t - 1)


# ---------------------------------------------------------------------------
# Checking and counting


def summarize(schedule: Schedule) -> Summary:
    """Replay ``schedule`` symbolically, validating it, and count what it does."""
    return _replay(schedule.T, schedule.actions)


def check_schedule(schedule: Schedule) -> Summary:
    """Raise `ScheduleError` unless ``schedule`` is executable and its declared
    ``forward_steps`` and slot maxima are exactly what its actions do."""
    s = summarize(schedule)
    declared = (schedule.forward_steps, schedule.max_local_slots, schedule.max_offchip_slots)
    actual = (s.forward_steps, s.peak_slots["local"], s.peak_slots["offchip"])
    if declared != actual:
        raise ScheduleError(
            f"{schedule.name}: declares (forward_steps, max_local_slots, max_offchip_slots)"
            f" = {declared} but its actions give {actual}"
        )
    return s


def _replay(T: int, actions: tuple[Action, ...] | list[Action]) -> Summary:
    if T < 1:
        raise ScheduleError(f"T must be at least 1, got {T}")
    current: int | None = 0
    held: dict[str, set[int]] = {t: set() for t in TIERS}
    peak = {t: 0 for t in TIERS}
    stores = {t: 0 for t in TIERS}
    loads = {t: 0 for t in TIERS}
    taped: set[int] = set()
    peak_taped = 0
    next_reverse = T - 1
    evaluations = uncounted = taped_evaluations = 0
    profile = []
    in_forward = True

    def fail(i: int, a: Action, why: str) -> None:
        raise ScheduleError(f"action {i} {a}: {why}")

    for i, a in enumerate(actions):
        if isinstance(a, Advance):
            if current != a.n0:
                fail(i, a, f"the current state is {current}, not {a.n0}")
            if not a.n0 < a.n1 <= T:
                fail(i, a, f"needs {a.n0} < n1 <= T={T}")
            if a.store_outputs:
                steps = range(a.n0, a.n1)
                if taped.intersection(steps):
                    fail(i, a, "tapes a step that is already taped")
                if a.n1 - 1 > next_reverse:
                    fail(i, a, "tapes a step that was already reversed")
                taped.update(steps)
                taped_evaluations += a.n1 - a.n0
                peak_taped = max(peak_taped, len(taped))
                following = actions[i + 1] if i + 1 < len(actions) else None
                if isinstance(following, Reverse) and following.n == a.n1 - 1:
                    uncounted += 1
            evaluations += a.n1 - a.n0
            current = a.n1
        elif isinstance(a, Reverse):
            if in_forward and current != T:
                fail(i, a, f"the forward phase ends at state {current}, not T={T}")
            in_forward = False
            if a.n != next_reverse:
                fail(i, a, f"step {next_reverse} must be reversed next")
            if a.n not in taped:
                fail(i, a, "the step is not taped")
            taped.remove(a.n)
            next_reverse -= 1
        elif isinstance(a, (Store, Load, Free)):
            if a.tier not in TIERS:
                fail(i, a, f"unknown tier {a.tier!r}; expected one of {TIERS}")
            tier = held[a.tier]
            if isinstance(a, Store):
                if current != a.n:
                    fail(i, a, f"the current state is {current}, not {a.n}")
                if a.n in tier:
                    fail(i, a, "checkpoint already held")
                tier.add(a.n)
                stores[a.tier] += 1
                peak[a.tier] = max(peak[a.tier], len(tier))
            elif isinstance(a, Load):
                if in_forward:
                    fail(i, a, "the forward phase may not load")
                if a.n not in tier:
                    fail(i, a, "checkpoint not held (never stored, or freed)")
                loads[a.tier] += 1
                current = a.n
            else:
                if a.n not in tier:
                    fail(i, a, "checkpoint not held")
                tier.remove(a.n)
        else:
            fail(i, a, "unknown action type")
        profile.append((len(held["local"]), len(taped)))

    if next_reverse != -1:
        raise ScheduleError(f"steps {next_reverse}..0 are never reversed")
    leftover = {t: sorted(h) for t, h in held.items() if h}
    if leftover or taped:
        raise ScheduleError(f"left behind checkpoints {leftover} and tapes {sorted(taped)}")
    return Summary(
        evaluations=evaluations,
        taped=taped_evaluations,
        forward_steps=evaluations - uncounted,
        reverses=T,
        stores=stores,
        loads=loads,
        peak_slots=peak,
        peak_taped=peak_taped,
        profile=tuple(profile),
    )


def predicted_time(schedule: Schedule, costs: Costs, summary: Summary | None = None) -> float:
    """Run time of ``schedule`` under the sequential model of `Costs` (``summary``: its `summarize`, if
    made already)."""
    s = summary or summarize(schedule)
    return (
        s.evaluations * costs.step
        + s.taped * costs.tape
        + s.reverses * costs.reverse
        + sum(s.stores[t] * costs.write(t) + s.loads[t] * costs.read(t) for t in TIERS)
    )


def predicted_local_bytes(schedule: Schedule, state_bytes: int, tape_bytes_per_step: int,
                          summary: Summary | None = None) -> int:
    """Peak bytes held in local memory: local checkpoints plus taped steps.

    The engine measures the same quantity (`ScanStats.peak_local_bytes`); the
    current state it is working on is not counted, as it is one state at most.
    """
    return max(c * state_bytes + k * tape_bytes_per_step for c, k in (summary or summarize(schedule)).profile)


# ---------------------------------------------------------------------------
# Generators


def _require(ok: bool, name: str, value: object, what: str) -> None:
    if not ok:
        raise ValueError(f"checkpoint schedule: `{name}` must be {what}, got {value!r}")


def _build(name: str, T: int, actions: list[Action]) -> Schedule:
    s = _replay(T, actions)
    return Schedule(
        name=name,
        T=T,
        actions=tuple(actions),
        forward_steps=s.forward_steps,
        max_local_slots=s.peak_slots["local"],
        max_offchip_slots=s.peak_slots["offchip"],
    )


def store_all(T: int) -> Schedule:
    """Tape every step in the forward pass: no recomputation, T steps of tape."""
    _require(T >= 1, "T", T, "at least 1")
    actions: list[Action] = [Advance(0, T, True)]
    actions += [Reverse(n) for n in range(T - 1, -1, -1)]
    return _build("store_all", T, actions)


def uniform(T: int, every: int) -> Schedule:
    """Checkpoint every ``every`` steps; in backward, recompute each segment
    (last first) taping it, then reverse it. The last segment is taped in the
    forward pass already, so it is never recomputed."""
    _require(T >= 1, "T", T, "at least 1")
    _require(every >= 1, "every", every, "at least 1")
    actions: list[Action] = []
    _uniform_segment(0, T, every, actions)
    return _build(f"uniform(every={every})", T, actions)


def revolve(T: int, slots: int) -> Schedule:
    """Binomial checkpointing (Griewank): the fewest forward steps possible with
    ``slots`` local checkpoints (state 0 included) and one taped step at a time."""
    _require(T >= 1, "T", T, "at least 1")
    _require(slots >= 1, "slots", slots, "at least 1")
    actions: list[Action] = []
    _revolve_segment(0, T, slots, actions)
    return _build(f"revolve(slots={slots})", T, actions)


def double(T: int, offchip_every: int, local_slots: int, inner: str = "revolve") -> Schedule:
    """Double Checkpointing (Bencheikh et al., arXiv 2412.11810).

    The forward pass stores a coarse checkpoint off-chip every ``offchip_every``
    steps. In backward each segment, last first, is loaded from off-chip and
    reversed by an ``inner`` schedule ("revolve" or "uniform") that uses at most
    ``local_slots`` local checkpoints. The last segment runs its inner schedule
    straight from the forward pass and needs no off-chip checkpoint.
    """
    _require(T >= 1, "T", T, "at least 1")
    _require(offchip_every >= 1, "offchip_every", offchip_every, "at least 1")
    _require(inner in ("revolve", "uniform"), "inner", inner, '"revolve" or "uniform"')
    if inner == "revolve":
        _require(local_slots >= 1, "local_slots", local_slots, "at least 1 with inner revolve")
    else:
        _require(local_slots >= 0, "local_slots", local_slots, "at least 0")
    starts = list(range(0, T, offchip_every))
    ends = starts[1:] + [T]
    actions: list[Action] = []
    for a, b in zip(starts[:-1], ends[:-1]):
        actions += [Store(a, "offchip"), Advance(a, b)]
    _inner_segment(starts[-1], T, local_slots, inner, actions)
    for a, b in zip(reversed(starts[:-1]), reversed(ends[:-1])):
        actions.append(Load(a, "offchip"))
        _inner_segment(a, b, local_slots, inner, actions)
        actions.append(Free(a, "offchip"))
    return _build(f"double(offchip_every={offchip_every},local_slots={local_slots},inner={inner})", T, actions)


def two_level_optimal(T: int, local_slots: int, offchip_slots: int, costs: Costs) -> Schedule:
    """The fastest periodic two-level schedule under ``costs``.

    Searches the off-chip interval m of ``double(T, m, local_slots, "revolve")``
    (m = T is plain Revolve, using no off-chip memory) for the least
    `predicted_time`, with at most ``offchip_slots`` off-chip checkpoints. This
    is the periodic Disk-Revolve family: off-chip checkpoints at fixed
    intervals, binomial checkpointing inside each interval. Ties go to the
    larger interval, which uses less off-chip memory.
    """
    _require(T >= 1, "T", T, "at least 1")
    _require(local_slots >= 1, "local_slots", local_slots, "at least 1")
    _require(offchip_slots >= 0, "offchip_slots", offchip_slots, "at least 0")
    smallest = max(1, -(-T // (offchip_slots + 1)))
    best = min(range(T, smallest - 1, -1), key=lambda m: _double_revolve_time(T, m, local_slots, costs))
    s = double(T, best, local_slots, "revolve")
    return replace(s, name=f"two_level_optimal(offchip_every={best},local_slots={local_slots})")


def _double_revolve_time(T: int, m: int, slots: int, costs: Costs) -> float:
    """`predicted_time` of ``double(T, m, slots, "revolve")`` without building it."""
    full = -(-T // m) - 1  # segments with an off-chip checkpoint
    last = T - full * m
    forward = full * (costs.offchip_write + m * costs.step)
    backward = full * (costs.offchip_read + _revolve_segment_time(m, slots, costs))
    return forward + backward + _revolve_segment_time(last, slots, costs)


def _revolve_segment_time(l: int, slots: int, costs: Costs) -> float:
    if l == 1:
        return costs.step + costs.reverse
    evaluations, stores, loads = _revolve_counts(l, min(slots, l - 1))
    return (
        costs.local_write  # the segment's first state
        + evaluations * costs.step
        + l * costs.reverse
        + stores * costs.local_write
        + loads * costs.local_read
    )


# ---------------------------------------------------------------------------
# Segment builders. Each starts with the current state at ``a``, reverses
# steps b-1..a, and leaves no local checkpoint behind.


def _inner_segment(a: int, b: int, slots: int, inner: str, out: list[Action]) -> None:
    if inner == "revolve":
        _revolve_segment(a, b, slots, out)
    else:
        # as many equal pieces as there are slots plus one: the last piece is
        # taped in the sweep and needs no checkpoint
        _uniform_segment(a, b, -(-(b - a) // (slots + 1)), out)


def _uniform_segment(a: int, b: int, every: int, out: list[Action]) -> None:
    starts = list(range(a, b, every))
    ends = starts[1:] + [b]
    for s, e in zip(starts[:-1], ends[:-1]):
        out += [Store(s, "local"), Advance(s, e)]
    out.append(Advance(starts[-1], b, True))
    out += [Reverse(n) for n in range(b - 1, starts[-1] - 1, -1)]
    for s, e in zip(reversed(starts[:-1]), reversed(ends[:-1])):
        out += [Load(s, "local"), Advance(s, e, True)]
        out += [Reverse(n) for n in range(e - 1, s - 1, -1)]
        out.append(Free(s, "local"))


def _revolve_segment(a: int, b: int, slots: int, out: list[Action]) -> None:
    if b - a == 1:
        out += [Advance(a, b, True), Reverse(a)]
        return
    out.append(Store(a, "local"))
    _revolve(a, b, min(slots, b - a - 1), out)
    out.append(Free(a, "local"))


def _revolve(a: int, b: int, slots: int, out: list[Action]) -> None:
    """Reverse steps b-1..a; checkpoint a is held locally and counts as one of ``slots``.

    Binomial checkpointing as Griewank's recursion, run on an explicit stack (no Python recursion,
    so any number of slots works): advance to the split, store it, reverse the right part with one
    slot less, then free the split, reload ``a`` and go on with the left part.
    """
    stack: list = [(a, b, slots)]
    while stack:
        item = stack.pop()
        if isinstance(item, list):  # actions that follow a finished right part
            out += item
            continue
        a, b, slots = item
        while b - a > 1 and slots == 1:
            out += [Advance(a, b - 1), Advance(b - 1, b, True), Reverse(b - 1), Load(a, "local")]
            b -= 1
        if b - a > 1:
            m = _revolve_split(b - a, slots)
            out += [Advance(a, a + m), Store(a + m, "local")]
            stack += [(a, a + m, slots), [Free(a + m, "local"), Load(a, "local")], (a + m, b, slots - 1)]
            continue
        out += [Advance(a, b, True), Reverse(a)]


def _revolve_split(l: int, s: int) -> int:
    """Steps to advance before taking the next checkpoint, reversing ``l`` steps
    with ``s`` slots at Griewank's minimal cost.

    This is the largest optimal choice, from Fig. 4 of Griewank and Walther
    (2000); tests check it against exhaustive search.
    """
    if s >= l - 1:
        return 1
    if s == 1:
        return l - 1
    t = _repetitions(l, s)
    b = beta
    if l <= b(s, t - 1) + b(s - 1, t - 2):
        return l - b(s, t - 1) + b(s, t - 2)
    if l <= b(s, t - 1) + b(s - 2, t - 1) + b(s - 1, t - 2):
        return b(s, t - 2) + b(s - 1, t - 2)
    if l <= b(s, t - 1) + b(s - 1, t - 1) + b(s - 2, t - 1):
        return l - b(s - 1, t - 1) - b(s - 2, t - 1)
    return b(s, t - 1)


def _revolve_counts(l: int, s: int) -> tuple[int, int, int]:
    """(evaluations, local stores, local loads) of `_revolve` on ``l`` steps (without Python recursion)."""
    pending = [(l, s)]
    while pending:
        l1, s1 = pending[-1]
        if l1 == 1 or s1 == 1:
            pending.pop()
            _revolve_counts_base(l1, s1)
            continue
        m = _revolve_split(l1, s1)
        missing = [key for key in ((l1 - m, s1 - 1), (m, s1)) if not _cached(key)]
        if missing:
            pending += missing
            continue
        pending.pop()
        _COUNTS[(l1, s1)] = _combine(m, _COUNTS[(l1 - m, s1 - 1)], _COUNTS[(m, s1)])
    return _COUNTS[(l, s)]


_COUNTS: dict[tuple[int, int], tuple[int, int, int]] = {}


def _cached(key: tuple[int, int]) -> bool:
    return key in _COUNTS or (key[0] == 1 or key[1] == 1) and _revolve_counts_base(*key) is not None


def _revolve_counts_base(l: int, s: int) -> tuple[int, int, int]:
    value = (1, 0, 0) if l == 1 else (l * (l + 1) // 2, 0, l - 1)
    _COUNTS[(l, s)] = value
    return value


def _combine(m: int, right: tuple[int, int, int], left: tuple[int, int, int]) -> tuple[int, int, int]:
    return m + right[0] + left[0], 1 + right[1] + left[1], 1 + right[2] + left[2]
