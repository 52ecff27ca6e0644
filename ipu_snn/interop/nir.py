"""Networks to and from NIR, the Neuromorphic Intermediate Representation (``pip install 'ipu_snn[nir]'``).

A network here is a chain: input -> (Affine -> LIF [with a recurrent Linear]) x layers -> Affine -> LI
-> output. NIR's neurons are continuous-time, ``tau dv/dt = (v_leak - v) + r I``; this package's are
per-step, ``v_t = beta v_{t-1} + I_t``. The two meet under forward Euler at the step ``dt``:
``v_t = (1 - dt/tau) v_{t-1} + (dt/tau) (v_leak + r I_t)``, so export writes ``tau = dt / (1 - beta)``,
``r = tau / dt``, ``v_leak = 0`` (exact at dt), and import reads ``beta = 1 - dt/tau`` and folds the
input scale ``r dt / tau`` and the leak current ``v_leak dt / tau`` into the incoming weights and bias.
That is snnTorch's convention, and Norse's with its own ``dt``; docs/nir.md has the derivation and
what a simulator that integrates exactly sees instead. Import also reads NIR's IF and I (no leak).

What NIR cannot hold is refused, naming the layer or node: ALIF layers (no NIR neuron has a threshold
that moves with its spikes, and no composition of NIR nodes reproduces the reset by that moving
threshold), and, unless asked, reset by subtraction (NIR's LIF resets to ``v_reset``). Training-only
settings (surrogate, reset, readout reduction) travel in node metadata, so ipu_snn -> NIR -> ipu_snn
gives back the same network; other tools ignore them.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..config import Config, validate_config
from ..errors import ConfigError
from ..files import replace_atomically
from ..neuron.models import MODELS, for_nir

EXTRA = "pip install 'ipu_snn[nir]'"
META = "ipu_snn."  # prefix of this package's metadata keys
# the smallest leak written: a neuron that does not leak (beta = 1) gets tau = dt * 2^40, whose forward-Euler
# decay 1 - 2^-40 is 1 in float32, so it round-trips exactly and needs no per-neuron infinite time constant
NO_LEAK = 2.0 ** -40
SYNAPSES = ("Affine", "Linear")
SPIKING = ("LIF", "IF", "CubaLIF")
INTEGRATORS = ("LI", "I")


def import_nir():
    try:
        import nir
    except ImportError as exc:
        raise ConfigError(f"NIR graphs need the nir package ({exc}); install it with {EXTRA}") from None
    return nir


# ------------------------------------------------------------------------- discretisation (pure)


def decay_to_nir(beta: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """(tau, r) of an LIF / LI node whose forward-Euler step at ``dt`` is ``v = beta v + I``."""
    leak = np.maximum(1.0 - np.asarray(beta, np.float64), NO_LEAK)
    return dt / leak, 1.0 / leak


def nir_to_decay(tau: np.ndarray, r: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """(beta, input scale) of the forward-Euler step at ``dt`` of ``tau dv/dt = -v + r I``."""
    rate = dt / np.asarray(tau, np.float64)
    return 1.0 - rate, np.asarray(r, np.float64) * rate


# ----------------------------------------------------------------------------------------- export


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _decays(weights: dict, key: str) -> np.ndarray:
    return np.clip(_array(weights[key]).astype(np.float64), 0.0, 1.0)  # as the layers apply them


def _neuron_node(nir, beta: np.ndarray, dt: float, threshold: float | None, metadata: dict):
    n = beta.shape[0]
    tau, r = decay_to_nir(beta, dt)
    if threshold is None:  # the readout
        return nir.LI(tau=tau, r=r, v_leak=np.zeros(n), metadata=metadata)
    return nir.LIF(tau=tau, r=r, v_leak=np.zeros(n), v_threshold=np.full(n, float(threshold)), v_reset=np.zeros(n),
                   metadata=metadata)


def export_graph(cfg: Config, weights: dict[str, torch.Tensor], dt: float | None = None,
                 keep_subtract_reset: bool = False):
    """The NIR graph of a network.

    Parameters
    ----------
    cfg : Config
        The network's config.
    weights : dict of str to Tensor
        Its weights, under the network's ``state_dict`` keys.
    dt : float or None
        Seconds per step the graph's time constants are written for (default: the data's step).
    keep_subtract_reset : bool
        Write reset-by-subtraction layers as NIR LIF, keeping the subtraction in the node's metadata
        (which ipu_snn reads back); otherwise such a layer is refused.

    Returns
    -------
    nir.NIRGraph

    Raises
    ------
    ConfigError
        Naming the layer NIR cannot express (ALIF; a subtracting reset without ``keep_subtract_reset``).
    """
    nir = import_nir()
    dt = float(dt or cfg.data.step_seconds)
    n_inputs = weights["layers.0.fc.weight"].shape[0]
    nodes = {"input": nir.Input(input_type={"input": np.array([n_inputs])})}
    edges, previous = [], "input"
    for i, layer in enumerate(cfg.model.layers):
        where = f"model.layers.{i}"
        if layer.neuron.nir.node is None:
            writable = ", ".join(name for name, m in MODELS.items() if m.nir.node is not None)
            raise ConfigError(f"{where} is an {layer.type.upper()} layer: {layer.neuron.nir.refusal}; export refused "
                              f"(export networks of {writable} layers)")
        if layer.reset == "subtract" and not keep_subtract_reset:
            raise ConfigError(f"{where} resets by subtraction, which NIR's LIF cannot express (it resets to "
                              "v_reset = 0); train with reset: zero, or export with --keep-subtract-reset to write "
                              "it as LIF with the subtraction in the node's metadata (read back by ipu_snn only)")
        p = f"layers.{i}"
        fc, neuron = f"layer{i}.fc", f"layer{i}.lif"
        nodes[fc] = nir.Affine(weight=_array(weights[f"{p}.fc.weight"]).T.copy(), bias=_array(weights[f"{p}.fc.bias"]))
        meta = {f"{META}reset": layer.reset, f"{META}detach_reset": layer.detach_reset,
                f"{META}surrogate": layer.surrogate.name, f"{META}surrogate_scale": layer.surrogate.scale,
                f"{META}learn_decay": layer.learn_decay}
        nodes[neuron] = _neuron_node(nir, _decays(weights, f"{p}.beta"), dt, layer.threshold, meta)
        edges += [(previous, fc), (fc, neuron)]
        if f"{p}.rec.weight" in weights:
            rec = f"layer{i}.rec"
            nodes[rec] = nir.Linear(weight=_array(weights[f"{p}.rec.weight"]).T.copy())  # ours [from, to]
            edges += [(neuron, rec), (rec, neuron)]
        previous = neuron
    beta = _decays(weights, "readout.beta")
    nodes["readout.fc"] = nir.Affine(weight=_array(weights["readout.fc.weight"]).T.copy(),
                                     bias=_array(weights["readout.fc.bias"]))
    nodes["readout.li"] = _neuron_node(nir, beta, dt, None, {f"{META}learn_decay": cfg.model.readout.learn_decay})
    nodes["output"] = nir.Output(output_type={"output": np.array([beta.shape[0]])})
    edges += [(previous, "readout.fc"), ("readout.fc", "readout.li"), ("readout.li", "output")]
    metadata = {f"{META}dt": dt, f"{META}reduce": cfg.model.readout.reduce, f"{META}discretisation": "forward-euler"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def write_graph(graph, path: Path) -> None:
    """Write atomically: a crash leaves the previous file or none, never a torn one."""
    nir = import_nir()
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    replace_atomically(path, buffer.getvalue())


def export_run(run_dir: Path, out: Path | None = None, dt: float | None = None,
               keep_subtract_reset: bool = False) -> Path:
    """Write the newest intact checkpoint of a run folder as a NIR file.

    Parameters
    ----------
    run_dir : Path
        A folder written by `ipu_snn.train.train`.
    out : Path or None
        The file to write (default ``RUN/model.nir``), atomically.
    dt, keep_subtract_reset
        As for `export_graph`.

    Returns
    -------
    Path
        The file written.
    """
    from ..config import load_config
    from ..run_folder import newest_intact_checkpoint

    found = newest_intact_checkpoint(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    graph = export_graph(cfg, found.weights, dt, keep_subtract_reset)
    out = Path(out) if out is not None else run_dir / "model.nir"
    write_graph(graph, out)
    return out


# ----------------------------------------------------------------------------------------- import


@dataclass
class ImportedModel:
    layers: list[dict]  # model.layers entries
    readout: dict  # model.readout fields the graph fixes
    metadata: dict  # the graph's own metadata
    state: dict[str, torch.Tensor]  # weights under the network's state_dict keys
    n_inputs: int
    n_classes: int


def _types_in_file(group: h5py.Group, prefix: str = "") -> dict[str, str]:
    """Node name -> type name, read straight from the HDF5 file (before nir parses it)."""
    out = {}
    for name, node in group.get("nodes", {}).items():
        kind = node["type"][()] if "type" in node else b"?"
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        out[prefix + name] = kind
        if kind == "NIRGraph":
            out |= _types_in_file(node, f"{prefix}{name}.")
    return out


def read_graph(path: Path):
    nir = import_nir()
    if not path.is_file():
        raise ConfigError(f"model.from_nir: file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            types = _types_in_file(f["node"])
    except (OSError, KeyError) as exc:
        raise ConfigError(f"model.from_nir: {path} is not a NIR file ({exc})") from None
    known = set(nir.ir.__all__)
    for name, kind in types.items():
        if kind not in known:
            raise ConfigError(f"model.from_nir: {path}: node '{name}' has type {kind}, which nir "
                              f"{getattr(nir, '__version__', '')} does not know")
    try:
        return nir.read(path)
    except Exception as exc:  # nir's own checks (shapes, edges): what it says is the reason
        raise ConfigError(f"model.from_nir: {path} cannot be read by nir: {type(exc).__name__}: {exc}") from None


def _flatten(graph, prefix: str = "") -> tuple[dict, list, set]:
    """Inline nested NIRGraph nodes (snnTorch writes a recurrent layer as one). Returns nodes, edges and
    the names of the inlined graphs' own Input/Output nodes, which only pass signals through."""
    nir = import_nir()
    nodes, edges, passthrough = {}, [], set()
    ends: dict[str, tuple[str, str]] = {}  # subgraph name -> (its input node, its output node)
    for name, node in graph.nodes.items():
        full = prefix + name
        if isinstance(node, nir.NIRGraph):
            inner, inner_edges, inner_pass = _flatten(node, full + ".")
            ins = [f"{full}.{k}" for k, v in node.nodes.items() if isinstance(v, nir.Input)]
            outs = [f"{full}.{k}" for k, v in node.nodes.items() if isinstance(v, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise ConfigError(f"node '{full}' is a subgraph with {len(ins)} inputs and {len(outs)} outputs; "
                                  "ipu_snn reads subgraphs with one of each")
            nodes |= inner
            edges += inner_edges
            passthrough |= inner_pass | {ins[0], outs[0]}
            ends[full] = (ins[0], outs[0])
        else:
            nodes[full] = node
    for a, b in graph.edges:
        a, b = prefix + a, prefix + b
        edges.append((ends[a][1] if a in ends else a, ends[b][0] if b in ends else b))
    return nodes, edges, passthrough


def _splice(nodes: dict, edges: list, passthrough: set) -> tuple[dict, list]:
    for name in passthrough:
        into = [a for a, b in edges if b == name]
        out = [b for a, b in edges if a == name]
        edges = [e for e in edges if name not in e] + [(a, b) for a in into for b in out]
        del nodes[name]
    return nodes, list(dict.fromkeys(edges))


def _describe(name: str, node) -> str:
    return f"node '{name}' ({type(node).__name__})"


def _per_neuron(value, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, np.float64), (n,)).copy()


def _meta(node, key: str, default):
    value = getattr(node, "metadata", {}).get(META + key, default)
    if isinstance(value, bytes):
        value = value.decode()
    return value.item() if isinstance(value, np.generic) else value


class _Chain:
    """The graph as a chain of nodes, with each node's neighbours."""

    def __init__(self, graph, source: str):
        nir = import_nir()
        self.nir, self.source = nir, source
        nodes, edges, passthrough = _flatten(graph)
        self.nodes, edges = _splice(nodes, edges, passthrough)
        self.succ, self.pred = defaultdict(list), defaultdict(list)
        for a, b in edges:
            self.succ[a].append(b)
            self.pred[b].append(a)

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"model.from_nir: {self.source}: {message}")

    def only(self, names: list[str], of: str, what: str) -> str:
        if len(names) != 1:
            listed = ", ".join(f"'{n}'" for n in names) or "nothing"
            raise self.error(f"{_describe(of, self.nodes[of])} {what} {listed}; ipu_snn networks are a chain of "
                             "layers (input -> Affine -> LIF [+ recurrent Linear] ... -> Affine -> LI -> output)")
        return names[0]

    def kind(self, name: str) -> str:
        node = self.nodes[name]
        kind = type(node).__name__
        if kind not in SYNAPSES + SPIKING + INTEGRATORS + ("Input", "Output"):
            raise self.error(f"{_describe(name, node)} cannot be mapped: ipu_snn maps Affine/Linear synapses, "
                             "LIF/IF/CubaLIF spiking layers and an LI/I readout, between one Input and one Output")
        return kind

    def terminal(self, kind: str) -> str:
        names = [n for n, node in self.nodes.items() if type(node).__name__ == kind]
        if len(names) != 1:
            raise self.error(f"the graph has {len(names)} {kind} nodes; ipu_snn reads graphs with exactly one")
        return names[0]


def _synapse(chain: _Chain, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(weight [out, in], bias [out]) of an Affine or Linear node."""
    if chain.kind(name) not in SYNAPSES:
        raise chain.error(f"{_describe(name, chain.nodes[name])} stands where ipu_snn expects an Affine or Linear "
                          "synapse")
    node = chain.nodes[name]
    weight = np.asarray(node.weight, np.float64)
    if weight.ndim != 2:
        raise chain.error(f"{_describe(name, node)} has a weight of shape {weight.shape}; ipu_snn reads 2-D weights")
    bias = np.asarray(node.bias, np.float64) if chain.kind(name) == "Affine" else np.zeros(weight.shape[0])
    return weight, _per_neuron(bias, weight.shape[0])


def _dynamics(chain: _Chain, name: str, n: int, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(beta, input scale, constant current per step) of a neuron node at step dt."""
    node, kind = chain.nodes[name], chain.kind(name)
    if kind in ("IF", "I"):
        return np.ones(n), _per_neuron(node.r, n) * dt, np.zeros(n)
    tau = _per_neuron(node.tau_mem if kind == "CubaLIF" else node.tau, n)
    beta, scale = nir_to_decay(tau, _per_neuron(node.r, n), dt)
    if kind == "CubaLIF":
        # tau_syn dI/dt = -I + w_in S: at tau_syn = dt its forward-Euler step is I_t = w_in S_t, a plain LIF
        tau_syn = _per_neuron(node.tau_syn, n)
        if not np.allclose(tau_syn, dt, rtol=1e-6, atol=0.0):
            raise chain.error(f"{_describe(name, node)} has a synaptic current (tau_syn {tau_syn.max():.3g} s against "
                              f"a step of {dt:.3g} s); ipu_snn's neurons have none. Only tau_syn = dt maps (see "
                              "model.nir_dt)")
        scale = scale * _per_neuron(node.w_in, n)
    bad = np.flatnonzero((beta <= 0.0) | (beta > 1.0) | ~np.isfinite(beta))
    if bad.size:
        raise chain.error(f"{_describe(name, node)}: its time constant {tau[bad[0]]:.3g} s is not longer than the "
                          f"step dt = {dt:.3g} s, so the step's decay 1 - dt/tau = {beta[bad[0]]:.3g} is outside (0, 1]; "
                          "set model.nir_dt to the step the graph was made for (snnTorch: 1e-4)")
    return beta, scale, _per_neuron(node.v_leak, n) * (1.0 - beta)


def _uniform(values: np.ndarray) -> float | None:
    return float(values[0]) if np.all(values == values[0]) else None


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def graph_to_model(graph, dt: float, source: str = "graph") -> ImportedModel:
    """The layers, readout and weights of a NIR graph, its time constants read at steps of ``dt`` seconds."""
    chain = _Chain(graph, source)
    start, end = chain.terminal("Input"), chain.terminal("Output")
    layers, state = [], {}
    current, n_inputs = start, None
    synapse = chain.only(chain.succ[start], start, "feeds")
    while True:
        if synapse == end:
            raise chain.error(f"{_describe(current, chain.nodes[current])} feeds the output directly; ipu_snn "
                              "networks end in an Affine synapse and an LI readout")
        w_in, bias = _synapse(chain, synapse)
        n_inputs = w_in.shape[1] if n_inputs is None else n_inputs
        neuron = chain.only(chain.succ[synapse], synapse, "feeds")
        kind, node, n = chain.kind(neuron), chain.nodes[neuron], w_in.shape[0]
        if kind not in SPIKING + INTEGRATORS:
            raise chain.error(f"{_describe(neuron, node)} follows synapse '{synapse}'; ipu_snn expects a neuron there")
        recurrent = [p for p in chain.pred[neuron] if p != synapse]
        if chain.pred[neuron].count(synapse) != 1 or len(recurrent) > 1:
            raise chain.error(f"{_describe(neuron, node)} receives from {', '.join(chain.pred[neuron])}; ipu_snn "
                              "layers take one input synapse and at most one recurrent one")
        beta, scale, leak = _dynamics(chain, neuron, n, dt)
        if kind in INTEGRATORS:
            if recurrent or chain.succ[neuron] != [end]:
                raise chain.error(f"{_describe(neuron, node)}: the leaky-integrator readout must feed the output alone")
            state["readout.fc.weight"] = _tensor((w_in * scale[:, None]).T)
            state["readout.fc.bias"] = _tensor(bias * scale + leak)
            state["readout.beta"] = _tensor(beta)
            readout = {"beta": float(beta.mean()), "learn_decay": bool(_meta(node, "learn_decay", False))}
            return ImportedModel(layers, readout, dict(getattr(graph, "metadata", {}) or {}), state, int(n_inputs), n)
        if not np.allclose(_per_neuron(node.v_reset, n), 0.0):
            raise chain.error(f"{_describe(neuron, node)} resets to v_reset = {_per_neuron(node.v_reset, n).max():g}; "
                              "ipu_snn's neurons reset to 0 (or subtract the threshold)")
        threshold = _per_neuron(node.v_threshold, n)
        if (threshold <= 0).any():
            raise chain.error(f"{_describe(neuron, node)} has a threshold <= 0; ipu_snn's thresholds are positive")
        # per-neuron thresholds: measure each neuron's voltage in units of its threshold (exact for both resets)
        shared = _uniform(threshold)
        unit = np.ones(n) if shared is not None else threshold
        gain = scale / unit
        i = len(layers)
        state[f"layers.{i}.fc.weight"] = _tensor((w_in * gain[:, None]).T)
        if recurrent:
            (rec,) = recurrent
            if chain.pred[rec] != [neuron] or chain.succ[rec] != [neuron]:
                raise chain.error(f"{_describe(rec, chain.nodes[rec])} is not a recurrent synapse of '{neuron}' alone")
            w_rec, rec_bias = _synapse(chain, rec)
            if w_rec.shape != (n, n):
                raise chain.error(f"{_describe(rec, chain.nodes[rec])} has weight shape {w_rec.shape}, not ({n}, {n})")
            state[f"layers.{i}.rec.weight"] = _tensor((w_rec * gain[:, None]).T)
            bias = bias + rec_bias  # a recurrent bias is a constant current like the input's
        state[f"layers.{i}.fc.bias"] = _tensor(bias * gain + leak / unit)
        state[f"layers.{i}.beta"] = _tensor(beta)
        layers.append({
            "type": for_nir("LIF", bool(recurrent)).name, "size": n, "beta": float(beta.mean()),
            "threshold": shared if shared is not None else 1.0, "reset": _meta(node, "reset", "zero"),
            "detach_reset": bool(_meta(node, "detach_reset", True)),
            "learn_decay": bool(_meta(node, "learn_decay", False)),
            "surrogate": {"name": _meta(node, "surrogate", "fast_sigmoid"),
                          "scale": float(_meta(node, "surrogate_scale", 10.0))},
        })
        current = neuron
        synapse = chain.only([s for s in chain.succ[neuron] if s not in recurrent], neuron, "feeds")


def resolve_from_nir(cfg: Config) -> tuple[Config, dict[str, torch.Tensor]]:
    """``model.from_nir`` made concrete.

    Parameters
    ----------
    cfg : Config
        A config whose ``model.from_nir`` names a NIR file (its time constants read at ``model.nir_dt``,
        default the data's step).

    Returns
    -------
    cfg : Config
        The config with the graph's layers and readout, and no ``from_nir``.
    weights : dict of str to Tensor
        The graph's weights under the network's ``state_dict`` keys, for ``load_state_dict(strict=True)``.

    Raises
    ------
    ConfigError
        Naming the node, for what the network cannot hold, or a graph whose inputs or classes differ
        from the data's.
    """
    from ..data import input_shape

    path = Path(cfg.model.from_nir).expanduser()
    dt = cfg.model.nir_dt or cfg.data.step_seconds
    imported = graph_to_model(read_graph(path), dt, str(path))
    n_inputs, n_classes = input_shape(cfg.data)
    if (imported.n_inputs, imported.n_classes) != (n_inputs, n_classes):
        raise ConfigError(f"model.from_nir: {path} maps {imported.n_inputs} inputs to {imported.n_classes} classes, "
                          f"but the data gives {n_inputs} inputs (after data.channel_pooling) and {n_classes} classes")
    given = cfg.model.readout.model_fields_set
    if given & {"beta", "tau"}:
        raise ConfigError("model.readout: with model.from_nir the readout's decay comes from the graph; "
                          "drop model.readout.beta / tau")
    readout = dict(imported.readout)
    readout["reduce"] = (cfg.model.readout.reduce if "reduce" in given
                         else _meta(imported, "reduce", cfg.model.readout.reduce))
    if "learn_decay" in given:
        readout["learn_decay"] = cfg.model.readout.learn_decay
    model = cfg.model.model_dump(mode="json") | {"layers": imported.layers, "readout": readout,
                                                 "from_nir": None, "nir_dt": None}
    resolved = validate_config(cfg.model_dump(mode="json") | {"model": model}, source=f"model.from_nir ({path})")
    return resolved, imported.state


__all__ = ["ImportedModel", "decay_to_nir", "export_graph", "export_run", "graph_to_model", "nir_to_decay",
           "read_graph", "resolve_from_nir", "write_graph"]
