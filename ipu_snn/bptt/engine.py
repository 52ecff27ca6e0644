"""The BPTT engine: runs a checkpoint schedule for any recurrent cell.

``scan(cell, params, state0, xs, schedule)`` unrolls
``state, y_t = cell(params, state, xs[t])`` over the leading time dimension of
``xs`` and returns ``(ys, final_state)``. It is one `torch.autograd.Function`,
so ``loss.backward()`` works as usual, and its gradients with respect to
``params``, ``state0`` and ``xs`` equal those of the plain unrolled loop. What is
kept for backward and what is recomputed is decided by the schedule
(`ipu_snn.bptt.schedules`); the engine only executes it:

* the forward phase of the schedule runs inside ``forward``: it produces every
  output, stores checkpoints and may tape steps;
* the backward phase runs inside ``backward``, carrying the adjoint of the
  current state from step T-1 down to 0 and calling ``torch.autograd.grad`` on
  one taped step at a time.

Contract for ``cell``: a pure function of its arguments (it must not modify
``params``, ``state`` or ``x_t`` in place) returning a tuple of tensors of fixed
shapes and a tensor ``y_t``. Randomness is allowed: the CPU random generator
state (and that of every CUDA device the inputs live on) is saved with each
checkpoint and replayed when a segment is recomputed, so dropout masks match the
forward pass, and the generators are put back as they were after ``backward``.
``backward`` runs once (``retain_graph`` cannot replay a consumed schedule) and
is not itself differentiable.

Accounting: pass ``stats=ScanStats()`` to see peak bytes per tier. Local bytes
are local checkpoints plus taped steps. A taped step is counted as the bytes of
its outputs and of what autograd saved for it, each storage once, excluding its
input state (the previous step's output, a checkpoint, or ``state0``) and
``params`` and ``xs``, which the caller owns. The state being worked on (one
state) is not counted. With a constant-shaped cell this equals
`ipu_snn.bptt.schedules.predicted_local_bytes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch.autograd.function import once_differentiable

from ipu_snn.bptt.schedules import Advance, Free, Load, Reverse, Schedule, ScheduleError, Store, store_all
from ipu_snn.bptt.stores import CudaHostStore, HostStore, LocalStore, Tensors, Tier, tensors_bytes

Cell = Callable[[Tensors, Tensors, torch.Tensor], tuple[Tensors, torch.Tensor]]
ScheduleLike = Union[Schedule, Callable[[int], Schedule], None]
OffchipFactory = Callable[[int], Tier]


@dataclass
class ScanStats:
    """Measurements of one `scan`, filled in by its forward and then its backward.

    Byte counts follow the accounting described in the module docstring.
    ``step_evaluations`` counts every cell call, taped or not.
    """

    schedule: str = ""
    T: int = 0
    state_bytes: int = 0
    tape_bytes_per_step: int = 0
    peak_local_bytes: int = 0
    peak_offchip_bytes: int = 0
    peak_local_slots: int = 0
    peak_offchip_slots: int = 0
    peak_taped_steps: int = 0
    step_evaluations: int = 0
    forward_seconds: float = 0.0
    backward_seconds: float = 0.0


def scan(
    cell: Cell,
    params: Sequence[torch.Tensor],
    state0: Sequence[torch.Tensor],
    xs: torch.Tensor,
    schedule: ScheduleLike = None,
    *,
    offchip: OffchipFactory | None = None,
    stats: ScanStats | None = None,
    owned: Sequence[torch.Tensor] = (),
) -> tuple[torch.Tensor, Tensors]:
    """Run ``cell`` over ``xs`` (time first) and return ``(ys, final_state)``.

    ``schedule`` is a `Schedule` for ``T = xs.shape[0]``, a function from T to
    one, or None for `store_all`. ``offchip(capacity)`` makes the off-chip tier
    (default: `CudaHostStore` for CUDA states, `HostStore` otherwise).
    ``owned``: other tensors the caller owns that a step may read and keep
    (an input batch the cell slices itself); their bytes are not counted.
    """
    params, state0 = tuple(params), tuple(state0)
    T = xs.shape[0]
    if T < 1:
        raise ValueError("scan needs at least one time step (xs.shape[0] >= 1)")
    sched = _resolve(schedule, T)
    stats = ScanStats() if stats is None else stats
    stats.schedule, stats.T = sched.name, T
    tensors = params + state0 + (xs,)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        # nothing to differentiate: run the plain loop and keep nothing
        return _run_inference(cell, params, state0, xs, stats)
    run = _Run(cell, sched, params, state0, xs, offchip or _default_offchip(state0), stats, tuple(owned))
    out = _ScanFunction.apply(run, *tensors)
    return out[0], tuple(out[1:])


def _resolve(schedule: ScheduleLike, T: int) -> Schedule:
    sched = store_all(T) if schedule is None else schedule
    if not isinstance(sched, Schedule):
        sched = sched(T)
    if sched.T != T:
        raise ScheduleError(f"schedule {sched.name} is for T={sched.T} but xs has T={T} steps")
    return sched


def _default_offchip(state0: Tensors) -> OffchipFactory:
    cuda = next((t.device for t in state0 if t.is_cuda), None)
    if cuda is None:
        return lambda capacity: HostStore()
    return lambda capacity: CudaHostStore(capacity, cuda)


def _run_inference(cell: Cell, params: Tensors, state0: Tensors, xs: torch.Tensor, stats: ScanStats):
    start = time.perf_counter()
    state, ys = state0, None
    with torch.no_grad():
        for n in range(xs.shape[0]):
            state, y = cell(params, state, xs[n])
            ys = _record(ys, n, y, xs.shape[0])
    stats.step_evaluations = xs.shape[0]
    stats.forward_seconds = time.perf_counter() - start
    return ys, tuple(state)


def _record(ys: torch.Tensor | None, n: int, y: torch.Tensor, T: int) -> torch.Tensor:
    if ys is None:
        ys = y.new_empty((T,) + tuple(y.shape))
    ys[n].copy_(y.detach())
    return ys


def _differentiable(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


class _RngStates:
    """Random generator states at the start of checkpointed steps.

    Recomputing a segment from checkpoint n must draw the same random numbers
    as the forward pass did, so the CPU generator (and the CUDA generator of
    each device the inputs live on) is captured when state n is stored and
    restored when it is loaded. Sequential steps then consume the generators
    exactly as in the forward pass.
    """

    def __init__(self, cuda_devices: list[int]) -> None:
        self._cuda = cuda_devices
        self._states: dict[int, tuple] = {}

    def capture(self) -> tuple:
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self._cuda]

    def restore(self, snapshot: tuple) -> None:
        cpu, cuda = snapshot
        torch.set_rng_state(cpu)
        for d, s in zip(self._cuda, cuda):
            torch.cuda.set_rng_state(s, d)

    def remember(self, n: int) -> None:
        # a checkpoint stored again (say, in a second tier) sees the same state
        if n not in self._states:
            self._states[n] = self.capture()

    def replay(self, n: int) -> None:
        self.restore(self._states[n])

    def forget(self, n: int) -> None:
        self._states.pop(n, None)


@dataclass
class _Tape:
    """One taped step: its autograd graph, reachable from ``outputs``."""

    state_in: Tensors
    x: torch.Tensor
    outputs: tuple[torch.Tensor, ...]  # (y, *new_state)
    nbytes: int


class _Run:
    """Executes one schedule: the forward phase, then (once) the backward phase."""

    def __init__(
        self,
        cell: Cell,
        schedule: Schedule,
        params: Tensors,
        state0: Tensors,
        xs: torch.Tensor,
        offchip: OffchipFactory,
        stats: ScanStats,
        owned: Tensors = (),
    ) -> None:
        self.cell, self.schedule, self.stats = cell, schedule, stats
        self.T = xs.shape[0]
        self.params = tuple(p.detach().requires_grad_(p.requires_grad and _differentiable(p)) for p in params)
        self.xs = xs.detach()
        self.x_needs_grad = xs.requires_grad and _differentiable(xs)
        self.current = 0
        self.state = tuple(t.detach() for t in state0)
        self.tiers: dict[str, Tier] = {"local": LocalStore()}
        if schedule.max_offchip_slots:
            self.tiers["offchip"] = offchip(schedule.max_offchip_slots)
        self.tapes: dict[int, _Tape] = {}
        self.tape_bytes = 0
        # storages the caller owns: a tape that saves them holds no extra memory
        self.caller_storages = {t.untyped_storage().data_ptr() for t in params + (xs,) + owned}
        devices = {t.device.index or 0 for t in params + state0 + (xs,) if t.is_cuda}
        self.rng = _RngStates(sorted(devices))
        self.ys: torch.Tensor | None = None
        self.consumed = False

    # -- phases ------------------------------------------------------------

    def forward(self) -> tuple[torch.Tensor, Tensors]:
        start = time.perf_counter()
        end = self.schedule.forward_phase_end
        for i in range(end):
            self._execute(self.schedule.actions[i], in_forward=True)
        if self.current != self.T:
            raise ScheduleError(f"{self.schedule.name}: the forward phase stops at state {self.current}, not T")
        self.stats.state_bytes = tensors_bytes(self.state)
        self.stats.forward_seconds = time.perf_counter() - start
        # ys becomes an output of the autograd node that owns this run; keeping
        # it here would make a reference cycle through the graph
        ys, self.ys = self.ys, None
        return ys, self.state

    def backward(self, grad_ys: torch.Tensor, grad_final: Sequence[torch.Tensor | None]):
        if self.consumed:
            raise RuntimeError(
                "scan: backward through the same scan twice is not supported; the schedule frees its "
                "checkpoints as it goes. Run the forward again instead of using retain_graph=True."
            )
        self.consumed = True
        start = time.perf_counter()
        rng_before_backward = self.rng.capture()
        self.grad_ys = grad_ys
        self.adjoint = tuple(
            g if g is not None or not _differentiable(s) else torch.zeros_like(s)
            for g, s in zip(grad_final, self.state)
        )
        self.grad_params = [torch.zeros_like(p) if p.requires_grad else None for p in self.params]
        self.grad_xs = torch.zeros_like(self.xs) if self.x_needs_grad else None
        actions = self.schedule.actions[self.schedule.forward_phase_end :]
        prefetch = _offchip_prefetch_plan(actions)
        if prefetch[0] is not None:
            self.tiers["offchip"].prefetch(prefetch[0])
        try:
            for i, action in enumerate(actions):
                self._execute(action, in_forward=False)
                if isinstance(action, Load) and action.tier == "offchip" and prefetch[i + 1] is not None:
                    self.tiers["offchip"].prefetch(prefetch[i + 1])
            grads = self.grad_params, self.adjoint, self.grad_xs
        finally:
            self.rng.restore(rng_before_backward)
            self._release()
        self.stats.backward_seconds = time.perf_counter() - start
        return grads

    def _release(self) -> None:
        for tier in self.tiers.values():
            tier.clear()
        self.tapes.clear()
        self.state = ()
        self.grad_ys = self.grad_params = self.adjoint = self.grad_xs = None

    # -- actions -----------------------------------------------------------

    def _execute(self, action, in_forward: bool) -> None:
        match action:
            case Advance(n0, n1, store_outputs):
                self._expect_current(n0, action)
                for n in range(n0, n1):
                    if store_outputs:
                        y = self._tape_step(n)
                    else:
                        with torch.no_grad():
                            state, y = self.cell(self.params, self.state, self.xs[n])
                        self.state = tuple(state)
                    self.current = n + 1
                    self.stats.step_evaluations += 1
                    if in_forward:
                        self.ys = _record(self.ys, n, y, self.T)
            case Reverse(n):
                self._reverse(n)
            case Store(n, tier):
                self._expect_current(n, action)
                self.rng.remember(n)
                self.tiers[tier].store(n, self.state)
            case Load(n, tier):
                self.state = self.tiers[tier].load(n)
                self.current = n
                self.rng.replay(n)
            case Free(n, tier):
                self.tiers[tier].free(n)
                if not any(n in t for t in self.tiers.values()):
                    self.rng.forget(n)
            case _:
                raise ScheduleError(f"unknown action {action!r}")
        self._account()

    def _expect_current(self, n: int, action) -> None:
        if self.current != n:
            raise ScheduleError(f"{self.schedule.name}: {action} but the current state is {self.current}")

    def _tape_step(self, n: int) -> torch.Tensor:
        """Run step n recording its graph, and count the bytes that graph keeps."""
        state_in = tuple(t.detach().requires_grad_(_differentiable(t)) for t in self.state)
        x = self.xs[n].detach().requires_grad_(self.x_needs_grad)
        saved: list[torch.Tensor] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t)
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
            state, y = self.cell(self.params, state_in, x)
        state = tuple(state)
        # each storage once; the input state is the previous step's output, a checkpoint or the
        # caller's state0, all counted (or owned) elsewhere
        held: dict[int, int] = {}
        for t in (*saved, *state, y):
            st = t.untyped_storage()
            held[st.data_ptr()] = st.nbytes()
        for t in state_in:
            held.pop(t.untyped_storage().data_ptr(), None)
        nbytes = sum(n for ptr, n in held.items() if ptr not in self.caller_storages)
        self.tapes[n] = _Tape(state_in, x, (y,) + state, nbytes)
        self.tape_bytes += nbytes
        self.stats.tape_bytes_per_step = max(self.stats.tape_bytes_per_step, nbytes)
        self.state = tuple(t.detach() for t in state)
        self._account()
        return y

    def _reverse(self, n: int) -> None:
        """Backpropagate the output gradient of step n and the adjoint of state n+1."""
        tape = self.tapes.pop(n)
        self.tape_bytes -= tape.nbytes
        pairs = [
            (out, g)
            for out, g in zip(tape.outputs, (self.grad_ys[n],) + self.adjoint)
            if g is not None and out.requires_grad
        ]
        wanted = [t for t in tape.state_in if t.requires_grad]
        if self.x_needs_grad:
            wanted.append(tape.x)
        wanted += [p for p in self.params if p.requires_grad]
        grads: Sequence[torch.Tensor | None] = [None] * len(wanted)
        if pairs and wanted:
            outs, gouts = zip(*pairs)
            grads = torch.autograd.grad(outs, wanted, gouts, allow_unused=True)
        grads = iter(grads)
        self.adjoint = tuple(
            _or_zeros(next(grads), s) if s.requires_grad else None for s in tape.state_in
        )
        if self.x_needs_grad:
            g = next(grads)
            if g is not None:
                self.grad_xs[n] = g
        for acc in self.grad_params:
            if acc is not None:
                g = next(grads)
                if g is not None:
                    acc.add_(g)

    def _account(self) -> None:
        s = self.stats
        local = self.tiers["local"]
        s.peak_local_bytes = max(s.peak_local_bytes, local.bytes + self.tape_bytes)
        s.peak_local_slots = max(s.peak_local_slots, local.slots)
        s.peak_taped_steps = max(s.peak_taped_steps, len(self.tapes))
        if "offchip" in self.tiers:
            s.peak_offchip_bytes = self.tiers["offchip"].peak_bytes
            s.peak_offchip_slots = self.tiers["offchip"].peak_slots


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


def _or_zeros(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def _offchip_prefetch_plan(actions: Sequence) -> list[int | None]:
    """For each position i, the step of the first off-chip Load at or after i.

    After executing an off-chip Load the engine asks the store for the next
    one, so that copy overlaps the recomputation of the current segment.
    """
    plan: list[int | None] = [None] * (len(actions) + 1)
    for i in range(len(actions) - 1, -1, -1):
        a = actions[i]
        plan[i] = a.n if isinstance(a, Load) and a.tier == "offchip" else plan[i + 1]
    return plan


class _ScanFunction(torch.autograd.Function):
    """The whole unrolled recurrence as one autograd node."""

    @staticmethod
    def forward(ctx, run: _Run, *tensors: torch.Tensor):
        ctx.run = run
        ctx.n_params = len(run.params)
        ctx.n_state = len(run.state)
        ys, final = run.forward()
        # the final state may be an output of a taped step; hand out aliases so
        # autograd treats them as this node's outputs
        final = tuple(t.detach() for t in final)
        ctx.mark_non_differentiable(*[t for t in final if not _differentiable(t)])
        return (ys,) + final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor, *grad_final: torch.Tensor):
        run: _Run = ctx.run
        grad_params, grad_state0, grad_xs = run.backward(grad_ys, grad_final)
        return (None, *grad_params, *grad_state0, grad_xs)
