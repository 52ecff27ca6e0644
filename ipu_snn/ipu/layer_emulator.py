"""A tile-by-tile CPU emulator of one spiking layer over T steps, forward and backward, under the
plan's BPTT schedule.

It runs a TilePlan's population (a LIF, recurrent LIF or ALIF layer) the way
ipu_snn.ipu.tiles maps it: each tile owns a range of the layer's neurons, the
weight columns ``W[:, own]`` of every matrix feeding them, their state and what
the schedule keeps of them. Time steps run as bulk-synchronous supersteps,
compute then exchange, and the list phases walk the batch in the plan's sample
passes:

forward, step t
    exchange  the host's input list x_t and the layer's own list z_{t-1} (built
              by the selecting tiles at the end of step t-1) are broadcast to
              every tile of the layer, one sample pass at a time;
    compute   each tile sums its columns of both matmuls into its neurons' input
              current (the shared C++ core, ``ipu_snn::spike_matmul_fwd``), then
              updates its own neurons with the fused neuron kernel
              (``ipu_snn::neuron_step_fwd``, the C++ core of custom_ops/include/
              neuron_core.h), keeping z as bits and the surrogate derivative d
              where the window is taped;
    exchange  spike select: every owner tile sends its z bits of sample b to the
              selecting tile ``b mod tiles``,
    compute   which compacts them into the list row of sample b
              (``ipu_snn::compact_spikes``).
backward, step t = T-1 .. 0
    select + exchange  z_t is rebuilt from the bits history and its list goes to
              the layer's own tiles, which take the gradient of their spikes from
              the consumers' values at the listed slots (the sparse backward);
    compute   the fused neuron backward (``ipu_snn::neuron_step_bwd``) turns it
              and the carried grad_v / grad_a into the input-current gradient;
    exchange + compute  per pass: x_t's and the rebuilt z_{t-1}'s lists are
              broadcast; each tile forms the weight gradient of its columns
              (local) and its partial input gradient at the listed slots; the
              partials are reduce-scattered over the tiles and the summed values
              all-gathered to the presynaptic owners (for z_{t-1}: these same
              tiles, which add them to the gradient of step t-1's spikes).

The steps run in the windows of the plan's time loop (``plan.time``), and its
schedule's actions over the windows are executed as ipu_snn.bptt.engine does
for the CPU: ``Advance`` runs windows forward, taping them (their history on the
tiles) or not; ``Store``/``Load``/``Free`` keep window-boundary checkpoints
(each tile's v, a and last spikes as bits) on the tiles for the local tier and
in a `StreamingMemory` for the off-chip tier (nothing of them on the tiles);
``Reverse`` runs a taped window's backward, carrying the adjoint of its
starting state (grad_v, grad_a and the gradient of the spikes it started from)
to the window before.

Every buffer a tile would hold is a real tensor here and is charged to that
tile, with its kind as the plan names it, so the peak of every tile can be set
against the plan's account and against its SRAM (TileOverflowError). What the
emulator does not hold, the optimizer's slots and the estimated code, it
reserves from the plan. Bytes crossing tiles, and moved to and from streaming
memory, are counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ipu_snn.bptt import Advance, Free, Load, Reverse, Store
from ipu_snn.errors import UserError
from ipu_snn.ipu.emulator import Tile, hold_list, one_thread, reduce_scatter, release_list, scatter_values
from ipu_snn.ipu.tiles import INDEX_BYTES, MatmulPlan, PopulationPlan, TilePlan, chunk_sizes
from ipu_snn.core.bits import unpack_spikes
from ipu_snn.neuron.ops import neuron_step_bwd, neuron_step_fwd
from ipu_snn.ops.reference import listed_mask

#: What the plan counts on a layer's tiles that the emulator does not hold itself.
RESERVED_KINDS = ("optimizer", "code")


@dataclass(frozen=True)
class LayerParams:
    """One spiking layer's parameters (detached), as its tiles hold them.

    ``beta`` and ``rho`` are the raw parameters; like the layer, the neuron
    update uses them clamped to [0, 1].
    """

    w_in: Tensor  # [n_in, n]
    b_in: Tensor  # [n]
    w_rec: Tensor | None  # [n, n]
    beta: Tensor  # [n]
    rho: Tensor | None  # [n] (ALIF)
    model: str = "lif"  # the neuron-model registry's name
    threshold: float = 1.0
    adapt_strength: float = 0.0
    reset: str = "subtract"
    surrogate: str = "fast_sigmoid"
    scale: float = 10.0
    learn_decay: bool = False

    @classmethod
    def of(cls, layer) -> "LayerParams":
        """From an ipu_snn.layers.SpikingLayer."""
        spec = layer.spec
        if not spec.detach_reset:
            raise ValueError("the tile emulator runs the fused neuron backward, which needs detach_reset: true")
        return cls(
            w_in=layer.fc.weight.detach(), b_in=layer.fc.bias.detach(),
            w_rec=None if layer.rec is None else layer.rec.weight.detach(),
            beta=layer.beta.detach(), rho=layer.rho.detach() if spec.neuron.decays else None, model=spec.model,
            threshold=spec.threshold, adapt_strength=spec.adapt_strength, reset=spec.reset,
            surrogate=spec.surrogate, scale=spec.scale, learn_decay=isinstance(layer.beta, torch.nn.Parameter),
        )


class StreamingMemory:
    """The off-chip tier: checkpoints by window index, each a copy of every tile's share, held off the
    tiles. Counts its bytes (and their peak) and the bytes moved in and out, and refuses more than its
    capacity (the device spec's streaming memory)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.held: dict[int, dict[int, dict[str, Tensor]]] = {}
        self.bytes = self.peak_bytes = self.moved_bytes = 0

    @staticmethod
    def _size(checkpoint: dict[int, dict[str, Tensor]]) -> int:
        return sum(t.numel() * t.element_size() for parts in checkpoint.values() for t in parts.values())

    def store(self, n: int, checkpoint: dict[int, dict[str, Tensor]]) -> None:
        size = self._size(checkpoint)
        if self.bytes + size > self.capacity:
            raise UserError(f"streaming memory is full: checkpoint {n} ({size} B) on top of {self.bytes} B exceeds "
                            f"its {self.capacity} B")
        self.held[n] = {tile: {k: t.clone() for k, t in parts.items()} for tile, parts in checkpoint.items()}
        self.bytes += size
        self.moved_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def load(self, n: int) -> dict[int, dict[str, Tensor]]:
        self.moved_bytes += self._size(self.held[n])
        return self.held[n]

    def free(self, n: int) -> None:
        self.bytes -= self._size(self.held.pop(n))


@dataclass
class LayerEmulation:
    z: Tensor  # [T, B, n] the layer's spikes
    grads: dict[str, Tensor]  # w_in, b_in, w_rec; beta, rho with learned decays
    grad_input: Tensor | None  # [T, B, n_in] at the input lists' listed slots (None: host input)
    tiles_used: int
    peak_tile_bytes: int
    peak_by_kind: dict[str, int]  # of the fullest tile
    tile_peaks: dict[int, int]
    kept_peaks: dict[int, int]  # per tile, the most bytes of taped windows and local checkpoints at once
    exchange_bytes_forward: int  # per time step run forward (recomputation included), averaged
    exchange_bytes_backward: int  # per time step reversed, averaged
    supersteps: int
    streaming_peak_bytes: int = 0  # the most checkpoint bytes held in streaming memory at once
    streaming_moved_bytes: int = 0  # written and read back over the iteration
    steps_evaluated: int = 0  # time steps run forward, recomputation included


@dataclass
class _Own:
    """What one tile holds of the layer."""

    tile: Tile
    begin: int
    end: int
    weights: dict[str, Tensor]  # per source name: W[:, own]
    bias: Tensor
    beta: Tensor  # clamped, as the neuron update uses it
    rho: Tensor | None
    grads: dict[str, Tensor]
    v: Tensor | None = None  # the live state
    a: Tensor | None = None
    bits: Tensor | None = None  # the last step's spikes as bits (the next step's recurrent input)
    gv: Tensor | None = None  # the adjoint carried through backward
    ga: Tensor | None = None
    tapes: dict[int, dict] = field(default_factory=dict)  # taped windows: start bits and per-step history

    @property
    def n(self) -> int:
        return self.end - self.begin


class _Counter:
    def __init__(self):
        self.forward = self.backward = self.supersteps = self.steps_forward = 0


def _clamped(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(0.0, 1.0)


def _decay_grad(raw: Tensor, grad: Tensor) -> Tensor:
    # clamp(0, 1) passes the gradient where 0 <= raw <= 1, as autograd's clamp does.
    return torch.where((raw >= 0) & (raw <= 1), grad, torch.zeros_like(grad))


@one_thread()
def emulate_layer(
    plan: TilePlan,
    population: str,
    params: LayerParams,
    x: Tensor,
    grad_z: Tensor | None,
    *,
    saved_dtype: torch.dtype | None = None,
    backend: str = "cpu",
) -> LayerEmulation:
    """Run one layer of the plan over its T steps, tile by tile; backward too, under the plan's schedule,
    when ``grad_z`` is given.

    Args:
        population: the plan's name of the layer (``"layer0"``, ...).
        x: [T, B, n_in] 0/1 input spikes (compacted on the host, or by the
            previous layer's selecting tiles, to the plan's capacity); T is the
            plan's (``plan.time.steps``).
        grad_z: [T, B, n] gradient with respect to the layer's spikes. As the
            consumers' sparse input gradient delivers it, only its entries at
            the listed slots of each z_t (the neurons that fired) are used.
        saved_dtype: the dtype of the stored d (default: the state dtype; the
            plan's ``surrogate_bytes`` should match it).
    """
    pop = plan.population(population)
    if not pop.population.spiking:
        raise ValueError(f"emulate_layer: {population} is the readout; the layer emulator runs spiking layers")
    steps, batch, n_in = x.shape
    n = pop.population.neurons
    inputs = [m for m in plan.matmuls_into(population) if m.source.name != population]
    recurrent = [m for m in plan.matmuls_into(population) if m.source.name == population]
    m_in = inputs[0]
    if params.w_in.shape != (m_in.source.n, n) or n_in != m_in.source.n:
        raise ValueError(f"emulate_layer: {population} takes {m_in.source.n} inputs to {n} neurons; got weights "
                        f"{tuple(params.w_in.shape)} and x {tuple(x.shape)}")
    if bool(recurrent) != (params.w_rec is not None):
        raise ValueError(f"emulate_layer: the plan's {population} is {'' if recurrent else 'not '}recurrent, "
                        f"the parameters {'have' if params.w_rec is not None else 'lack'} recurrent weights")
    if (params.rho is not None) != (pop.population.live_vars == 2):
        raise ValueError(f"emulate_layer: the plan's {population} and the parameters disagree on ALIF adaptation")
    if batch != plan.sizing.batch or steps != plan.time.steps:
        raise ValueError(f"emulate_layer: the plan is for batch {plan.sizing.batch} and {plan.time.steps} steps; "
                        f"got batch {batch}, {steps} steps")
    if grad_z is not None and grad_z.shape != (steps, batch, n):
        raise ValueError(f"emulate_layer: grad_z must be [T, B, n] = {(steps, batch, n)}, got {tuple(grad_z.shape)}")
    run = _LayerRun(plan, pop, params, x, grad_z, saved_dtype or params.w_in.dtype, backend, m_in, recurrent)
    if grad_z is None:
        for n_window in range(plan.time.windows):
            run.forward_window(n_window, taped=False)
        return run.report(None, None)
    run.execute()
    return run.report(run.gather_grads(), run.grad_x)


class _LayerRun:
    """One layer's tiles over the plan's time loop: the current state, the tapes, the checkpoints."""

    def __init__(self, plan: TilePlan, pop: PopulationPlan, params: LayerParams, x: Tensor, grad_z: Tensor | None,
                 saved_dtype: torch.dtype, backend: str, m_in: MatmulPlan, recurrent: list[MatmulPlan]):
        self.plan, self.pop, self.p, self.grad_z = plan, pop, params, grad_z
        self.saved_dtype, self.backend, self.m_in, self.recurrent = saved_dtype, backend, m_in, recurrent
        self.name = pop.population.name
        self.dtype = params.w_in.dtype
        self.acc_dtype = torch.promote_types(self.dtype, torch.float32)
        self.steps, self.batch, self.n_in = x.shape
        self.n, self.k_own = pop.population.neurons, pop.population.own.k
        self.time = plan.time
        self.counter = _Counter()
        self.owns = _place(plan, pop, params, [m_in] + recurrent, training=grad_z is not None)
        self.order = [o.tile.index for o in self.owns]
        # Input lists: the host (or the previous layer's selecting tiles) compacts x_t to its capacity.
        self.x_lists = [_compact(x[t], m_in.source.k, backend) for t in range(self.steps)]
        self.empty = (torch.zeros(self.batch, self.k_own, dtype=torch.int32),
                      torch.zeros(self.batch, dtype=torch.int32))
        self.streaming = StreamingMemory(plan.spec.offchip_bytes)
        self.local: dict[int, dict[int, dict[str, Tensor]]] = {}  # local checkpoints, held on their tiles
        self.z = torch.zeros(self.steps, self.batch, self.n, dtype=self.dtype)
        self.grad_x = (torch.zeros(self.steps, self.batch, self.n_in, dtype=self.dtype)
                       if m_in.source.needs_grad_input else None)
        self.in_forward = True
        self.rec_list = self.empty  # the list of the current state's last spikes (z_{t0-1})
        for o in self.owns:  # state 0: zeros, and no spikes before the first step
            o.v = o.tile.hold_tensor("v", "state", torch.zeros(self.batch, o.n, dtype=self.dtype))
            if params.rho is not None:
                o.a = o.tile.hold_tensor("a", "state", torch.zeros(self.batch, o.n, dtype=self.dtype))
            o.bits = torch.zeros(self.batch, (o.n + 7) // 8, dtype=torch.uint8)

    # ------------------------------------------------------------------ the schedule

    def execute(self) -> None:
        """Every action of the plan's schedule over the windows (see ipu_snn.bptt.schedules)."""
        for action in self.time.schedule.actions:
            if isinstance(action, Advance):
                for n_window in range(action.n0, action.n1):
                    self.forward_window(n_window, action.store_outputs)
            elif isinstance(action, Reverse):
                if self.in_forward:
                    self.begin_backward()
                self.reverse_window(action.n)
            elif isinstance(action, Store):
                self.store(action.n, action.tier)
            elif isinstance(action, Load):
                self.load(action.n, action.tier)
            elif isinstance(action, Free):
                self.free(action.n, action.tier)
        _release_selected(self.owns)

    def bounds(self, n_window: int) -> tuple[int, int]:
        t0 = n_window * self.time.window
        return t0, min(t0 + self.time.window, self.steps)

    def checkpoint(self) -> dict[int, dict[str, Tensor]]:
        """Each tile's share of the current state: v (a), and the last spikes' bits where recurrent."""
        parts = {}
        for o in self.owns:
            share = {"v": o.v} | ({"a": o.a} if o.a is not None else {}) | ({"bits": o.bits} if self.recurrent else {})
            parts[o.tile.index] = share
        return parts

    def store(self, n_window: int, tier: str) -> None:
        if tier == "offchip":
            self.streaming.store(n_window, self.checkpoint())
            return
        self.local[n_window] = {
            o.tile.index: {key: o.tile.hold_tensor(f"ckpt{n_window}_{key}", "checkpoints", t.clone())
                           for key, t in share.items()}
            for o, share in zip(self.owns, self.checkpoint().values())}

    def load(self, n_window: int, tier: str) -> None:
        held = self.streaming.load(n_window) if tier == "offchip" else self.local[n_window]
        for o in self.owns:
            parts = held[o.tile.index]
            o.v.copy_(parts["v"])
            if o.a is not None:
                o.a.copy_(parts["a"])
            if "bits" in parts:
                o.bits = parts["bits"].clone()
        # the recurrent input of the next step is rebuilt by the selecting tiles from the checkpoint's bits
        _release_selected(self.owns)
        t0 = n_window * self.time.window
        self.rec_list = (self.select({o.tile.index: o.bits for o in self.owns}, "forward")
                         if self.recurrent and t0 > 0 else self.empty)

    def free(self, n_window: int, tier: str) -> None:
        if tier == "offchip":
            self.streaming.free(n_window)
            return
        for o in self.owns:
            o.tile.release(*(f"ckpt{n_window}_{key}" for key in self.local[n_window][o.tile.index]))
        del self.local[n_window]

    def begin_backward(self) -> None:
        """The adjoint of the state comes to the tiles; the live state stays only if windows are run again."""
        self.in_forward = False
        for o in self.owns:
            if not self.time.recomputes:
                o.tile.release("v", "a")
            o.gv = o.tile.hold_tensor("grad_v", "state", torch.zeros(self.batch, o.n, dtype=self.dtype))
            if o.rho is not None:
                o.ga = o.tile.hold_tensor("grad_a", "state", torch.zeros(self.batch, o.n, dtype=self.dtype))
        self.grad_acc = {o.tile.index: o.tile.hold_tensor("grad_z", "activations",
                                                          torch.zeros(self.batch, o.n, dtype=self.dtype))
                         for o in self.owns}

    # ------------------------------------------------------------------ forward

    def forward_window(self, n_window: int, taped: bool) -> None:
        t0, t1 = self.bounds(n_window)
        if taped:
            for o in self.owns:
                tape = {"steps": []}
                if self.recurrent:
                    tape["start"] = o.tile.hold_tensor(f"w{n_window}_start", "history", o.bits.clone())
                o.tapes[n_window] = tape
        for t in range(t0, t1):
            self.forward_step(t, n_window if taped else None)

    def forward_step(self, t: int, tape: int | None) -> None:
        p, counter, batch = self.p, self.counter, self.batch
        counter.steps_forward += 1
        matmuls = [self.m_in] + self.recurrent
        lists = {self.m_in.source.name: self.x_lists[t]} | ({self.name: self.rec_list} if self.recurrent else {})
        # Sums are carried in float at least (spike_core.h's Acc), as the plan's ACC_BYTES says.
        current = {o.tile.index: o.tile.hold_tensor("current", "activations",
                                                    torch.zeros(batch, o.n, dtype=self.acc_dtype))
                   for o in self.owns}
        for rows in _passes(batch, self.pop.chunk):
            counter.supersteps += 1
            for o in self.owns:
                counter.forward += _hold_lists(o, matmuls, lists, rows)
                for m in matmuls:
                    ids, cnt = lists[m.source.name]
                    out = torch.ops.ipu_snn.spike_matmul_fwd(ids[rows], cnt[rows], o.weights[m.source.name],
                                                             self.backend)
                    current[o.tile.index][rows] += out.to(self.acc_dtype)
                for m in matmuls:
                    release_list(o.tile, m.source.name)
        _release_selected(self.owns)
        counter.supersteps += 1
        zbits = {}
        for o in self.owns:
            step = {}
            if tape is not None and p.learn_decay:
                step["v_prev"] = o.tile.hold_tensor(f"v_prev{t}", "history", o.v.clone())
                if o.a is not None:
                    step["a_prev"] = o.tile.hold_tensor(f"a_prev{t}", "history", o.a.clone())
            cur = current[o.tile.index].to(self.dtype) + o.bias
            v, a, z, d, bits = neuron_step_fwd(cur, o.v, o.a, o.beta, o.rho, p.model, p.threshold, p.adapt_strength, p.reset,
                                               p.surrogate, p.scale, self.saved_dtype, self.backend)
            o.v.copy_(v)
            if o.a is not None:
                o.a.copy_(a)
            o.bits = bits
            if tape is not None:
                step["zbits"] = o.tile.hold_tensor(f"zbits{t}", "history", bits)
                step["d"] = o.tile.hold_tensor(f"d{t}", "history", d)
                o.tapes[tape]["steps"].append(step)
            zbits[o.tile.index] = bits
            o.tile.release("current")
        self.rec_list = self.select(zbits, "forward")
        if self.in_forward:  # the forward sweep's spikes are the layer's output (recomputation repeats them)
            self.z[t] = _dense(self.rec_list, self.n, self.dtype)

    def select(self, zbits: dict[int, Tensor], phase: str) -> tuple[Tensor, Tensor]:
        return _select(self.owns, zbits, self.k_own, self.backend, self.counter, phase)

    # ------------------------------------------------------------------ backward

    def reverse_window(self, n_window: int) -> None:
        t0, t1 = self.bounds(n_window)
        counter, batch, p = self.counter, self.batch, self.p
        matmuls = [self.m_in] + self.recurrent
        carried = None  # z_t's list, selected at step t + 1 for the recurrent matmul
        for t in reversed(range(t0, t1)):
            history = {o.tile.index: o.tapes[n_window]["steps"][t - t0] for o in self.owns}
            # The consumers' gradient of z_t, at the slots of z_t's rebuilt list.
            own_list = carried or self.select({i: h["zbits"] for i, h in history.items()}, "backward")
            counter.backward += len(self.owns) * _list_bytes(own_list[0])  # to the layer's own tiles
            for rows in _passes(batch, self.pop.chunk):
                counter.supersteps += 1
                ids, cnt = own_list[0][rows], own_list[1][rows]
                values = _values_at(self.grad_z[t][rows], ids, cnt)
                for o in self.owns:
                    hold_list(o.tile, "own", ids, cnt, kind="grad_gather")
                    got = o.tile.hold_tensor("gathered", "grad_gather", values.clone())
                    _add_own(self.grad_acc[o.tile.index], rows, got, ids, cnt, o)
                    release_list(o.tile, "own")
                    o.tile.release("gathered")
            _release_selected(self.owns)
            counter.supersteps += 1
            grad_current = {}
            for o in self.owns:
                step = history[o.tile.index]
                acc = self.grad_acc[o.tile.index]
                gc, ga = neuron_step_bwd(acc, o.gv, o.ga, step["zbits"], step["d"], p.model,
                                         p.adapt_strength, p.reset, self.backend)
                grad_current[o.tile.index] = o.tile.hold_tensor("grad_current", "activations", gc)
                if p.learn_decay:
                    o.grads["beta"] += (gc * step["v_prev"]).sum(0)
                    if o.rho is not None:
                        o.grads["rho"] += (ga * step["a_prev"]).sum(0)
                # the leak's backward: the gradients reaching the previous step's v and a
                o.gv.copy_(o.beta * gc)
                if o.ga is not None:
                    o.ga.copy_(o.rho * ga)
                acc.zero_()
                o.grads["b_in"] += gc.sum(0)
            prev_bits = ({o.tile.index: o.tapes[n_window]["steps"][t - 1 - t0]["zbits"] if t > t0
                          else o.tapes[n_window]["start"] for o in self.owns} if self.recurrent else None)
            carried = (self.select(prev_bits, "backward") if (self.recurrent and t > 0) else None)
            prev_list = carried or self.empty
            if t == t0:
                carried = None  # the next window's steps start from its own tape
            for o in self.owns:
                o.tile.release(*(f"{name}{t}" for name in history[o.tile.index]))
            lists = {self.m_in.source.name: self.x_lists[t]} | ({self.name: prev_list} if self.recurrent else {})
            self.matmul_grads(t, lists, grad_current, matmuls)
            for o in self.owns:
                o.tile.release("grad_current")
        for o in self.owns:
            o.tile.release(f"w{n_window}_start")
            del o.tapes[n_window]

    def matmul_grads(self, t: int, lists: dict, grad_current: dict[int, Tensor], matmuls: list[MatmulPlan]) -> None:
        counter, batch = self.counter, self.batch
        for rows in _passes(batch, self.pop.chunk):
            counter.supersteps += 1
            for o in self.owns:
                counter.backward += _hold_lists(o, matmuls, lists, rows)
            for m in matmuls:
                ids, cnt = (v[rows] for v in lists[m.source.name])
                partials = {}
                for o in self.owns:
                    g = grad_current[o.tile.index][rows].contiguous()
                    o.grads[m.source.name] += torch.ops.ipu_snn.spike_matmul_grad_weight(ids, cnt, g, m.source.n,
                                                                                        self.backend)
                    if m.source.needs_grad_input:
                        partials[o.tile.index] = o.tile.hold_tensor(
                            "partial", "grad_partials",
                            torch.ops.ipu_snn.spike_matmul_grad_input(ids, cnt, o.weights[m.source.name], g,
                                                                      self.backend))
                if not m.source.needs_grad_input:
                    continue
                summed, moved = reduce_scatter({o.tile.index: o.tile for o in self.owns}, self.order, partials,
                                               _rows(rows) * m.source.k)
                counter.backward += moved
                counter.supersteps += 2
                summed = summed.view(_rows(rows), m.source.k)
                counter.backward += _source_tiles(self.plan, m) * summed.numel() * summed.element_size()  # all-gather
                for o in self.owns:
                    o.tile.release("partial", "reduce_receive")
                if m.source.name == self.name:
                    for o in self.owns:  # the presynaptic owners are these tiles: gradient of z_{t-1}
                        got = o.tile.hold_tensor("gathered", "grad_gather", summed.clone())
                        _add_own(self.grad_acc[o.tile.index], rows, got, ids, cnt, o)
                        o.tile.release("gathered")
                else:
                    self.grad_x[t, rows] = scatter_values(summed, ids, cnt, self.n_in)
            for o in self.owns:
                for m in matmuls:
                    release_list(o.tile, m.source.name)

    # ------------------------------------------------------------------ results

    def gather_grads(self) -> dict[str, Tensor]:
        return _gather_grads(self.owns, self.p, [self.m_in] + self.recurrent, self.name)

    def report(self, grads: dict | None, grad_x: Tensor | None) -> LayerEmulation:
        counter, owns = self.counter, self.owns
        fullest = max(owns, key=lambda o: o.tile.peak).tile
        return LayerEmulation(
            z=self.z, grads=grads or {}, grad_input=grad_x, tiles_used=len(owns), peak_tile_bytes=fullest.peak,
            peak_by_kind=dict(fullest.peak_by_kind), tile_peaks={o.tile.index: o.tile.peak for o in owns},
            kept_peaks={o.tile.index: o.tile.kept_peak for o in owns},
            exchange_bytes_forward=math.ceil(counter.forward / max(counter.steps_forward, 1)),
            exchange_bytes_backward=math.ceil(counter.backward / self.steps), supersteps=counter.supersteps,
            streaming_peak_bytes=self.streaming.peak_bytes, streaming_moved_bytes=self.streaming.moved_bytes,
            steps_evaluated=counter.steps_forward,
        )


# ----------------------------------------------------------------------------- pieces


def _place(plan: TilePlan, pop: PopulationPlan, p: LayerParams, matmuls: list[MatmulPlan], training: bool) -> list[_Own]:
    """Put every tile's share of the parameters (and gradients) on it, after the reserved kinds."""
    loads = {t.tile: t for t in plan.loads_of(pop.population.name)}
    beta, rho = _clamped(p.beta), _clamped(p.rho)
    owns = []
    for tile_index, b, e in pop.slices():
        tile = Tile(tile_index, plan.tile_capacity_bytes)
        reserved = sum(loads[tile_index].bytes_by_kind.get(k, 0) for k in RESERVED_KINDS)
        if not training:
            reserved = loads[tile_index].bytes_by_kind.get("code", 0)
        tile.hold("reserved", "reserved", reserved)
        full = {m.source.name: (p.w_in if m.source.name != pop.population.name else p.w_rec) for m in matmuls}
        weights = {name: tile.hold_tensor(f"w_{name}", "weights", w[:, b:e].contiguous()) for name, w in full.items()}
        own = _Own(tile, b, e, weights,
                   bias=tile.hold_tensor("bias", "weights", p.b_in[b:e].clone()),
                   beta=tile.hold_tensor("beta", "weights", beta[b:e].contiguous()),
                   rho=None if rho is None else tile.hold_tensor("rho", "weights", rho[b:e].contiguous()),
                   grads={})
        if training:
            for name, w in weights.items():
                own.grads[name] = tile.hold_tensor(f"grad_w_{name}", "weight_grads", torch.zeros_like(w))
            own.grads["b_in"] = tile.hold_tensor("grad_bias", "weight_grads", torch.zeros_like(own.bias))
            if p.learn_decay:
                own.grads["beta"] = tile.hold_tensor("grad_beta", "weight_grads", torch.zeros_like(own.beta))
                if rho is not None:
                    own.grads["rho"] = tile.hold_tensor("grad_rho", "weight_grads", torch.zeros_like(own.rho))
        owns.append(own)
    return owns


def _passes(batch: int, chunk: int) -> list[slice]:
    out, start = [], 0
    for size in chunk_sizes(batch, chunk):
        out.append(slice(start, start + size))
        start += size
    return out


def _rows(rows: slice) -> int:
    return rows.stop - rows.start


def _list_bytes(ids: Tensor) -> int:
    return (ids.numel() + ids.shape[0]) * INDEX_BYTES  # ids [B, K] and counts [B]


def _hold_lists(owner, matmuls, lists: dict, rows: slice) -> int:
    """Put this pass's rows of each matmul's spike list on the owner's tile; returns the bytes that moved."""
    moved = 0
    for m in matmuls:
        ids, cnt = lists[m.source.name]
        hold_list(owner.tile, m.source.name, ids[rows], cnt[rows])
        moved += _list_bytes(ids[rows])
    return moved


def _compact(z: Tensor, capacity: int, backend: str) -> tuple[Tensor, Tensor]:
    ids, counts, _, dropped, _ = torch.ops.ipu_snn.compact_spikes(z.contiguous(), None, capacity, backend)
    if bool((dropped > 0).any()):
        raise UserError(f"spike overflow in the tile emulator: {int((counts + dropped).max())} spikes in a sample, "
                        f"more than the capacity K = {capacity}; raise the plan's capacity fraction")
    return ids, counts


def _select(owns: list[_Own], zbits: dict[int, Tensor], capacity: int, backend: str,
            counter: _Counter, phase: str) -> tuple[Tensor, Tensor]:
    """Spike select: sample b's bits go to tile ``b mod tiles``, which compacts its rows.

    The rows stay on the selecting tile (kind "select") until ``_release_selected``,
    after the broadcast that follows. Returns the assembled list (ids, counts).
    """
    batch = next(iter(zbits.values())).shape[0]
    ids = torch.zeros(batch, capacity, dtype=torch.int32)
    counts = torch.zeros(batch, dtype=torch.int32)
    moved = 0
    for j, o in enumerate(owns):
        samples = list(range(j, batch, len(owns)))
        if not samples:
            continue
        received = [zbits[q.tile.index][samples] for q in owns]
        o.tile.hold("select_bits", "select", sum(r.numel() for r in received))
        moved += sum(r.numel() for r in received)
        z = torch.cat([unpack_spikes(r, q.n, torch.float32) for r, q in zip(received, owns)], dim=1)
        row_ids, row_counts = _compact(z, capacity, backend)
        o.tile.hold("select_rows", "select", (row_ids.numel() + row_counts.numel()) * INDEX_BYTES)
        o.tile.release("select_bits")
        ids[samples], counts[samples] = row_ids, row_counts
    if phase == "forward":
        counter.forward += moved
    else:
        counter.backward += moved
    counter.supersteps += 1
    return ids, counts


def _release_selected(owns: list[_Own]) -> None:
    for o in owns:
        o.tile.release("select_rows")


def _dense(lst: tuple[Tensor, Tensor], n: int, dtype: torch.dtype) -> Tensor:
    ids, counts = lst
    live = listed_mask(counts, ids.shape[1])
    dense = torch.zeros(ids.shape[0], n + 1, dtype=dtype)
    dense.scatter_(1, torch.where(live, ids, n).long(), 1)
    return dense[:, :n]


def _values_at(grad: Tensor, ids: Tensor, counts: Tensor) -> Tensor:
    """[B, K] values of a dense [B, n] gradient at the listed slots (0 past the counts)."""
    live = listed_mask(counts, ids.shape[1])
    values = grad.gather(1, torch.where(live, ids, 0).long())
    return torch.where(live, values, torch.zeros_like(values))


def _add_own(acc: Tensor, rows: slice, values: Tensor, ids: Tensor, counts: Tensor, o: _Own) -> None:
    """Add the values whose listed ids fall in the tile's own neurons to its spike gradient."""
    live = listed_mask(counts, ids.shape[1]) & (ids >= o.begin) & (ids < o.end)
    local = torch.where(live, ids - o.begin, 0).long()
    acc[rows] += torch.zeros(values.shape[0], o.n, dtype=acc.dtype).scatter_add_(
        1, local, torch.where(live, values, torch.zeros_like(values)).to(acc.dtype))


def _source_tiles(plan: TilePlan, m: MatmulPlan) -> int:
    return plan.population(m.source.name).tiles


def _gather_grads(owns: list[_Own], p: LayerParams, matmuls: list[MatmulPlan], population: str) -> dict[str, Tensor]:
    """The tiles' gradient columns, assembled (the host reads them back, or the optimizer runs per tile)."""
    names = {m.source.name: ("w_rec" if m.source.name == population else "w_in") for m in matmuls}
    grads = {names[src]: torch.cat([o.grads[src] for o in owns], dim=1) for src in names}
    grads["b_in"] = torch.cat([o.grads["b_in"] for o in owns])
    if p.learn_decay:
        grads["beta"] = _decay_grad(p.beta, torch.cat([o.grads["beta"] for o in owns]))
        if p.rho is not None:
            grads["rho"] = _decay_grad(p.rho, torch.cat([o.grads["rho"] for o in owns]))
    return grads


__all__ = ["LayerEmulation", "LayerParams", "StreamingMemory", "emulate_layer"]
