"""Networks to and from NIR, the Neuromorphic Intermediate Representation (``pip install 'ipu_snn[nir]'``).

A network here is a chain: input -> (Affine -> LIF or CubaLIF [with a recurrent Linear]) x layers -> Affine -> LI
-> output. NIR's neurons are continuous-time, ``tau dv/dt = (v_leak - v) + r I``; this package's are
per-step, ``v_t = beta v_{t-1} + I_t``. The two meet under forward Euler at the step ``dt``:
``v_t = (1 - dt/tau) v_{t-1} + (dt/tau) (v_leak + r I_t)``, so export writes ``tau = dt / (1 - beta)``,
``r = tau / dt``, ``v_leak = 0`` (exact at dt), and import reads ``beta = 1 - dt/tau`` and folds the
input scale ``r dt / tau`` and the leak current ``v_leak dt / tau`` into the incoming weights and bias.
That is snnTorch 1.0's convention; Norse 1.1 ignores ``r``, so ``export --for`` writes each peer's own
(``PEERS``), and import guesses a peer's step when the graph does not say it. docs/nir.md has the
derivation, the peers' conventions and what a simulator that integrates exactly sees instead.
Import also reads NIR's IF and I (no leak), and a graph that ends in a spiking layer.

What NIR cannot hold is refused, naming the layer or node: ALIF layers (no NIR neuron has a threshold
that moves with its spikes, and no composition of NIR nodes reproduces the reset by that moving
threshold), and, unless asked, reset by subtraction (NIR's LIF resets to ``v_reset``). Training-only
settings (surrogate, reset, readout reduction) travel in node metadata, so ipu_snn -> NIR -> ipu_snn
gives back the same network; other tools ignore them.
"""

from __future__ import annotations

import io
import warnings
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


@dataclass(frozen=True)
class Peer:
    """How one NIR reader runs a graph: the choices ``export --for`` makes for it, as data."""

    name: str
    dt: float | None  # the step the reader discretises with (None: the run's data step)
    dt_fixed: bool  # the reader hard-codes dt: another --dt would be read wrongly
    fold_r: bool  # the reader ignores r (takes r = 1): write r = 1 and fold r into the incoming weights
    readout: str  # "LI", or "LIF": a LIF that never spikes (threshold +inf) whose membrane is the LI readout
    integrators: bool  # write a layer that does not leak (beta = 1 everywhere) as NIR's IF / I
    delayed_recurrence: bool  # route the recurrent edge lif -> rec -> identity -> lif (see PEERS)
    # node types the reader takes one threshold per layer for: per-neuron thresholds (learn_threshold) are folded
    # into the incoming weights, each neuron's voltage measured in units of its threshold (exact for both resets)
    shared_threshold: tuple[str, ...] = ()


# generic: NIR as specified. snnTorch 1.0's import_from_nir: dt = 1e-4 whatever the graph, no LI node (it
# stops with "Unknown node type LI"), IF read as a Leaky with beta 0.9, and a two-node cycle lif <-> rec
# grouped into a subgraph that nirtorch runs as W_rec (x + z_prev); a three-node cycle through an identity
# Linear is left to nirtorch, which feeds the previous step's output back: x + W_rec z_prev, as here.
# snnTorch reads CubaLIF as its Synaptic (r = tau_mem / dt and w_in = tau_syn / dt required); its LIF, IF and
# CubaLIF take one threshold per layer.
# Norse 1.1's from_nir: its own dt (default 1e-3), r ignored with a warning, no LI node (dropped), IF run as
# IAFCell (v + I, exact); CubaLIF as an LIBoxCell synapse (w_in, tau_syn) then r then an LIFBoxCell (r used).
# docs/nir.md lists what was checked with which version.
PEERS = {
    "generic": Peer("generic", None, False, False, "LI", True, False),
    "snntorch": Peer("snntorch", 1e-4, True, False, "LIF", False, True, ("LIF", "IF", "CubaLIF")),
    "norse": Peer("norse", 1e-3, False, True, "LIF", True, False),
}


def _neuron_node(nir, beta: np.ndarray, dt: float, threshold, metadata: dict, peer: Peer):
    """The NIR neuron node of a layer (``threshold``, a number or one per neuron; None: the readout) and the
    gain to fold into the weights that feed it (1 unless the peer ignores r)."""
    n = beta.shape[0]
    spiking = threshold is not None or peer.readout == "LIF"
    v_th = _per_neuron(threshold if threshold is not None else np.inf, n)
    gain = np.ones(n)
    if peer.integrators and np.all(beta == 1.0):  # a plain integrator: NIR's IF / I (forward Euler: v += r dt I)
        r = np.full(n, 1.0 if peer.fold_r else 1.0 / dt)  # a peer that ignores r adds the input as is
        node = (nir.IF(r=r, v_threshold=v_th, metadata=metadata) if spiking
                else nir.I(r=r, metadata=metadata))
        return node, gain
    tau, r = decay_to_nir(beta, dt)
    if peer.fold_r:
        gain, r = r, np.ones(n)
    if not spiking:
        return nir.LI(tau=tau, r=r, v_leak=np.zeros(n), metadata=metadata), gain
    return nir.LIF(tau=tau, r=r, v_leak=np.zeros(n), v_threshold=v_th, v_reset=np.zeros(n),
                   metadata=metadata), gain


def _cuba_node(nir, beta: np.ndarray, alpha: np.ndarray, dt: float, threshold, metadata: dict):
    """The NIR CubaLIF of a cuba layer: ``tau_syn dI/dt = -I + w_in S``, ``tau_mem dv/dt = -v + r I``, whose
    forward-Euler step at dt is ours, ``i = alpha i + I``, ``v = beta v + i``, with w_in = tau_syn / dt and
    r = tau_mem / dt (as snnTorch's Synaptic and Norse's CubaLIF read it: neither ignores r or w_in)."""
    n = beta.shape[0]
    tau_mem, r = decay_to_nir(beta, dt)
    tau_syn, w_in = decay_to_nir(alpha, dt)
    return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=r, v_leak=np.zeros(n), v_threshold=_per_neuron(threshold, n),
                       v_reset=np.zeros(n), w_in=w_in, metadata=metadata), np.ones(n)


def _affine(nir, weight: torch.Tensor, bias: torch.Tensor, gain: np.ndarray):
    """Ours stored [in, out]; NIR's [out, in], scaled per output neuron."""
    w = _array(weight).T.astype(np.float64) * gain[:, None]
    return nir.Affine(weight=w.astype(np.float32), bias=(_array(bias) * gain).astype(np.float32))


def export_graph(cfg: Config, weights: dict[str, torch.Tensor], dt: float | None = None,
                 keep_subtract_reset: bool = False, peer: str = "generic"):
    """The NIR graph of a network.

    Parameters
    ----------
    cfg : Config
        The network's config.
    weights : dict of str to Tensor
        Its weights, under the network's ``state_dict`` keys.
    dt : float or None
        Seconds per step the graph's time constants are written for (default: the peer's step, else the
        data's).
    keep_subtract_reset : bool
        Write reset-by-subtraction layers as NIR LIF, keeping the subtraction in the node's metadata
        (which ipu_snn reads back); otherwise such a layer is refused.
    peer : {"generic", "snntorch", "norse"}
        Who reads the graph: written as that reader runs it (``PEERS``, docs/nir.md).

    Returns
    -------
    nir.NIRGraph

    Raises
    ------
    ConfigError
        Naming the layer NIR cannot express (ALIF; a subtracting reset without ``keep_subtract_reset``),
        an unknown peer, or a ``dt`` the peer would read wrongly.
    """
    nir = import_nir()
    if peer not in PEERS:
        raise ConfigError(f"export for '{peer}': the known readers are {', '.join(PEERS)}")
    how = PEERS[peer]
    if how.dt_fixed and dt is not None and not np.isclose(dt, how.dt, rtol=1e-9, atol=0.0):
        raise ConfigError(f"--for {peer}: {peer} reads every graph with dt = {how.dt:g} s, so --dt {dt:g} would be "
                          "read wrongly; leave --dt out")
    dt = float(dt or how.dt or cfg.data.step_seconds)
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
        meta = {f"{META}reset": layer.reset, f"{META}detach_reset": layer.detach_reset,
                f"{META}surrogate": layer.surrogate.name, f"{META}surrogate_scale": layer.surrogate.scale,
                f"{META}learn_decay": layer.learn_decay, f"{META}learn_threshold": layer.learn_threshold}
        # a learned threshold is one per neuron: NIR's v_threshold holds it as it is
        threshold = _array(weights[f"{p}.threshold"]).astype(np.float64) if layer.learn_threshold else layer.threshold
        if layer.neuron.nir.node in how.shared_threshold and np.ndim(threshold) and _uniform(threshold) is None:
            unit, threshold = threshold, 1.0  # the reader takes one threshold: volts in units of each neuron's
        else:
            unit = 1.0
        if layer.neuron.nir.node == "CubaLIF":
            nodes[neuron], gain = _cuba_node(nir, _decays(weights, f"{p}.beta"), _decays(weights, f"{p}.alpha"), dt,
                                             threshold, meta)
        else:
            nodes[neuron], gain = _neuron_node(nir, _decays(weights, f"{p}.beta"), dt, threshold, meta, how)
        gain = gain / unit
        nodes[fc] = _affine(nir, weights[f"{p}.fc.weight"], weights[f"{p}.fc.bias"], gain)
        edges += [(previous, fc), (fc, neuron)]
        if f"{p}.rec.weight" in weights:
            rec = f"layer{i}.rec"
            w_rec = _array(weights[f"{p}.rec.weight"]).T.astype(np.float64) * gain[:, None]  # ours [from, to]
            nodes[rec] = nir.Linear(weight=w_rec.astype(np.float32))
            if how.delayed_recurrence:
                delay = f"layer{i}.rec_delay"
                nodes[delay] = nir.Linear(weight=np.eye(w_rec.shape[0], dtype=np.float32))
                edges += [(neuron, rec), (rec, delay), (delay, neuron)]
            else:
                edges += [(neuron, rec), (rec, neuron)]
        previous = neuron
    beta = _decays(weights, "readout.beta")
    nodes["readout.li"], gain = _neuron_node(nir, beta, dt, None, {f"{META}learn_decay": cfg.model.readout.learn_decay},
                                             how)
    nodes["readout.fc"] = _affine(nir, weights["readout.fc.weight"], weights["readout.fc.bias"], gain)
    nodes["output"] = nir.Output(output_type={"output": np.array([beta.shape[0]])})
    edges += [(previous, "readout.fc"), ("readout.fc", "readout.li"), ("readout.li", "output")]
    metadata = {f"{META}dt": dt, f"{META}reduce": cfg.model.readout.reduce, f"{META}discretisation": "forward-euler",
                f"{META}for": peer}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def write_graph(graph, path: Path) -> None:
    """Write atomically: a crash leaves the previous file or none, never a torn one."""
    nir = import_nir()
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    replace_atomically(path, buffer.getvalue())


def export_run(run_dir: Path, out: Path | None = None, dt: float | None = None,
               keep_subtract_reset: bool = False, peer: str = "generic") -> Path:
    """Write the newest intact checkpoint of a run folder as a NIR file.

    Parameters
    ----------
    run_dir : Path
        A folder written by `ipu_snn.train`.
    out : Path or None
        The file to write (default ``RUN/model.nir``), atomically.
    dt, keep_subtract_reset, peer
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
    graph = export_graph(cfg, found.weights, dt, keep_subtract_reset, peer)
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


def _check_decay(chain: _Chain, name: str, tau: np.ndarray, decay: np.ndarray, dt: float) -> None:
    bad = np.flatnonzero((decay <= 0.0) | (decay > 1.0) | ~np.isfinite(decay))
    if bad.size:
        raise chain.error(f"{_describe(name, chain.nodes[name])}: its time constant {tau[bad[0]]:.3g} s is not longer "
                          f"than the step dt = {dt:.3g} s, so the step's decay 1 - dt/tau = {decay[bad[0]]:.3g} is "
                          "outside (0, 1]; set model.nir_dt to the step the graph was made for (snnTorch: 1e-4)")


def _dynamics(chain: _Chain, name: str, n: int, dt: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(beta, input scale, constant current per step, the synaptic current's decay alpha or None) of a neuron
    node at step dt."""
    node, kind = chain.nodes[name], chain.kind(name)
    if kind in ("IF", "I"):
        return np.ones(n), _per_neuron(node.r, n) * dt, np.zeros(n), None
    tau = _per_neuron(node.tau_mem if kind == "CubaLIF" else node.tau, n)
    beta, scale = nir_to_decay(tau, _per_neuron(node.r, n), dt)
    _check_decay(chain, name, tau, beta, dt)
    leak = _per_neuron(node.v_leak, n) * (1.0 - beta)
    if kind != "CubaLIF":
        return beta, scale, leak, None
    # tau_syn dI/dt = -I + w_in S, forward Euler: I_t = alpha I_{t-1} + (1 - alpha) w_in S_t; with v's input
    # scale folded in, ours: i = alpha i + I, v = beta v + i (a cuba layer). At tau_syn = dt (alpha = 0) that is
    # the plain input, read as a LIF layer.
    tau_syn = _per_neuron(node.tau_syn, n)
    alpha, syn_scale = nir_to_decay(tau_syn, _per_neuron(node.w_in, n), dt)
    scale = scale * syn_scale
    if np.allclose(tau_syn, dt, rtol=1e-6, atol=0.0):
        return beta, scale, leak, None
    _check_decay(chain, name, tau_syn, alpha, dt)
    if not np.allclose(leak, 0.0):
        raise chain.error(f"{_describe(name, node)} has v_leak != 0 and a synaptic current: ipu_snn's cuba neuron "
                          "takes its constant input through the synaptic current, which a leak into v cannot match")
    return beta, scale, leak, alpha


def _uniform(values: np.ndarray) -> float | None:
    return float(values[0]) if np.all(values == values[0]) else None


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


class NIRWarning(UserWarning):
    """A graph read with a guess or a change the user should know about (named in the message)."""


SPIKING_OUTPUTS = ("spike_count", "membrane")


def _recurrent_path(chain: _Chain, neuron: str, synapse: str) -> list[str]:
    """The synapses of the loop from ``neuron`` back to itself (``rec``, or ``rec -> identity`` as written for
    snnTorch), first to last; [] for a feed-forward layer."""
    others = [p for p in chain.pred[neuron] if p != synapse]
    if chain.pred[neuron].count(synapse) != 1 or len(others) > 1:
        raise chain.error(f"{_describe(neuron, chain.nodes[neuron])} receives from {', '.join(chain.pred[neuron])}; "
                          "ipu_snn layers take one input synapse and at most one recurrent one")
    if not others:
        return []
    path = others[:]
    while chain.pred[path[0]] != [neuron]:
        preds = chain.pred[path[0]]
        if len(path) == 3 or len(preds) != 1 or chain.kind(preds[0]) not in SYNAPSES:
            raise chain.error(f"{_describe(path[0], chain.nodes[path[0]])} is not on a recurrent loop of "
                              f"'{neuron}' alone")
        path.insert(0, preds[0])
    for a, b in zip(path, path[1:] + [neuron]):
        if chain.succ[a] != [b]:
            raise chain.error(f"{_describe(a, chain.nodes[a])} is not a recurrent synapse of '{neuron}' alone")
    return path


def _recurrent_weights(chain: _Chain, path: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The loop's synapses composed: (weight [to, from], bias)."""
    weight, bias = np.eye(n), np.zeros(n)
    for name in path:
        w, b = _synapse(chain, name)
        if w.shape != (n, n):
            raise chain.error(f"{_describe(name, chain.nodes[name])} has weight shape {w.shape}, not ({n}, {n})")
        weight, bias = w @ weight, w @ bias + b
    return weight, bias


def graph_to_model(graph, dt: float, source: str = "graph", spiking_output: str = "spike_count") -> ImportedModel:
    """The layers, readout and weights of a NIR graph, its time constants read at steps of ``dt`` seconds.

    A graph that ends in a spiking layer (as snnTorch's and Norse's networks often do) is read, with a
    ``NIRWarning``, as ``spiking_output`` says: ``spike_count`` keeps the layer spiking and counts its spikes
    (an identity readout that integrates without leak, reduced by ``last``: the logits are spike counts);
    ``membrane`` reads the layer's membrane as the leaky-integrator readout (its threshold and reset dropped).
    A spiking layer with an infinite threshold (``export --for snntorch / norse``) is the readout itself.
    """
    chain = _Chain(graph, source)
    start, end = chain.terminal("Input"), chain.terminal("Output")
    layers, state = [], {}
    current, n_inputs = start, None
    synapse = chain.only(chain.succ[start], start, "feeds")
    metadata = dict(getattr(graph, "metadata", {}) or {})
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
        loop = _recurrent_path(chain, neuron, synapse)
        beta, scale, leak, alpha = _dynamics(chain, neuron, n, dt)
        last = chain.succ[neuron] == [end] or (loop and sorted(chain.succ[neuron]) == sorted([end, loop[0]]))
        as_readout = kind in INTEGRATORS
        if kind in SPIKING and last:
            if np.all(np.isinf(_per_neuron(node.v_threshold, n))):
                as_readout = True  # never spikes: the readout as written for snnTorch / Norse
            else:
                if spiking_output not in SPIKING_OUTPUTS:
                    raise ValueError(f"spiking_output must be one of {SPIKING_OUTPUTS}, not {spiking_output!r}")
                other = "membrane" if spiking_output == "spike_count" else "spike_count"
                read = ("kept spiking, and its spike counts are the logits (an identity readout without leak, "
                        "reduce: last)" if spiking_output == "spike_count" else
                        "read as the leaky-integrator readout: its membrane gives the logits, its threshold "
                        "and reset are dropped")
                warnings.warn(f"{source}: the graph ends in spiking layer {_describe(neuron, node)}, not in a "
                              f"leaky integrator; it is {read}. Set model.nir_output: {other} for the other "
                              "reading", NIRWarning, stacklevel=2)
                as_readout = spiking_output == "membrane"
        if as_readout:
            if alpha is not None:
                raise chain.error(f"{_describe(neuron, node)} has a synaptic current, so its membrane is no leaky-"
                                  "integrator readout; read the graph with model.nir_output: spike_count")
            if loop or not last:
                raise chain.error(f"{_describe(neuron, node)}: the leaky-integrator readout must feed the output alone")
            state["readout.fc.weight"] = _tensor((w_in * scale[:, None]).T)
            state["readout.fc.bias"] = _tensor(bias * scale + leak)
            state["readout.beta"] = _tensor(beta)
            readout = {"beta": float(beta.mean()), "learn_decay": bool(_meta(node, "learn_decay", False))}
            return ImportedModel(layers, readout, metadata, state, int(n_inputs), n)
        if not np.allclose(_per_neuron(node.v_reset, n), 0.0):
            raise chain.error(f"{_describe(neuron, node)} resets to v_reset = {_per_neuron(node.v_reset, n).max():g}; "
                              "ipu_snn's neurons reset to 0 (or subtract the threshold)")
        threshold = _per_neuron(node.v_threshold, n)
        if (threshold <= 0).any() or not np.all(np.isfinite(threshold)):
            raise chain.error(f"{_describe(neuron, node)} has a threshold <= 0 or infinite in a hidden layer; "
                              "ipu_snn's thresholds are positive and finite")
        # per-neuron thresholds: a learned threshold (written by ipu_snn) is read back as one; others are read by
        # measuring each neuron's voltage in units of its threshold (exact for both resets)
        learned = bool(_meta(node, "learn_threshold", False))
        shared = _uniform(threshold)
        unit = np.ones(n) if shared is not None or learned else threshold
        if learned:
            state[f"layers.{len(layers)}.threshold"] = _tensor(threshold)
        gain = scale / unit
        i = len(layers)
        state[f"layers.{i}.fc.weight"] = _tensor((w_in * gain[:, None]).T)
        if loop:
            w_rec, rec_bias = _recurrent_weights(chain, loop, n)
            state[f"layers.{i}.rec.weight"] = _tensor((w_rec * gain[:, None]).T)
            bias = bias + rec_bias  # a recurrent bias is a constant current like the input's
        state[f"layers.{i}.fc.bias"] = _tensor(bias * gain + leak / unit)
        state[f"layers.{i}.beta"] = _tensor(beta)
        synaptic = {}
        if alpha is not None:
            state[f"layers.{i}.alpha"] = _tensor(alpha)
            synaptic = {"alpha": float(alpha.mean()), "recurrent": bool(loop)}
        layers.append({
            "type": for_nir("CubaLIF" if alpha is not None else "LIF", bool(loop)).name, "size": n,
            "beta": float(beta.mean()), **synaptic,
            "threshold": shared if shared is not None else float(threshold.mean()) if learned else 1.0,
            "learn_threshold": learned, "reset": _meta(node, "reset", "zero"),
            "detach_reset": bool(_meta(node, "detach_reset", True)),
            "learn_decay": bool(_meta(node, "learn_decay", False)),
            "surrogate": {"name": _meta(node, "surrogate", "fast_sigmoid"),
                          "scale": float(_meta(node, "surrogate_scale", 10.0))},
        })
        if last:  # spike_count: an identity readout that integrates without leak; the last value is the count
            state["readout.fc.weight"] = _tensor(np.eye(n))
            state["readout.fc.bias"] = _tensor(np.zeros(n))
            state["readout.beta"] = _tensor(np.ones(n))
            readout = {"beta": 1.0, "learn_decay": False, "reduce": "last"}
            return ImportedModel(layers, readout, metadata, state, int(n_inputs), n)
        current = neuron
        synapse = chain.only([s for s in chain.succ[neuron] if s not in loop], neuron, "feeds")


SNNTORCH_DT = PEERS["snntorch"].dt


def _neuron_nodes(graph) -> list:
    nodes, _, _ = _flatten(graph)
    return [node for node in nodes.values() if type(node).__name__ in ("LIF", "LI", "CubaLIF")]


def infer_dt(graph, data_dt: float, source: str = "graph") -> float:
    """The step to read a graph's time constants at when ``model.nir_dt`` is not given: the graph's own
    ``ipu_snn.dt``, else a guess from who wrote it, stated in a ``NIRWarning``."""
    metadata = dict(getattr(graph, "metadata", {}) or {})
    if META + "dt" in metadata:
        return float(np.asarray(metadata[META + "dt"]))
    neurons = _neuron_nodes(graph)

    def tau(node):
        return np.asarray(node.tau_mem if type(node).__name__ == "CubaLIF" else node.tau, np.float64)

    if neurons and all(np.allclose(np.asarray(n.r, np.float64) * SNNTORCH_DT, tau(n), rtol=1e-4, atol=0.0)
                       for n in neurons):
        warnings.warn(f"{source}: r = tau / 1e-4 in every neuron, as snnTorch writes its graphs: reading the time "
                      f"constants at nir_dt = {SNNTORCH_DT:g} s, snnTorch's fixed step (set model.nir_dt to choose "
                      "another). snnTorch's Leaky / RLeaky reset one step after a spike by default (reset_delay=True); "
                      "these neurons, like NIR's LIF, reset in the step of the spike, as snnTorch does with "
                      "reset_delay=False: a network trained with snnTorch's default gives slightly different spikes "
                      "here (about 1% of them on a trained network)", NIRWarning, stacklevel=2)
        return SNNTORCH_DT
    if neurons and all(np.allclose(np.asarray(n.r, np.float64), 1.0) for n in neurons):
        norse_dt = PEERS["norse"].dt
        guess = norse_dt ** 2
        warnings.warn(f"{source}: r = 1 in every neuron, as Norse 1.1 writes its graphs; Norse's to_nir writes "
                      f"tau = dt * tau_mem, so with its default dt = {norse_dt:g} s the graph is read at nir_dt = "
                      f"dt^2 = {guess:g} s, which gives the decays Norse ran (set model.nir_dt to your Norse dt "
                      "squared if it was another)", NIRWarning, stacklevel=2)
        return guess
    if neurons:
        warnings.warn(f"{source}: the graph does not say which step its time constants are for: reading them at "
                      f"the data's step, {data_dt:g} s (set model.nir_dt to choose another)", NIRWarning, stacklevel=2)
    return data_dt


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
    graph = read_graph(path)
    dt = cfg.model.nir_dt or infer_dt(graph, cfg.data.step_seconds, str(path))
    imported = graph_to_model(graph, dt, str(path), cfg.model.nir_output)
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
                         else readout.get("reduce", _meta(imported, "reduce", cfg.model.readout.reduce)))
    if "learn_decay" in given:
        readout["learn_decay"] = cfg.model.readout.learn_decay
    model = cfg.model.model_dump(mode="json") | {"layers": imported.layers, "readout": readout,
                                                 "from_nir": None, "nir_dt": None,
                                                 "nir_output": "spike_count"}
    resolved = validate_config(cfg.model_dump(mode="json") | {"model": model}, source=f"model.from_nir ({path})")
    return resolved, imported.state


__all__ = ["NIRWarning", "PEERS", "ImportedModel", "Peer", "decay_to_nir", "infer_dt", "export_graph", "export_run", "graph_to_model", "nir_to_decay",
           "read_graph", "resolve_from_nir", "write_graph"]
