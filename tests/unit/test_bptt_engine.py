"""The BPTT engine: exact gradients for every schedule, RNG replay, accounting, stores."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.bptt import (
    Costs,
    CudaHostStore,
    HostStore,
    LocalStore,
    ScanStats,
    ScheduleError,
    double,
    predicted_local_bytes,
    revolve,
    scan,
    store_all,
    summarize,
    two_level_optimal,
    uniform,
)

DT = torch.float64
B, I, N = 2, 3, 4


def spike(v):
    """Heaviside forward, sigmoid-derivative backward (straight-through surrogate)."""
    s = torch.sigmoid(4.0 * v)
    return (v > 0).to(v.dtype) + (s - s.detach())


def lif(params, state, x):
    W, U, decay = params
    v, z = state
    v = decay * v + x @ W + z @ U - z  # soft reset by the previous spike
    z = spike(v - 0.5)
    return (v, z), z


def dropout_lif(params, state, x):
    W, U, decay = params
    v, z = state
    v = decay * v + F.dropout(x @ W, p=0.3, training=True) + z @ U - z
    z = spike(v - 0.5)
    return (v, z), z


def problem(T, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=DT)).to(device).requires_grad_()

    params = (r(I, N), r(N, N, scale=0.5), torch.tensor(0.8, dtype=DT, device=device, requires_grad=True))
    state0 = (r(B, N), (torch.rand(B, N, generator=g, dtype=DT) > 0.5).to(DT).to(device).requires_grad_())
    xs = r(T, B, I)
    weights = (torch.randn(T, B, N, generator=g, dtype=DT).to(device), torch.randn(B, N, generator=g, dtype=DT).to(device))
    return params, state0, xs, weights


def unrolled(cell, params, state0, xs):
    state, ys = state0, []
    for t in range(xs.shape[0]):
        state, y = cell(params, state, xs[t])
        ys.append(y)
    return torch.stack(ys), state


def loss_of(kind, ys, state, weights):
    wy, ws = weights
    if kind == "every_step":
        return (wy * ys).sum()
    if kind == "last_step":
        return (wy[-1] * ys[-1]).sum()
    if kind == "final_state":
        return (ws * state[0]).sum()
    return (wy * ys).sum() + (ws * state[0]).sum() + (state[1] * state[0]).sum()


def gradients(cell, schedule, T, kind="mixed", seed=0, stats=None, **scan_kwargs):
    """(reference grads, engine grads, reference ys, engine ys) w.r.t. params, xs and state0."""
    params, state0, xs, weights = problem(T, seed)
    inputs = params + (xs,) + state0
    torch.manual_seed(1234)
    ys_ref, s_ref = unrolled(cell, params, state0, xs)
    ref = torch.autograd.grad(loss_of(kind, ys_ref, s_ref, weights), inputs, allow_unused=True)
    torch.manual_seed(1234)
    ys, s = scan(cell, params, state0, xs, schedule, stats=stats, **scan_kwargs)
    got = torch.autograd.grad(loss_of(kind, ys, s, weights), inputs, allow_unused=True)
    return ref, got, ys_ref, ys


def assert_same(ref, got):
    for r, g in zip(ref, got):
        if r is None:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@st.composite
def schedules(draw):
    T = draw(st.integers(1, 300))
    kind = draw(st.sampled_from(["store_all", "uniform", "revolve", "double", "double_uniform", "two_level"]))
    if kind == "store_all":
        return T, store_all(T)
    if kind == "uniform":
        return T, uniform(T, draw(st.integers(1, T + 3)))
    slots = draw(st.integers(1, 6))
    if slots == 1:
        T = min(T, 40)  # one slot costs T^2/2 steps
    if kind == "revolve":
        return T, revolve(T, slots)
    m = draw(st.integers(1, T + 3))
    if kind == "double":
        return T, double(T, m, slots, "revolve")
    if kind == "double_uniform":
        return T, double(T, m, slots - 1, "uniform")
    costs = Costs(offchip_write=draw(st.floats(0, 5)), offchip_read=draw(st.floats(0, 5)))
    return T, two_level_optimal(T, slots, draw(st.integers(0, 20)), costs)


@settings(max_examples=60, deadline=None)
@given(case=schedules(), kind=st.sampled_from(["every_step", "last_step", "final_state", "mixed"]))
def test_gradients_equal_the_unrolled_loop(case, kind):
    T, schedule = case
    ref, got, ys_ref, ys = gradients(lif, schedule, T, kind)
    torch.testing.assert_close(ys, ys_ref, rtol=0, atol=0)
    assert_same(ref, got)


@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("make", [store_all, lambda T: revolve(T, 1), lambda T: double(T, 2, 1)])
def test_tiny_sequences(T, make):
    ref, got, _, _ = gradients(lif, make(T), T)
    assert_same(ref, got)


def test_schedule_may_be_a_function_of_T():
    ref, got, _, _ = gradients(lif, lambda T: revolve(T, 3), 23)
    assert_same(ref, got)


def test_default_schedule_is_store_all_without_recomputation():
    stats = ScanStats()
    ref, got, _, _ = gradients(lif, None, 31, stats=stats)
    assert_same(ref, got)
    assert stats.schedule == "store_all"
    assert stats.step_evaluations == 31


def test_partial_requires_grad():
    params, state0, xs, weights = problem(20)
    W, U, decay = params
    frozen = (W, U.detach(), decay.detach())
    xs_plain, v0 = xs.detach(), state0[0].detach()
    ys_ref, s_ref = unrolled(lif, frozen, (v0, state0[1]), xs_plain)
    ref = torch.autograd.grad(loss_of("mixed", ys_ref, s_ref, weights), (W, state0[1]))
    ys, s = scan(lif, frozen, (v0, state0[1]), xs_plain, revolve(20, 2))
    got = torch.autograd.grad(loss_of("mixed", ys, s, weights), (W, state0[1]))
    assert_same(ref, got)


def test_integer_state_is_carried_but_not_differentiated():
    def counting(params, state, x):
        (v, z), _ = lif(params, state[:2], x)
        count = state[2] + 1
        return (v, z, count), z * count.to(z.dtype)

    params, state0, xs, weights = problem(12)
    start = torch.zeros((), dtype=torch.int64)
    ys_ref, s_ref = unrolled(counting, params, state0 + (start,), xs)
    ys, s = scan(counting, params, state0 + (start,), xs, revolve(12, 2))
    assert int(s[2]) == 12 and not s[2].requires_grad
    ref = torch.autograd.grad((weights[0] * ys_ref).sum(), params)
    got = torch.autograd.grad((weights[0] * ys).sum(), params)
    assert_same(ref, got)


def test_without_grad_it_is_a_plain_loop():
    params, state0, xs, _ = problem(15)
    with torch.no_grad():
        ys_ref, s_ref = unrolled(lif, params, state0, xs)
        stats = ScanStats()
        ys, s = scan(lif, params, state0, xs, revolve(15, 2), stats=stats)
    torch.testing.assert_close(ys, ys_ref, rtol=0, atol=0)
    assert stats.step_evaluations == 15 and stats.peak_local_bytes == 0


def test_wrong_length_schedule_is_rejected():
    params, state0, xs, _ = problem(10)
    with pytest.raises(ScheduleError, match="T=9"):
        scan(lif, params, state0, xs, revolve(9, 2))


def test_second_backward_is_refused():
    params, state0, xs, _ = problem(6)
    ys, _ = scan(lif, params, state0, xs, revolve(6, 2))
    ys.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        ys.sum().backward()


# -- random number replay ------------------------------------------------------


@pytest.mark.parametrize(
    "schedule", [store_all(40), uniform(40, 7), revolve(40, 3), double(40, 9, 2), double(40, 6, 1, "uniform")]
)
def test_dropout_masks_replay_on_recomputation(schedule):
    ref, got, ys_ref, ys = gradients(dropout_lif, schedule, 40)
    torch.testing.assert_close(ys, ys_ref, rtol=0, atol=0)
    assert_same(ref, got)


def test_backward_leaves_the_random_generator_as_it_was():
    params, state0, xs, _ = problem(30)
    torch.manual_seed(7)
    ys, _ = scan(dropout_lif, params, state0, xs, revolve(30, 2))
    before = torch.get_rng_state()
    ys.sum().backward()
    assert torch.equal(torch.get_rng_state(), before)


# -- accounting ----------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [store_all(50), uniform(50, 8), revolve(50, 1), revolve(50, 4), double(50, 10, 2), double(50, 7, 2, "uniform")],
)
def test_measured_memory_equals_the_schedule_prediction(schedule):
    stats = ScanStats()
    gradients(lif, schedule, 50, stats=stats)
    state_bytes = B * N * 8 * 2
    assert stats.state_bytes == state_bytes
    assert stats.tape_bytes_per_step >= state_bytes  # a step's tape holds at least its new state
    summary = summarize(schedule)
    assert stats.peak_local_bytes == predicted_local_bytes(schedule, state_bytes, stats.tape_bytes_per_step)
    assert stats.peak_local_slots == schedule.max_local_slots
    assert stats.peak_offchip_slots == schedule.max_offchip_slots
    assert stats.peak_offchip_bytes == schedule.max_offchip_slots * state_bytes
    assert stats.peak_taped_steps == summary.peak_taped
    assert stats.step_evaluations == summary.evaluations


def test_offchip_checkpoints_are_prefetched_before_they_are_loaded():
    events = []

    class Recording(HostStore):
        def prefetch(self, n):
            events.append(("prefetch", n))

        def _get(self, n):
            events.append(("load", n))
            return super()._get(n)

    ref, got, _, _ = gradients(lif, double(30, 7, 2), 30, offchip=lambda capacity: Recording())
    assert_same(ref, got)
    loads = [n for what, n in events if what == "load"]
    assert loads == [21, 14, 7, 0]
    for n in loads:
        assert events.index(("prefetch", n)) < events.index(("load", n))
    # each prefetch is issued while the previous segment is still to be recomputed
    assert events[:3] == [("prefetch", 21), ("load", 21), ("prefetch", 14)]


# -- stores --------------------------------------------------------------------


def test_local_store_keeps_references_and_counts_bytes():
    store = LocalStore()
    a = (torch.zeros(3, dtype=DT), torch.zeros(2, dtype=torch.float32))
    store.store(4, a)
    store.store(9, a[:1])
    assert store.load(4)[0] is a[0]
    assert (store.bytes, store.slots, 4 in store, 5 in store) == (24 + 8 + 24, 2, True, False)
    store.free(4)
    assert (store.bytes, store.peak_bytes, store.peak_slots) == (24, 56, 2)
    with pytest.raises(KeyError):
        store.load(4)
    with pytest.raises(KeyError):
        store.store(9, a)


def test_host_store_copies_both_ways():
    store = HostStore()
    x = torch.arange(4.0)
    store.store(0, (x,))
    x.add_(100)
    y = store.load(0)[0]
    y.add_(1)
    assert torch.equal(store.load(0)[0], torch.arange(4.0))
    assert store.bytes == 16
    store.clear()
    assert (store.bytes, store.slots, store.peak_bytes) == (0, 0, 16)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_host_store_round_trip_and_slot_reuse():
    store = CudaHostStore(capacity=2)
    a = torch.randn(5, 3, device="cuda")
    b = torch.randn(5, 3, device="cuda")
    store.store(0, (a,))
    store.store(1, (b,))
    store.prefetch(1)
    assert torch.equal(store.load(1)[0], b)
    store.free(1)
    c = torch.randn(5, 3, device="cuda")
    store.store(2, (c,))  # reuses the freed pinned buffer
    assert torch.equal(store.load(0)[0], a)
    assert torch.equal(store.load(2)[0], c)
    assert store.bytes == 2 * 5 * 3 * 4 and store.reserved_bytes == 2 * 5 * 3 * 4
    with pytest.raises(RuntimeError, match="full"):
        store.store(3, (c,))


@cuda
def test_cuda_engine_with_offchip_checkpoints_and_dropout():
    T = 40
    params, state0, xs, weights = problem(T, device="cuda")
    inputs = params + (xs,) + state0
    torch.manual_seed(3)
    ys_ref, s_ref = unrolled(dropout_lif, params, state0, xs)
    ref = torch.autograd.grad(loss_of("mixed", ys_ref, s_ref, weights), inputs)
    torch.manual_seed(3)
    stats = ScanStats()
    ys, s = scan(dropout_lif, params, state0, xs, double(T, 8, 2), stats=stats)
    got = torch.autograd.grad(loss_of("mixed", ys, s, weights), inputs)
    assert_same(ref, got)
    assert stats.peak_offchip_slots == 4
