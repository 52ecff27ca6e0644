"""The network a config describes, and the one place where how it runs is decided (`build_network`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .bptt import ScanStats
from .config import ModelConfig
from .devices import device as device_row
from .errors import ConfigError
from .executor import TimeLoop, scan_windows
from .dropout import drop, keep_mask
from .init import initialize
from .layers import STEP_MODES, LayerPolicies, LIReadout, Products, SpikingLayer, StepMode, torch_products
from .core.bits import pack_spikes
from .neuron.spec import NeuronSpec
from .neuron.surrogates import surrogate
from .neuron.window import SAVED_DTYPES, SpikeTrain
from .ops.policy import SparsePolicy, crossover_key, default_crossover
from .ops.visits import ListedVisits
from .ops.registry import backend_names
from .taps import Recording, Taps, collect, widths, window_taps

# How each window's readout trace becomes that window's output, and how the windows' outputs
# combine into logits ([W, B, C] -> [B, C]); mean divides the summed windows by T. The max is
# torch.max's, whose gradient goes to the first maximal step: the first window that holds it and the
# first step within it, so ties resolve the same whatever the windows (amax would split them).
_WINDOW_REDUCE = {"max": lambda v: v.max(0).values, "mean": lambda v: v.sum(0), "sum": lambda v: v.sum(0),
                  "last": lambda v: v[-1]}
_COMBINE = {"max": lambda ys, T: ys.max(0).values, "mean": lambda ys, T: ys.sum(0) / T,
            "sum": lambda ys, T: ys.sum(0), "last": lambda ys, T: ys[-1]}


class NetworkOutput(NamedTuple):
    """Per sample, so that sums add up over micro-batches, processes and replicas."""

    logits: Tensor  # [B, classes]
    rates: Tensor  # [B, layers]: each layer's spikes per neuron and step
    dropped: Tensor  # [B]: spikes left out by sparse products over capacity (sparse_overflow: drop_and_count)
    # with_counts (ipu_snn.metrics): per spiking layer [2, n], the spikes of each neuron summed over the
    # batch and all steps, and at the last step alone
    counts: list[Tensor] | None = None
    # with ``taps`` (ipu_snn.taps): per requested layer its neurons' rates [B, N]; the first-spike times
    # [B, groups]; the recorded layers' per-step spikes and membranes, by name ("layer0", ...)
    neuron_rates: dict[int, Tensor] | None = None
    first_spike: Tensor | None = None
    record: dict[str, Recording] | None = None


class SpikingNetwork(nn.Module):
    """Spiking layers and a leaky-integrator readout, run window by window by the executor.

    ``forward(x)`` takes a batch [B, T, inputs]: float frames, or, as the loaders
    give binary inputs, their packed bits [B, T, ceil(inputs / 8)] as uint8.
    """

    def __init__(self, layers: list[SpikingLayer], readout: LIReadout, reduce: str, n_inputs: int,
                 mode: StepMode, loop: TimeLoop = TimeLoop()):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.readout = readout
        self.reduce, self.n_inputs, self.mode, self.loop = reduce, n_inputs, mode, loop
        self.last_scan: ScanStats | None = None  # the executor's accounting of the latest forward

    def backward_visits(self) -> dict[str, float]:
        """Per spiking layer whose spikes the listed backward may list (model.sparse_grad), the fraction of
        its neuron-steps the backward of the products over its spikes visited since the last call
        (1: all, the dense adjoint; the backward's sparsity, beside the spikes'); then counts anew."""
        fractions = {}
        for i, layer in enumerate(self.layers):
            visits = getattr(layer, "visits", None)
            if visits is not None and visits.fraction() is not None:
                fractions[f"backward_visited_layer{i}"] = visits.fraction()
                visits.reset()
        return fractions

    def initial_state(self, batch: int, like: Tensor) -> tuple:
        return tuple(layer.initial_state(batch, like) for layer in self.layers) + (
            self.readout.initial_state(batch, like),)

    def inputs(self, xt: Tensor, t0: int, t1: int):
        """Steps [t0, t1) of the time-major batch: packed bits as a SpikeTrain, floats as frames."""
        window = xt[t0:t1]
        if xt.dtype == torch.uint8:
            # the window's bits made contiguous: the products read and keep whole rows, and only the
            # windows a schedule tapes keep a copy, so the batch is never copied whole for a schedule
            return SpikeTrain(None, window.contiguous(), None)
        return window.to(self.readout.fc.weight.dtype)

    def window(self, state: tuple, xt: Tensor, t0: int, t1: int, with_counts: bool = False,
               taps: Taps = Taps(), steps: int = 0, seed: int | None = None) -> tuple[tuple, Tensor]:
        """One window of the time-major batch ``xt``: the state after it, and its output per sample
        [B, classes + layers + 1] (the readout trace reduced over the window, each layer's spike count,
        the spikes dropped), and with ``with_counts`` each neuron's spikes after that, then the columns of
        ``taps`` (records padded to ``steps`` per window); ``seed``: dropout's, in training."""
        h = self.inputs(xt, t0, t1)
        new_state, counts, per_neuron, dropped = [], [], [], None
        seen, trains = [], []
        for i, (layer, layer_state) in enumerate(zip(self.layers, state)):
            seen.append(h)
            h, layer_state, lost = layer.window(layer_state, h)
            trains.append(h)
            if seed is not None and layer.dropout > 0:
                h = drop(h, keep_mask(seed, i, t0, tuple(h.z.shape), layer.dropout, h.z.device))
            new_state.append(layer_state)
            spikes = (h.z if taps.grad else h.z.detach()).sum(0)
            counts.append(spikes.sum(1))
            per_neuron.append(spikes.detach())
            dropped = lost if dropped is None else (dropped if lost is None else dropped + lost)
        trace, v, lost = self.readout.window(state[-1], h)
        dropped = lost if dropped is None else (dropped if lost is None else dropped + lost)
        batch = trace.shape[1]
        dropped = trace.new_zeros(batch) if dropped is None else dropped.to(trace.dtype)
        y = [_WINDOW_REDUCE[self.reduce](trace), torch.stack(counts, 1), dropped[:, None]]
        extra = window_taps(taps, self.layers, seen, trains, state, steps or t1 - t0)
        return tuple(new_state) + (v,), torch.cat(y + (per_neuron if with_counts else []) + extra, 1)

    def forward(self, x: Tensor, with_counts: bool = False, record=(), taps: Taps = Taps()) -> NetworkOutput:
        """The whole sequence: logits, mean spike rates per layer, spikes dropped (and, ``with_counts``,
        each neuron's spikes; with ``taps``, what they ask for, `ipu_snn.taps`).

        ``record``: spiking layers (indices or names "layer0", ...) whose per-step spikes and membranes
        ``out.record`` holds; recording keeps a float per neuron-step of each, under any schedule
        (docs/python_api.md).

        The executor runs the windows under the loop's schedule."""
        if x.dim() != 3:
            raise ValueError(f"the network takes a batch [B, T, inputs], got shape {tuple(x.shape)}")
        batch, steps = x.shape[0], x.shape[1]
        # time-major view of the caller's batch; each window copies its own bits (inputs())
        xt = x.transpose(0, 1)
        state0 = self.initial_state(batch, self.readout.fc.weight)
        sizes = [layer.n_out for layer in self.layers]
        taps = taps.merge(Taps(record=_layer_indices(record, sizes)))
        taps.check(sizes)
        seed = int(torch.randint(2**31, ())) if self.training and any(layer.dropout for layer in self.layers) else None
        window = _Windows(self, with_counts, taps, min(self.loop.window or steps, steps), seed)
        self.last_scan = ScanStats()
        ys, final = scan_windows(window, xt, state0, steps, self.loop, self.last_scan)
        n_classes, n_layers = self.readout.n_out, len(self.layers)
        logits = _COMBINE[self.reduce](ys[..., :n_classes], steps)
        stats = ys[..., n_classes:n_classes + n_layers + 1 + (sum(sizes) if with_counts else 0)].detach().sum(0)
        layer_sums = ys[..., n_classes:n_classes + n_layers].sum(0)
        rates = layer_sums / (steps * torch.tensor(sizes, dtype=ys.dtype, device=ys.device))
        counts = None
        if with_counts:
            totals = stats[:, n_layers + 1:].sum(0).split(sizes)
            counts = [torch.stack([total, state.z.detach().sum(0)]) for total, state in zip(totals, final)]
        start = n_classes + n_layers + 1 + (sum(sizes) if with_counts else 0)
        found = collect(taps, list(ys[..., start:].split(widths(taps, sizes, window.steps), -1)), sizes,
                        window.steps, steps)
        return NetworkOutput(logits, rates, stats[:, n_layers], counts, found["neuron_rates"] or None,
                             found.get("first_spike"), found["record"] or None)


class _Windows(nn.Module):
    # the executor differentiates through torch.func.functional_call, which calls forward():
    # this gives it the network's window (made per call, so the network does not contain itself)
    def __init__(self, net: SpikingNetwork, with_counts: bool = False, taps: Taps = Taps(), steps: int = 0,
                 seed: int | None = None):
        super().__init__()
        self.net, self.with_counts, self.taps, self.steps, self.seed = net, with_counts, taps, steps, seed

    def forward(self, state, x, t0, t1):
        return self.net.window(state, x, t0, t1, self.with_counts, self.taps, self.steps, self.seed)


def _layer_indices(record, sizes: list[int]) -> tuple[int, ...]:
    """``record`` (a layer, or several: indices or names "layer0", ...) as indices."""
    items = [record] if isinstance(record, (int, str)) else list(record or ())
    names = {f"layer{i}": i for i in range(len(sizes))}
    found = []
    for item in items:
        if isinstance(item, str) and item not in names:
            raise ValueError(f"record: no spiking layer {item!r}; the network has {', '.join(names)}")
        found.append(names[item] if isinstance(item, str) else int(item))
    return tuple(found)


def step_mode(cfg: ModelConfig) -> StepMode:
    """model.fused: auto runs fused wherever it can; true insists, naming what prevents it; false is the
    plain autograd loop."""
    if cfg.fused is False:
        return "autograd"
    reasons = fused_obstacles(cfg)
    if reasons and cfg.fused is True:
        raise ConfigError("model.fused is true, but " + "; ".join(reasons)
                          + ". Set model.fused to auto or false, or change those settings.")
    return "autograd" if reasons else "fused"


def fused_obstacles(cfg: ModelConfig) -> list[str]:
    """Why this model cannot run fused (empty: it can)."""
    return [f"model.layers.{i}.detach_reset is false (the fused backward needs a detached reset)"
            for i, layer in enumerate(cfg.layers) if not layer.detach_reset]


class ListedGrad(NamedTuple):
    """How the gradient of one layer's spikes runs (model.sparse_grad), decided once per layer."""

    listed: bool  # the listed backward over this layer's spikes (else the dense adjoint)
    exact: bool  # every neuron of non-zero surrogate derivative listed, in lists that never drop (auto)
    min_derivative: float | None  # near-threshold neurons listed above this fraction of the surrogate's peak


def listed_backward(cfg: ModelConfig, fused: bool, device: str = "cpu") -> list[ListedGrad]:
    """Per spiking layer, how the gradient of its spikes runs: the one place model.sparse_grad is decided.

    ``auto`` lists a layer's spikes where that is exact and can be fast: its surrogate has bounded support,
    its products are sparse (model.sparse) and it runs fused (whose kernels find the near-threshold
    neurons) on a device without a spike backend of its own (ipu-emulator's network op lists spikes only).
    ``spikes`` lists them wherever the products are sparse, exact or not."""
    fused = fused and device_row(device).spikes is None
    plans = []
    for layer in cfg.layers:
        if products_mode(cfg, device) is False or cfg.sparse_grad == "dense":
            plans.append(ListedGrad(False, False, None))
        elif cfg.sparse_grad == "spikes":
            plans.append(ListedGrad(True, False, cfg.sparse_grad_min_derivative))
        elif fused and surrogate(layer.surrogate.name).bounded:
            plans.append(ListedGrad(True, True, 0.0))
        else:
            plans.append(ListedGrad(False, False, None))
    return plans


def products_mode(cfg: ModelConfig, device: str = "cpu") -> bool | str:
    """``model.sparse`` as ``device`` runs it. On a PopTorch device (ipu, ipu-model) the IPU network op runs
    every spike product itself, listing every spike, whatever the host copy's policies say: there ``auto``
    leaves the choice to it and builds the host copy's products dense (``true`` is checked against what the
    op runs, `ipu_snn.ipu.model.check_network_op`). Elsewhere ``model.sparse`` as given."""
    return False if cfg.sparse == "auto" and device_row(device).poptorch else cfg.sparse


def _policy(cfg: ModelConfig, n_in: int, n_out: int, crossovers: dict | None, backend: str | None,
            grad: ListedGrad, per_step: bool = False, visits: ListedVisits | None = None, *,
            sparse: bool | str, default: float) -> SparsePolicy:
    if sparse is False:
        return SparsePolicy()
    capacity = max(1, math.ceil(cfg.sparse_capacity * n_in))
    lists = {"listed_grad": grad.listed, "exact_lists": grad.exact, "backend": backend,
             "visits": visits if grad.listed else None}
    if sparse is True:
        return SparsePolicy("sparse", capacity, cfg.sparse_overflow, **lists)
    # auto: the measured crossover of this product where given, else the documented default (ops.policy)
    crossover = (crossovers or {}).get(crossover_key(n_in, n_out, per_step), default)
    return SparsePolicy("auto", capacity, max_density=crossover, **lists)


def auto_products(cfg: ModelConfig, n_inputs: int, n_classes: int, binary_inputs: bool = True
                  ) -> list[tuple[int, int, bool]]:
    """(n_in, n_out, per_step) of every product ``model.sparse: auto`` decides by a crossover: the input
    product (binary inputs only), each recurrent product (per step), each layer-to-layer product and the
    readout's. Empty unless ``model.sparse`` is auto."""
    if cfg.sparse != "auto":
        return []
    sizes = [layer.size for layer in cfg.layers]
    out = [(n_inputs, sizes[0], False)] if binary_inputs else []
    for i, layer in enumerate(cfg.layers):
        if layer.is_recurrent:
            out.append((layer.size, layer.size, True))
        out.append((layer.size, sizes[i + 1] if i + 1 < len(sizes) else n_classes, False))
    return list(dict.fromkeys(out))


def build_network(cfg: ModelConfig, n_inputs: int, n_classes: int, dt: float, *, loop: TimeLoop = TimeLoop(),
                  binary_inputs: bool = True, device: str = "cpu", mode: StepMode | None = None,
                  products: Products = torch_products, crossovers: dict | None = None) -> SpikingNetwork:
    """Build the network of ``cfg`` and decide, once, how it runs.

    Parameters
    ----------
    cfg : ModelConfig
        The config's ``model`` section.
    n_inputs, n_classes : int
        Input channels and output classes (``ipu_snn.data.input_shape(cfg.data)`` gives both).
    dt : float
        Seconds per step: turns time constants given as ``tau`` into per-step decays.
    loop : TimeLoop
        The executor's windows and BPTT schedule (default: one window, every step kept).
    binary_inputs : bool
        The inputs are spikes (multiplied as the policy says); False: spike counts, multiplied densely.
    device : str
        The config's device; its row of the device table (``ipu_snn.devices.DEVICES``) gives the
        backends (ipu-emulator runs every product on its own backend and needs ``model.sparse: true``).
    mode : {"fused", "autograd"} or None
        The step mode (None: from ``model.fused``).
    products : callable
        How products run (a tracer supplies its own).
    crossovers : dict or None
        For ``model.sparse: auto`` (the default), the measured dense/sparse crossover of each product
        (`auto_products`, keyed by ``ipu_snn.ops.policy.crossover_key``): a RunPlan's, or
        ``ipu_snn.calibration.crossovers``. A product without one gets the documented default of its
        device (``ipu_snn.ops.policy.DEFAULT_CROSSOVERS``). Building a network never measures anything;
        on ipu and ipu-model ``auto`` leaves the products to the IPU network op (`products_mode`).

    Returns
    -------
    SpikingNetwork
        Its ``forward(x)`` takes a batch [B, T, inputs] (float frames, or packed bits as uint8) and
        returns a `NetworkOutput` (logits, spike rates, spikes dropped).
    """
    mode = step_mode(cfg) if mode is None else mode
    if mode not in STEP_MODES:
        raise ValueError(f"unknown step mode {mode!r}")
    row = device_row(device)
    backend = row.spikes
    if backend is not None and cfg.sparse is not True:
        raise ConfigError(f"model.sparse: device {device} runs every spike matmul on the {backend} backend, "
                          f"so it needs model.sparse: true (got {cfg.sparse!r}"
                          + (", the default)" if "sparse" not in cfg.model_fields_set else ")"))
    if backend is not None and backend not in backend_names():
        raise ValueError(f"device {device} needs the {backend} spike backend, which ipu_snn.ipu registers: "
                         "import ipu_snn.ipu before building the network")
    if cfg.sparse_grad_min_derivative is not None and mode != "fused":
        raise ConfigError("model.sparse_grad_min_derivative lists near-threshold neurons from the fused kernels' "
                          "surrogate derivative, so it needs the fused step mode (model.fused: auto or true)")
    grads = listed_backward(cfg, mode == "fused", device)
    no_lists = ListedGrad(False, False, None)
    # how model.sparse runs here, and the crossover of an auto product given no measured one
    how = {"sparse": products_mode(cfg, device), "default": default_crossover(row.tensors)}
    saved = SAVED_DTYPES[cfg.fused_saved_dtype]
    kernels = row.neurons
    layers, n_in = [], n_inputs
    input_policy = _policy(cfg, n_in, cfg.layers[0].size, crossovers, backend, no_lists, **how) if binary_inputs \
        else SparsePolicy()
    for i, layer_cfg in enumerate(cfg.layers):
        recurrent = layer_cfg.is_recurrent
        spec = NeuronSpec(layer_cfg.type, layer_cfg.threshold, reset=layer_cfg.reset,
                          surrogate=layer_cfg.surrogate.name, scale=layer_cfg.surrogate.scale,
                          detach_reset=layer_cfg.detach_reset, **layer_cfg.param_values())
        grad, visits = grads[i], ListedVisits()
        near_min_d = None
        if grad.listed and grad.min_derivative is not None:
            peak = float(surrogate(spec.surrogate).grad(torch.zeros((), dtype=torch.float64), spec.scale))
            near_min_d = grad.min_derivative * peak
        rec_policy = _policy(cfg, layer_cfg.size, layer_cfg.size, crossovers, backend, grad,
                             per_step=True, visits=visits, **how) if recurrent else None
        layers.append(SpikingLayer(
            n_in, layer_cfg.size, spec, beta=layer_cfg.resolve_beta(dt, default=0.9),
            decays=layer_cfg.resolve_decays(dt), learn_decay=layer_cfg.learn_decay,
            learn_threshold=layer_cfg.learn_threshold, policies=LayerPolicies(input_policy, rec_policy), mode=mode, saved_dtype=saved, near_min_d=near_min_d,
            kernels=kernels, products=products, index=i, source="input" if i == 0 else f"layer{i - 1}"))
        input_policy = _policy(cfg, layer_cfg.size, cfg.layers[i + 1].size if i + 1 < len(cfg.layers) else n_classes,
                               crossovers, backend, grad, visits=visits, **how)
        layers[-1].visits = visits if grad.listed else None
        n_in = layer_cfg.size
    initialize(layers, cfg.init)
    for layer, consumer, layer_cfg in zip(layers, layers[1:] + [None], cfg.layers):
        layer.dropout = layer_cfg.dropout
        if consumer is not None:
            consumer.input_scale = 1.0 / (1.0 - layer_cfg.dropout)
    readout = LIReadout(n_in, n_classes, beta=cfg.readout.resolve_beta(dt, default=0.95),
                        learn_decay=cfg.readout.learn_decay, policy=input_policy, mode=mode, kernels=kernels,
                        products=products,
                        source=f"layer{len(cfg.layers) - 1}")
    readout.input_scale = 1.0 / (1.0 - cfg.layers[-1].dropout)
    return SpikingNetwork(layers, readout, cfg.readout.reduce, n_inputs, mode, loop)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pack_inputs(x: Tensor) -> Tensor:
    """A float batch of binary frames [B, T, C] as the packed bits the network (and the loaders) use."""
    return pack_spikes(x)


__all__ = ["ListedGrad", "NetworkOutput", "SpikingNetwork", "auto_products", "build_network", "count_parameters", "fused_obstacles",
           "listed_backward", "pack_inputs", "products_mode", "step_mode"]
