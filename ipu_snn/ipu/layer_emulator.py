"""A tile-by-tile CPU emulator of one spiking layer over T steps, forward and backward.

It runs a TilePlan's population (a LIF, recurrent LIF or ALIF layer) the way
ipu_snn.ipu.tiles maps it: each tile owns a range of the layer's neurons, the
weight columns ``W[:, own]`` of every matrix feeding them, their state and their
BPTT history. Time steps run as bulk-synchronous supersteps, compute then
exchange, and the list phases walk the batch in the plan's sample passes:

forward, step t
    exchange  the host's input list x_t and the layer's own list z_{t-1} (built
              by the selecting tiles at the end of step t-1) are broadcast to
              every tile of the layer, one sample pass at a time;
    compute   each tile sums its columns of both matmuls into its neurons' input
              current (the shared C++ core, ``ipu_snn::spike_matmul_fwd``), then
              updates its own neurons with the fused neuron kernel
              (``ipu_snn::neuron_step_fwd``, the C++ core of custom_ops/include/
              neuron_core.h), keeping z as bits and the surrogate derivative d;
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

Every buffer a tile would hold is a real tensor here and is charged to that
tile, with its kind as the plan names it, so the peak of every tile can be set
against the plan's account and against its SRAM (TileOverflowError). What the
emulator does not hold, the optimizer's slots and the estimated code, it
reserves from the plan. Bytes crossing tiles are counted per phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ipu_snn.errors import UserError
from ipu_snn.ipu.emulator import Tile, hold_index, hold_list, one_thread, reduce_scatter, release_list, scatter_values
from ipu_snn.ipu.tiles import INDEX_BYTES, MatmulPlan, PopulationPlan, TilePlan, chunk_sizes
from ipu_snn.neuron.bits import unpack_spikes
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
            beta=layer.beta.detach(), rho=layer.rho.detach() if spec.adaptive else None,
            threshold=spec.threshold, adapt_strength=spec.adapt_strength, reset=spec.reset,
            surrogate=spec.surrogate, scale=spec.scale, learn_decay=isinstance(layer.beta, torch.nn.Parameter),
        )


@dataclass
class LayerEmulation:
    z: Tensor  # [T, B, n] the layer's spikes
    grads: dict[str, Tensor]  # w_in, b_in, w_rec; beta, rho with learned decays
    grad_input: Tensor | None  # [T, B, n_in] at the input lists' listed slots (None: host input)
    tiles_used: int
    peak_tile_bytes: int
    peak_by_kind: dict[str, int]  # of the fullest tile
    tile_peaks: dict[int, int]
    exchange_bytes_forward: int  # per time step, averaged over the T steps
    exchange_bytes_backward: int
    supersteps: int


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
    v: Tensor | None = None
    a: Tensor | None = None
    history: list[dict[str, Tensor]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.end - self.begin


class _Counter:
    def __init__(self):
        self.forward = self.backward = self.supersteps = 0


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
    """Run one layer of the plan over T steps, tile by tile; backward too when ``grad_z`` is given.

    Args:
        population: the plan's name of the layer (``"layer0"``, ...).
        x: [T, B, n_in] 0/1 input spikes (compacted on the host, or by the
            previous layer's selecting tiles, to the plan's capacity).
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
    if batch != plan.sizing.batch or steps > max(plan.sizing.steps, 1):
        raise ValueError(f"emulate_layer: the plan is for batch {plan.sizing.batch} and at most "
                        f"{plan.sizing.steps} steps; got batch {batch}, {steps} steps")
    if grad_z is not None and grad_z.shape != (steps, batch, n):
        raise ValueError(f"emulate_layer: grad_z must be [T, B, n] = {(steps, batch, n)}, got {tuple(grad_z.shape)}")
    dtype = params.w_in.dtype
    acc_dtype = torch.promote_types(dtype, torch.float32)
    saved_dtype = saved_dtype or dtype
    k_own = pop.population.own.k
    counter = _Counter()

    owns = _place(plan, pop, params, [m_in] + recurrent, training=grad_z is not None)
    order = [o.tile.index for o in owns]
    # Input lists: the host (or the previous layer's selecting tiles) compacts x_t to its capacity.
    x_lists = [_compact(x[t], m_in.source.k, backend) for t in range(steps)]

    # ------------------------------------------------------------------ forward
    for o in owns:
        o.v = o.tile.hold_tensor("v", "state", torch.zeros(batch, o.n, dtype=dtype))
        if params.rho is not None:
            o.a = o.tile.hold_tensor("a", "state", torch.zeros(batch, o.n, dtype=dtype))
    empty = (torch.zeros(batch, k_own, dtype=torch.int32), torch.zeros(batch, dtype=torch.int32))
    rec_list = empty
    z_steps = []
    for t in range(steps):
        lists = {m_in.source.name: x_lists[t]} | ({population: rec_list} if recurrent else {})
        # Sums are carried in float at least (spike_core.h's Acc), as the plan's ACC_BYTES says.
        current = {o.tile.index: o.tile.hold_tensor("current", "activations", torch.zeros(batch, o.n, dtype=acc_dtype))
                   for o in owns}
        for rows in _passes(batch, pop.chunk):
            counter.supersteps += 1
            for o in owns:
                counter.forward += _hold_lists(o, [m_in] + recurrent, lists, rows)
                for m in [m_in] + recurrent:
                    ids, cnt = lists[m.source.name]
                    hold_index(o.tile, m.source.n, _rows(rows), m.source.k, with_slots=False)
                    out = torch.ops.ipu_snn.spike_matmul_fwd(ids[rows], cnt[rows], o.weights[m.source.name], backend)
                    current[o.tile.index][rows] += out.to(acc_dtype)
                    o.tile.release("neuron_index")
                for m in [m_in] + recurrent:
                    release_list(o.tile, m.source.name)
        _release_selected(owns)
        counter.supersteps += 1
        zbits = {}
        for o in owns:
            step = {}
            if params.learn_decay:
                step["v_prev"] = o.tile.hold_tensor(f"v_prev{t}", "history", o.v.clone())
                if o.a is not None:
                    step["a_prev"] = o.tile.hold_tensor(f"a_prev{t}", "history", o.a.clone())
            cur = current[o.tile.index].to(dtype) + o.bias
            v, a, z, d, bits = neuron_step_fwd(cur, o.v, o.a, o.beta, o.rho, params.threshold,
                                               params.adapt_strength, params.reset, params.surrogate,
                                               params.scale, saved_dtype, backend)
            o.v.copy_(v)
            if o.a is not None:
                o.a.copy_(a)
            step["zbits"] = o.tile.hold_tensor(f"zbits{t}", "history", bits)
            step["d"] = o.tile.hold_tensor(f"d{t}", "history", d)
            o.history.append(step)
            zbits[o.tile.index] = bits
        rec_list = _select(owns, zbits, k_own, backend, counter, "forward")
        z_steps.append(_dense(rec_list, n, dtype))
        for o in owns:
            o.tile.release("current")
    _release_selected(owns)
    z_all = torch.stack(z_steps)
    if grad_z is None:
        return _report(owns, z_all, {}, None, counter, steps)

    # ----------------------------------------------------------------- backward
    for o in owns:
        o.tile.release("v", "a")
        o.v = o.tile.hold_tensor("grad_v", "state", torch.zeros(batch, o.n, dtype=dtype))
        o.a = o.tile.hold_tensor("grad_a", "state", torch.zeros(batch, o.n, dtype=dtype)) if o.rho is not None else None
    grad_acc = {o.tile.index: o.tile.hold_tensor("grad_z", "activations", torch.zeros(batch, o.n, dtype=dtype))
                for o in owns}
    grad_x = torch.zeros(steps, batch, n_in, dtype=dtype) if m_in.source.needs_grad_input else None
    carried = None  # z_t's list, selected at step t + 1 for the recurrent matmul; its rows still on the selectors
    for t in reversed(range(steps)):
        # The consumers' gradient of z_t, at the slots of z_t's rebuilt list.
        own_list = carried or _select(owns, {o.tile.index: o.history[t]["zbits"] for o in owns}, k_own,
                                      backend, counter, "backward")
        counter.backward += len(owns) * _list_bytes(own_list[0])  # to the layer's own tiles
        for rows in _passes(batch, pop.chunk):
            counter.supersteps += 1
            ids, cnt = own_list[0][rows], own_list[1][rows]
            values = _values_at(grad_z[t][rows], ids, cnt)
            for o in owns:
                hold_list(o.tile, "own", ids, cnt, kind="grad_gather")
                got = o.tile.hold_tensor("gathered", "grad_gather", values.clone())
                _add_own(grad_acc[o.tile.index], rows, got, ids, cnt, o)
                release_list(o.tile, "own")
                o.tile.release("gathered")
        _release_selected(owns)
        counter.supersteps += 1
        grad_current = {}
        for o in owns:
            step = o.history[t]
            acc = grad_acc[o.tile.index]
            gc, ga = neuron_step_bwd(acc, o.v, o.a, step["zbits"], step["d"], o.rho is not None,
                                     params.adapt_strength, params.reset, backend)
            grad_current[o.tile.index] = o.tile.hold_tensor("grad_current", "activations", gc)
            if params.learn_decay:
                o.grads["beta"] += (gc * step["v_prev"]).sum(0)
                if o.rho is not None:
                    o.grads["rho"] += (ga * step["a_prev"]).sum(0)
            # the leak's backward: the gradients reaching the previous step's v and a
            o.v.copy_(o.beta * gc)
            if o.a is not None:
                o.a.copy_(o.rho * ga)
            acc.zero_()
            o.grads["b_in"] += gc.sum(0)
            for name in list(step):
                o.tile.release(f"{name}{t}")
        carried = (_select(owns, {o.tile.index: o.history[t - 1]["zbits"] for o in owns}, k_own, backend,
                           counter, "backward") if (recurrent and t > 0) else None)
        prev_list = carried or empty
        lists = {m_in.source.name: x_lists[t]} | ({population: prev_list} if recurrent else {})
        for rows in _passes(batch, pop.chunk):
            counter.supersteps += 1
            for o in owns:
                counter.backward += _hold_lists(o, [m_in] + recurrent, lists, rows)
            for m in [m_in] + recurrent:
                ids, cnt = (v[rows] for v in lists[m.source.name])
                partials = {}
                for o in owns:
                    hold_index(o.tile, m.source.n, _rows(rows), m.source.k, with_slots=True)
                    g = grad_current[o.tile.index][rows].contiguous()
                    o.grads[m.source.name] += torch.ops.ipu_snn.spike_matmul_grad_weight(ids, cnt, g, m.source.n, backend)
                    if m.source.needs_grad_input:
                        partials[o.tile.index] = o.tile.hold_tensor(
                            "partial", "grad_partials",
                            torch.ops.ipu_snn.spike_matmul_grad_input(ids, cnt, o.weights[m.source.name], g, backend))
                if not m.source.needs_grad_input:
                    for o in owns:
                        o.tile.release("neuron_index")
                    continue
                summed, moved = reduce_scatter({o.tile.index: o.tile for o in owns}, order, partials, _rows(rows) * m.source.k)
                counter.backward += moved
                counter.supersteps += 2
                summed = summed.view(_rows(rows), m.source.k)
                counter.backward += _source_tiles(plan, m) * summed.numel() * summed.element_size()  # all-gather
                for o in owns:
                    o.tile.release("neuron_index", "partial", "reduce_receive")
                if m.source.name == population:
                    for o in owns:  # the presynaptic owners are these tiles: gradient of z_{t-1}
                        got = o.tile.hold_tensor("gathered", "grad_gather", summed.clone())
                        _add_own(grad_acc[o.tile.index], rows, got, ids, cnt, o)
                        o.tile.release("gathered")
                else:
                    grad_x[t, rows] = scatter_values(summed, ids, cnt, n_in)
            for o in owns:
                for m in [m_in] + recurrent:
                    release_list(o.tile, m.source.name)
        for o in owns:
            o.tile.release("grad_current")
    grads = _gather_grads(owns, params, [m_in] + recurrent, population)
    return _report(owns, z_all, grads, grad_x, counter, steps)


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


def _report(owns: list[_Own], z: Tensor, grads: dict, grad_x: Tensor | None, counter: _Counter, steps: int) -> LayerEmulation:
    fullest = max(owns, key=lambda o: o.tile.peak).tile
    return LayerEmulation(
        z=z, grads=grads, grad_input=grad_x, tiles_used=len(owns), peak_tile_bytes=fullest.peak,
        peak_by_kind=dict(fullest.peak_by_kind), tile_peaks={o.tile.index: o.tile.peak for o in owns},
        exchange_bytes_forward=math.ceil(counter.forward / steps),
        exchange_bytes_backward=math.ceil(counter.backward / steps), supersteps=counter.supersteps,
    )


__all__ = ["LayerEmulation", "LayerParams", "emulate_layer"]
