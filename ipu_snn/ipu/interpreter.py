"""The network op's Poplar graph on the host: built by custom_ops/poplar/network_graph.cpp over the
mock Poplar graph and run by its interpreter (tests/poplar_mock/poplar_mock), through ctypes.

`HostNetwork` builds the graph that the PopART network op would build for one micro-batch (every
spiking layer and the leaky-integrator readout over T steps, the BPTT schedule's actions as Poplar
programs) as PopART builds it: the inputs laid out by ``network::createInput``, the op's forward build,
then its grad op's backward build over the forward's tensors, in one graph. It either runs it (``holds_data=True``; `device: ipu-emulator`) or only counts what it
allocates on each tile (the plan). `network_trace` is the op as a torch autograd Function: forward
runs the graph's forward program (the readout's membrane trace), backward its backward program, whose
weight gradients accumulate on the tiles.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ipu_snn.bptt.schedules import Advance, Free, Load, Reverse, Schedule, Store
from ipu_snn.errors import UserError
from ipu_snn.neuron.surrogates import SURROGATES

ROOT = Path(__file__).resolve().parents[2]
_POPLAR = ROOT / "custom_ops" / "poplar"
_MOCK = ROOT / "tests" / "poplar_mock"
_SOURCES = [_MOCK / "poplar_mock" / "HostPoplar.cpp", _MOCK / "poplar_mock" / "Interpreter.cpp",
            _MOCK / "poplar_mock" / "NetworkRunner.cpp", _POPLAR / "network_graph.cpp"]
_HEADERS = [*sorted((_MOCK / "poplar").glob("*.hpp")), *sorted((_MOCK / "poplar_mock").glob("*.hpp")),
            *sorted(_POPLAR.glob("*.hpp")), *sorted(_POPLAR.glob("*_codelets.cpp")),
            *sorted((ROOT / "custom_ops" / "include").glob("*.h"))]
ACTION_CODES = {Advance: 0, Reverse: 1, Store: 2, Load: 3, Free: 4}
#: Mk2 (GC200) tiles and SRAM per tile: ipu_snn.devices' table.
MK2_TILES, MK2_TILE_BYTES = 1472, 624 * 1024


class InterpreterError(UserError):
    """The interpreter refused the graph or a program (the message names the vertex or tensor)."""


@lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    """The interpreter's shared library, built with g++ on first use and cached by source hash."""
    digest = hashlib.sha256()
    for path in _SOURCES + _HEADERS:
        digest.update(path.name.encode() + path.read_bytes())
    cache = Path(os.environ.get("IPU_SNN_CACHE", Path.home() / ".cache" / "ipu_snn")) / "interpreter"
    lib = cache / f"libipu_snn_net_{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            out = Path(tmp) / lib.name
            cmd = ["g++", "-std=c++17", "-O2", "-shared", "-fPIC", f"-I{ROOT / 'custom_ops' / 'include'}",
                   f"-I{_POPLAR}", f"-I{_MOCK}", f"-I{_MOCK / 'poplar_mock'}", *map(str, _SOURCES), "-o", str(out)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"building the host interpreter failed:\n{result.stderr[-4000:]}")
            out.replace(lib)
    so = ctypes.CDLL(str(lib))
    p, u, c = ctypes.c_void_p, ctypes.c_uint, ctypes.c_char_p
    so.ipu_snn_net_build.restype = p
    so.ipu_snn_net_build.argtypes = [p, p, u, u, ctypes.c_int, c, u]
    for name in ("ipu_snn_net_write", "ipu_snn_net_read"):
        getattr(so, name).argtypes = [p, c, p, c, u]
    so.ipu_snn_net_run.argtypes = [p, ctypes.c_int, c, u]
    so.ipu_snn_net_numel.argtypes = [p, c, c, u]
    so.ipu_snn_net_numel.restype = ctypes.c_longlong
    so.ipu_snn_net_tile_bytes.argtypes = [p, p]
    so.ipu_snn_net_tile_bytes.restype = u
    so.ipu_snn_net_counts.argtypes = [p, p]
    so.ipu_snn_net_param_bytes.argtypes = [p, p]
    so.ipu_snn_net_tile_overheads.argtypes = [p, p, p]
    so.ipu_snn_net_free.argtypes = [p]
    so.ipu_snn_mock_selfcheck.argtypes = [ctypes.c_int, c, u]
    so.ipu_snn_net_cost.argtypes = [p, ctypes.c_int, ctypes.c_double, p]
    so.ipu_snn_net_tile_vars.argtypes = [p, u, c, u]
    so.ipu_snn_net_vars.argtypes = [p, c, u]
    so.ipu_snn_net_vars.restype = u
    so.ipu_snn_net_carried_shapes.argtypes = [p, p, p, u, c, u]
    return so


@dataclass(frozen=True)
class LayerSpec:
    """One spiking layer as the network op takes it (LIF, ALIF or CUBA: ``kind``, the model's kernel code;
    recurrent or not).

    ``listed``: the op forms the gradient of the layer's spikes only where their surrogate derivative is
    non-zero (exact); None takes the op's one rule, `listed_grad`. ``learn_decay``: beta's gradient comes
    out of the op; ``learn_threshold``: the op takes a per-neuron threshold [n] after the layer's weights
    (in place of ``threshold``) and returns its gradient."""

    size: int
    recurrent: bool
    threshold: float
    reset: int  # NeuronSpec.reset_code
    surrogate: int  # NeuronSpec.surrogate_code
    scale: float
    listed: bool | None = None
    learn_decay: bool = False
    learn_threshold: bool = False
    kind: int = 0  # NeuronModel.kernel_code: 0 LIF, 1 ALIF, 2 CUBA (a second state with its decay rho)
    adapt_strength: float = 0.0  # ALIF's

    def __post_init__(self):
        if self.listed is None:
            object.__setattr__(self, "listed", listed_grad(self.surrogate))


def listed_grad(surrogate_code: int) -> bool:
    """Whether the network op lists a layer's spike gradient (the listed backward): where its surrogate has
    bounded support (triangle, boxcar), whose derivative is 0 at most neurons, as ``model.sparse_grad: auto``
    decides on the CPU. Exact either way; elsewhere the dense input gradient."""
    return next(s.bounded for s in SURROGATES.values() if s.code == surrogate_code)


def step_actions(schedule: Schedule, bounds: Sequence[tuple[int, int]]) -> list[tuple[int, ...]]:
    """A schedule over windows as the op's actions over steps, each ``(kind, n0, n1, tape, offchip, slot)``:
    a window is its steps, a checkpoint of window w the state at its first step, and each checkpoint gets
    a slot of its tier (the lowest free one)."""
    starts = [t0 for t0, _ in bounds] + [bounds[-1][1]]
    slots: dict[str, dict[int, int]] = {"local": {}, "offchip": {}}
    out = []
    for action in schedule.actions:
        match action:
            case Advance(n0, n1, tape):
                out.append((0, starts[n0], starts[n1], int(tape), 0, 0))
            case Reverse(n):
                out += [(1, t, 0, 0, 0, 0) for t in range(bounds[n][1] - 1, bounds[n][0] - 1, -1)]
            case Store(n, tier):
                used = set(slots[tier].values())
                slot = next(s for s in range(len(used) + 1) if s not in used)
                slots[tier][n] = slot
                out.append((2, starts[n], 0, 0, int(tier == "offchip"), slot))
            case Load(n, tier):
                out.append((3, starts[n], 0, 0, int(tier == "offchip"), slots[tier][n]))
            case Free(n, tier):
                out.append((4, starts[n], 0, 0, int(tier == "offchip"), slots[tier].pop(n)))
    return out


def tape_slots(actions: list[tuple[int, ...]]) -> int:
    """The taped steps alive at once; the op keeps step n in slot n % this, so they must be contiguous."""
    live: set[int] = set()
    peak = 1
    for kind, n0, n1, tape, _, _ in actions:
        if kind == 0 and tape:
            live |= set(range(n0, n1))
        elif kind == 1:
            live.discard(n0)
        if live:
            if max(live) - min(live) + 1 != len(live):
                raise ValueError("the schedule keeps taped steps that are not contiguous")
            peak = max(peak, len(live))
    return peak


def encode_spec(batch: int, steps: int, n_inputs: int, layers: Sequence[LayerSpec], n_out: int,
                samples_per_pass: int, actions: Sequence[tuple[int, ...]], tape_slots: int, local_slots: int,
                offchip_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """The spec as NetworkRunner.cpp's C interface takes it: its integers (uint32) and per layer threshold and
    scale (float32)."""
    spec = [batch, steps, n_inputs, len(layers), tape_slots, local_slots, offchip_slots, len(actions), n_out,
            samples_per_pass]
    for layer in layers:
        spec += [layer.size, int(layer.recurrent), layer.reset, layer.surrogate, int(layer.listed),
                 int(layer.learn_decay), int(layer.learn_threshold), layer.kind]
    for action in actions:
        spec += list(action)
    scalars = [x for l in layers for x in (l.threshold, l.scale, l.adapt_strength)] or [0.0]
    return np.asarray(spec, dtype=np.uint32), np.asarray(scalars, dtype=np.float32)


def carried_shapes(batch: int, steps: int, layers: Sequence[LayerSpec], n_out: int, tape_slots: int,
                   local_slots: int) -> list[tuple[tuple[int, ...], bool]]:
    """The network op's carried outputs, (shape, packed bits?) each, in their order: what
    ``network::carriedShapes`` (custom_ops/poplar/network_graph.cpp) computes, read through the C interface."""
    spec, scalars = encode_spec(batch, steps, 1, layers, n_out, 0, [], tape_slots, local_slots, 0)
    most = 8 * len(layers) + 3
    out = np.zeros((most, 5), dtype=np.uint64)
    err = ctypes.create_string_buffer(4096)
    count = library().ipu_snn_net_carried_shapes(spec.ctypes.data, scalars.ctypes.data, out.ctypes.data, most, err,
                                                 len(err))
    if count < 0:
        raise InterpreterError(err.value.decode())
    return [(tuple(int(d) for d in row[2:2 + int(row[1])]), bool(row[0])) for row in out[:count]]


class HostNetwork:
    """The network op's graph for one micro-batch, on the mock Poplar graph.

    Parameters
    ----------
    batch, steps, n_inputs : int
        Micro-batch, time steps T, input channels (the op takes them as packed bits).
    layers : list of LayerSpec
        The spiking layers.
    schedule : Schedule
        The BPTT schedule over ``bounds``' windows.
    bounds : list of (t0, t1)
        The windows' steps.
    n_out : int
        The leaky-integrator readout's neurons.
    samples_per_pass : int
        Samples per pass of the input gradients' partial sums (0: the whole micro-batch).
    holds_data : bool
        False: a counting graph (no element storage; it can only be counted, not run).
    """

    def __init__(self, batch: int, steps: int, n_inputs: int, layers: Sequence[LayerSpec], schedule: Schedule,
                 bounds: Sequence[tuple[int, int]], n_out: int, *, samples_per_pass: int = 0,
                 tiles: int = MK2_TILES, tile_bytes: int = MK2_TILE_BYTES, holds_data: bool = True):
        actions = step_actions(schedule, bounds)
        self._build(batch, steps, n_inputs, layers, n_out, samples_per_pass, actions, tape_slots(actions),
                    max(schedule.max_local_slots, 0), max(schedule.max_offchip_slots, 0), tiles, tile_bytes,
                    holds_data)

    @classmethod
    def from_actions(cls, batch: int, steps: int, n_inputs: int, layers: Sequence[LayerSpec], n_out: int,
                     samples_per_pass: int, actions: Sequence[tuple[int, ...]], tape_slots: int, local_slots: int,
                     offchip_slots: int, *, tiles: int = MK2_TILES, tile_bytes: int = MK2_TILE_BYTES,
                     holds_data: bool = True) -> "HostNetwork":
        """The graph of a spec as the PopART op's attributes give it (step actions and slot counts)."""
        host = cls.__new__(cls)
        host._build(batch, steps, n_inputs, layers, n_out, samples_per_pass, list(actions), tape_slots, local_slots,
                    offchip_slots, tiles, tile_bytes, holds_data)
        return host

    def _build(self, batch, steps, n_inputs, layers, n_out, samples_per_pass, actions, tape_slots, local_slots,
               offchip_slots, tiles, tile_bytes, holds_data) -> None:
        self.lib = library()
        self.batch, self.steps, self.n_inputs, self.layers = batch, steps, n_inputs, list(layers)
        self.n_out = n_out
        self.tape_slots = tape_slots
        self._spec, self._scalars = encode_spec(batch, steps, n_inputs, layers, n_out, samples_per_pass, actions,
                                                tape_slots, local_slots, offchip_slots)
        err = ctypes.create_string_buffer(4096)
        self.handle = self.lib.ipu_snn_net_build(self._spec.ctypes.data, self._scalars.ctypes.data, tiles,
                                                 tile_bytes, int(holds_data), err, len(err))
        if not self.handle:
            raise InterpreterError(f"the network op's graph could not be built: {err.value.decode()}")
        self.tiles = tiles

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.ipu_snn_net_free(self.handle)
            self.handle = None

    def _check(self, rc: int, err) -> None:
        if rc != 0:
            raise InterpreterError(err.value.decode())

    def numel(self, name: str) -> int:
        """Elements of a named tensor (``carried.<k>``: the op's carried state, in its order)."""
        err = ctypes.create_string_buffer(4096)
        n = self.lib.ipu_snn_net_numel(self.handle, name.encode(), err, len(err))
        if n < 0:
            raise InterpreterError(err.value.decode())
        return int(n)

    def _sized(self, name: str, size: int) -> None:
        if self.numel(name) != size:
            raise InterpreterError(f"{name} holds {self.numel(name)} elements, not {size}")

    def write(self, name: str, array: np.ndarray) -> None:
        """Set a named tensor (``input_bits``, ``weight_in.0``, ...) from a C-contiguous array of its type."""
        array = np.ascontiguousarray(array)
        self._sized(name, array.size)
        err = ctypes.create_string_buffer(4096)
        self._check(self.lib.ipu_snn_net_write(self.handle, name.encode(), array.ctypes.data, err, len(err)), err)

    def read(self, name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        self._sized(name, out.size)
        err = ctypes.create_string_buffer(4096)
        self._check(self.lib.ipu_snn_net_read(self.handle, name.encode(), out.ctypes.data, err, len(err)), err)
        return out

    def run(self, backward: bool) -> None:
        """Run the forward program (the schedule's forward phase) or the backward one (the rest)."""
        err = ctypes.create_string_buffer(4096)
        self._check(self.lib.ipu_snn_net_run(self.handle, int(backward), err, len(err)), err)

    def tile_bytes(self) -> np.ndarray:
        """Bytes of the graph's variables on each tile (code, vertex state and exchange buffers aside)."""
        out = np.zeros(self.tiles, dtype=np.uint64)
        self.lib.ipu_snn_net_tile_bytes(self.handle, out.ctypes.data)
        return out

    def param_bytes(self) -> np.ndarray:
        """Bytes of the op's parameters (weights, biases, decays) on each tile."""
        out = np.zeros(self.tiles, dtype=np.uint64)
        self.lib.ipu_snn_net_param_bytes(self.handle, out.ctypes.data)
        return out

    def tile_overheads(self) -> tuple[np.ndarray, np.ndarray]:
        """Per tile: the most bytes it receives from other tiles in one compute set (the exchange's landing
        buffers), and the vertices mapped to it."""
        received = np.zeros(self.tiles, dtype=np.uint64)
        vertices = np.zeros(self.tiles, dtype=np.uint64)
        self.lib.ipu_snn_net_tile_overheads(self.handle, received.ctypes.data, vertices.ctypes.data)
        return received, vertices

    def cost(self, backward: bool, rate: float = 0.05) -> dict[str, float]:
        """One run of the forward or backward program, from the graph alone (see NetworkRunner.cpp), with
        spikes at ``rate`` of every layer's neurons per step."""
        out = np.zeros(5, dtype=np.float64)
        self.lib.ipu_snn_net_cost(self.handle, int(backward), float(rate), out.ctypes.data)
        keys = ("compute_sets", "work_elements", "received_bytes", "exchange_phases", "remote_bytes")
        return dict(zip(keys, map(float, out)))

    def tile_variables(self, tile: int) -> list[tuple[str, int]]:
        """(name, bytes) of the variables on ``tile``, largest first."""
        buf = ctypes.create_string_buffer(1 << 16)
        self.lib.ipu_snn_net_tile_vars(self.handle, tile, buf, len(buf))
        return [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in buf.value.decode().splitlines()]

    def variables(self) -> list[tuple[str, int]]:
        """(name, bytes) of every variable of the graph (its forward build's and its backward build's)."""
        size = self.lib.ipu_snn_net_vars(self.handle, None, 0)
        buf = ctypes.create_string_buffer(size)
        self.lib.ipu_snn_net_vars(self.handle, buf, len(buf))
        return [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in buf.value.decode().splitlines()]

    def counts(self) -> dict[str, int]:
        out = np.zeros(7, dtype=np.uint64)
        self.lib.ipu_snn_net_counts(self.handle, out.ctypes.data)
        keys = ("remote_bytes", "vertices", "compute_sets", "variables", "vertex_runs", "exchanged_bytes",
                "remote_bytes_moved")
        return dict(zip(keys, map(int, out)))


def selfcheck(fault: int) -> str | None:
    """Run the interpreter's self-check graph with one fault (0: a vertex reads its Output field, 1: a
    field left unconnected, 2: a variable on no tile, 3: none): its refusal, or None when it ran."""
    err = ctypes.create_string_buffer(4096)
    return err.value.decode() if library().ipu_snn_mock_selfcheck(fault, err, len(err)) else None


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


class _NetworkFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, host: HostNetwork, bits: Tensor, *params: Tensor):
        # params: per layer weight_in, bias, beta (clamped), [weight_rec], [threshold]; then the readout's
        # weight, bias, beta (clamped)
        names = [f"{name}.{l}" for l, layer in enumerate(host.layers)
                 for name in ("weight_in", "bias", "beta") + (("weight_rec",) if layer.recurrent else ())
                 + (("threshold",) if layer.learn_threshold else ()) + (("rho",) if layer.kind else ())]
        names += ["readout_weight", "readout_bias", "readout_beta"]
        for name, param in zip(names, params, strict=True):
            host.write(name, _np(param))
        host.write("input_bits", bits.detach().contiguous().numpy())
        host.run(backward=False)
        ctx.host = host
        ctx.dtypes = [p.dtype for p in params]
        out = host.read("output", (host.steps, host.batch, host.n_out))
        return torch.from_numpy(out).to(params[0].dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        host: HostNetwork = ctx.host
        host.write("grad_output", _np(grad_out))
        host.run(backward=True)
        grads = []
        for l, layer in enumerate(host.layers):
            n_in = host.n_inputs if l == 0 else host.layers[l - 1].size
            grads.append(host.read(f"grad_weight_in.{l}", (n_in, layer.size)))
            grads.append(host.read(f"grad_bias.{l}", (layer.size,)))
            grads.append(host.read(f"grad_beta.{l}", (layer.size,)) if layer.learn_decay else None)
            if layer.recurrent:
                grads.append(host.read(f"grad_weight_rec.{l}", (layer.size, layer.size)))
            if layer.learn_threshold:
                grads.append(host.read(f"grad_threshold.{l}", (layer.size,)))
            if layer.kind:
                grads.append(None)  # rho: the op does not learn the second state's decay
        n_last = host.layers[-1].size
        grads += [host.read("grad_readout_weight", (n_last, host.n_out)), host.read("grad_readout_bias", (host.n_out,)),
                  host.read("grad_readout_beta", (host.n_out,))]
        out = [None if g is None else torch.from_numpy(g).to(dt) for g, dt in zip(grads, ctx.dtypes)]
        return (None, None, *out)


def network_trace(host: HostNetwork, bits: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The readout's membrane trace [T, B, n_out] of packed input bits uint8 [B, T, ceil(n_in / 8)], run by
    the network op's graph on the host interpreter; differentiable w.r.t. the weights and biases, the
    readout's decay, and the spiking layers' decays and thresholds where they learn them (`LayerSpec`).
    ``params``: per spiking layer weight_in [n_in, n], bias, beta, [weight_rec], [threshold], [rho (ALIF,
    CUBA)], then the readout's weight [n_last, n_out], bias and beta."""
    return _NetworkFunction.apply(host, bits, *params)


__all__ = ["HostNetwork", "InterpreterError", "LayerSpec", "carried_shapes", "encode_spec", "library", "network_trace", "selfcheck", "step_actions",
           "tape_slots"]
