"""Checkpoint schedules: validity, Revolve's optimal counts, two-level search."""

import math
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.bptt.schedules import (
    Advance,
    Costs,
    Free,
    Load,
    Reverse,
    Schedule,
    ScheduleError,
    Store,
    beta,
    check_schedule,
    double,
    predicted_local_bytes,
    predicted_time,
    revolve,
    revolve_forward_steps,
    store_all,
    summarize,
    two_level_optimal,
    uniform,
)

FEW = settings(max_examples=40, deadline=None)


@lru_cache(maxsize=None)
def exhaustive_revolve(l: int, s: int) -> int:
    """Fewest forward steps to reverse l steps with s slots, by trying every split."""
    if l == 1:
        return 0
    if s == 1:
        return l * (l - 1) // 2
    return min(m + exhaustive_revolve(l - m, s - 1) + exhaustive_revolve(m, s) for m in range(1, l))


def closed_form(T: int, s: int) -> int:
    t = next(t for t in range(T + 1) if beta(s, t) >= T)
    return t * T - beta(s + 1, t - 1) if T > 1 else 0


# -- Revolve ------------------------------------------------------------------


def test_closed_form_is_the_exhaustive_optimum():
    for s in range(1, 6):
        for T in range(1, 45):
            assert closed_form(T, s) == exhaustive_revolve(T, s) == revolve_forward_steps(T, s), (T, s)


def test_revolve_schedules_reach_the_closed_form_for_small_cases():
    for s in range(1, 7):
        for T in range(1, 70):
            sched = revolve(T, s)
            check_schedule(sched)
            assert sched.forward_steps == closed_form(T, s), (T, s)
            assert sched.max_local_slots <= s


@FEW
@given(T=st.integers(1, 300), slots=st.integers(1, 12))
def test_revolve_invariants(T, slots):
    sched = revolve(T, slots)
    summary = check_schedule(sched)
    assert sched.forward_steps == closed_form(T, slots)
    assert summary.evaluations == sched.forward_steps + T  # every step is re-evaluated at its reverse
    assert sched.max_local_slots <= slots
    assert sched.max_offchip_slots == 0
    assert summary.peak_taped == 1


@pytest.mark.parametrize("T", [1, 2, 3, 10, 57])
def test_revolve_with_a_slot_per_step_matches_store_all_count(T):
    for slots in (T - 1, T, T + 5):
        if slots >= 1:
            assert revolve(T, slots).forward_steps == T - 1


def test_beta_is_binomial():
    assert [beta(2, t) for t in range(5)] == [1, 3, 6, 10, 15]
    assert beta(3, -1) == 0


# -- store_all / uniform --------------------------------------------------------


@FEW
@given(T=st.integers(1, 300))
def test_store_all(T):
    sched = store_all(T)
    summary = check_schedule(sched)
    assert sched.forward_steps == T - 1
    assert summary.evaluations == T
    assert (sched.max_local_slots, sched.max_offchip_slots) == (0, 0)
    assert summary.peak_taped == T


@FEW
@given(T=st.integers(1, 300), every=st.integers(1, 320))
def test_uniform(T, every):
    sched = uniform(T, every)
    summary = check_schedule(sched)
    segments = math.ceil(T / every)
    last = T - (segments - 1) * every
    # the first sweep evaluates everything, then every segment but the last is
    # recomputed once; each segment's last step is evaluated with its reverse
    assert summary.evaluations == T + (T - last)
    assert sched.forward_steps == summary.evaluations - segments
    assert sched.max_local_slots == segments - 1
    assert summary.peak_taped == min(every, T)


# -- double checkpointing -------------------------------------------------------


@FEW
@given(
    T=st.integers(1, 300),
    m=st.integers(1, 320),
    slots=st.integers(1, 8),
    inner=st.sampled_from(["revolve", "uniform"]),
)
def test_double(T, m, slots, inner):
    sched = double(T, m, slots, inner)
    summary = check_schedule(sched)
    segments = math.ceil(T / m)
    assert sched.max_offchip_slots == segments - 1
    assert summary.stores["offchip"] == summary.loads["offchip"] == segments - 1
    assert sched.max_local_slots <= slots
    if inner == "revolve":
        assert summary.peak_taped == 1
        full = segments - 1
        last = T - full * m
        # forward sweep over the full segments, then Revolve on every segment
        expected = full * m + full * closed_form(m, slots) + closed_form(last, slots)
        assert sched.forward_steps == expected


def test_double_with_uniform_inner_and_no_local_slots_tapes_whole_segments():
    sched = double(20, 6, 0, "uniform")
    summary = check_schedule(sched)
    assert sched.max_local_slots == 0
    assert summary.peak_taped == 6


def test_double_with_one_segment_is_revolve():
    assert double(40, 40, 3).actions == revolve(40, 3).actions


# -- two-level optimum ---------------------------------------------------------

COSTS = [
    Costs(step=1.0, reverse=2.0, offchip_write=5.0, offchip_read=5.0),
    Costs(step=1.0, reverse=2.0, offchip_write=0.1, offchip_read=0.1, local_write=0.01, local_read=0.01),
    Costs(step=1.0, reverse=1.0, offchip_write=40.0, offchip_read=60.0),
]


@pytest.mark.parametrize("costs", COSTS)
@pytest.mark.parametrize("T,local_slots,offchip_slots", [(1, 1, 0), (17, 1, 3), (40, 2, 5), (64, 3, 0), (90, 2, 100)])
def test_two_level_optimal_beats_every_periodic_candidate(costs, T, local_slots, offchip_slots):
    best = two_level_optimal(T, local_slots, offchip_slots, costs)
    check_schedule(best)
    assert best.max_local_slots <= local_slots
    assert best.max_offchip_slots <= offchip_slots
    best_time = predicted_time(best, costs)
    for m in range(1, T + 1):
        candidate = double(T, m, local_slots, "revolve")
        if candidate.max_offchip_slots <= offchip_slots:
            assert best_time <= predicted_time(candidate, costs) + 1e-9, m


def test_two_level_optimal_uses_offchip_only_when_it_pays():
    slow_offchip = Costs(step=1.0, offchip_write=1e6, offchip_read=1e6)
    assert two_level_optimal(200, 2, 50, slow_offchip).max_offchip_slots == 0
    free_offchip = Costs(step=1.0)
    fast = two_level_optimal(200, 2, 50, free_offchip)
    assert fast.max_offchip_slots > 0
    assert fast.forward_steps < revolve(200, 2).forward_steps


# -- costing -------------------------------------------------------------------


def test_predicted_time_counts_each_operation():
    costs = Costs(step=1.0, reverse=10.0, local_write=100.0, local_read=1000.0, offchip_write=1e4, offchip_read=1e5)
    assert predicted_time(store_all(5), costs) == 5 * 1 + 5 * 10
    s = summarize(double(10, 5, 1))
    expected = (
        s.evaluations + 10 * 10 + 100 * s.stores["local"] + 1000 * s.loads["local"] + 1e4 * 1 + 1e5 * 1
    )
    assert predicted_time(double(10, 5, 1), costs) == expected


def test_predicted_local_bytes():
    assert predicted_local_bytes(store_all(7), 100, 30) == 7 * 30
    # Revolve fills all its slots while taping one step
    assert predicted_local_bytes(revolve(100, 4), 100, 30) == 4 * 100 + 30
    assert predicted_local_bytes(uniform(10, 5), 100, 30) == 1 * 100 + 5 * 30


# -- the validator rejects broken schedules -------------------------------------


def make(T, actions, forward_steps=0, local=0, offchip=0):
    return Schedule("hand-made", T, tuple(actions), forward_steps, local, offchip)


@pytest.mark.parametrize(
    "actions,message",
    [
        ([Advance(0, 2, True), Reverse(0), Reverse(1)], "must be reversed next"),
        ([Advance(0, 2, True), Reverse(1)], "never reversed"),
        ([Advance(0, 1), Advance(1, 2, True), Reverse(1), Reverse(0)], "not taped"),
        ([Advance(0, 2, True), Reverse(1), Reverse(0), Reverse(0)], "must be reversed next"),
        ([Advance(0, 2), Advance(1, 2, True)], "current state is 2"),
        ([Advance(0, 1, True), Reverse(1)], "forward phase ends at state 1"),
        ([Advance(0, 2, True), Reverse(1), Load(0, "local")], "not held"),
        ([Store(0), Advance(0, 2, True), Reverse(1), Free(0), Load(0)], "not held"),
        ([Store(0), Advance(0, 2, True), Reverse(1), Reverse(0)], "left behind"),
        ([Store(0), Store(0)], "already held"),
        ([Store(0, "disk")], "unknown tier"),
        ([Load(0)], "may not load"),
        ([Advance(0, 2, True), Advance(0, 1)], "current state is 2"),
        ([Store(0), Advance(0, 2, True), Reverse(1), Load(0), Advance(0, 1, True)], "already taped"),
    ],
)
def test_check_schedule_rejects(actions, message):
    with pytest.raises(ScheduleError, match=message):
        check_schedule(make(2, actions))


def test_check_schedule_rejects_wrong_declarations():
    good = list(revolve(10, 2).actions)
    with pytest.raises(ScheduleError, match="declares"):
        check_schedule(make(10, good, forward_steps=3, local=2))
    with pytest.raises(ScheduleError, match="declares"):
        check_schedule(make(10, good, forward_steps=revolve(10, 2).forward_steps, local=1))


@pytest.mark.parametrize(
    "call",
    [
        lambda: store_all(0),
        lambda: uniform(10, 0),
        lambda: revolve(10, 0),
        lambda: double(10, 0, 2),
        lambda: double(10, 3, 0, "revolve"),
        lambda: double(10, 3, 1, "binomial"),
        lambda: two_level_optimal(10, 0, 3, Costs()),
        lambda: two_level_optimal(10, 1, -1, Costs()),
    ],
)
def test_bad_arguments_are_value_errors(call):
    with pytest.raises(ValueError):
        call()


def test_forward_phase_end_is_the_first_reverse():
    sched = uniform(10, 4)
    end = sched.forward_phase_end
    assert isinstance(sched.actions[end], Reverse)
    assert not any(isinstance(a, (Reverse, Load)) for a in sched.actions[:end])
    assert sum(a.n1 - a.n0 for a in sched.actions[:end] if isinstance(a, Advance)) == 10
    assert Free(0) in sched.actions and Store(0) in sched.actions
