"""NIR export and import: the exact round trip, the discretisation, refusals, and snnTorch as the peer."""

import importlib.util

import h5py
import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as st
from rich.console import Console

from ipu_snn.run_folder import newest_intact_checkpoint
from ipu_snn.cli import main
from ipu_snn.config import validate_config
from ipu_snn.errors import ConfigError
from ipu_snn.network import build_network
from ipu_snn.training import train

nir = pytest.importorskip("nir", reason="needs the nir extra (pip install 'ipu_snn[nir]')")
from ipu_snn.interop.nir import (decay_to_nir, export_graph, graph_to_model, nir_to_decay, read_graph,  # noqa: E402
                                 resolve_from_nir, write_graph)

HAS_SNNTORCH = importlib.util.find_spec("snntorch") is not None and importlib.util.find_spec("nirtorch") is not None
needs_snntorch = pytest.mark.skipif(not HAS_SNNTORCH, reason="needs snntorch and nirtorch (in the test extra)")

DATA = {"steps": 25, "max_time": 0.5, "channel_pooling": 20, "batch_size": 16, "val_split": 0.25,
        "synthetic": {"n_train": 48, "n_test": 16, "n_classes": 4}}
LAYERS = [{"type": "rlif", "size": 16, "tau": 0.05, "reset": "zero", "learn_decay": True,
           "surrogate": {"name": "atan", "scale": 3.0}},
          {"type": "lif", "size": 8, "beta": 0.8, "reset": "subtract", "threshold": 0.7}]


def config(**model):
    return validate_config({"model": {"layers": LAYERS, "readout": {"tau": 0.1, "reduce": "mean"}} | model,
                            "data": DATA, "training": {"epochs": 1, "lr": 0.01}})


def spikes_in(batch=4, steps=25, n=35, p=0.3, seed=0):
    return (torch.rand(batch, steps, n, generator=torch.Generator().manual_seed(seed)) < p).float()


def random_network(cfg, seed=0):
    torch.manual_seed(seed)
    net = build_network(cfg.model, 35, 4, cfg.data.step_seconds)
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if name.endswith("beta"):
                value.uniform_(0.5, 0.97)  # learned, per neuron
    return net


# ------------------------------------------------------------------------------------ discretisation


@settings(max_examples=200, deadline=None)
@given(beta=st.floats(2.0**-20, 1.0, width=32), dt=st.floats(1e-6, 1.0))
def test_forward_euler_mapping_is_its_own_inverse(beta, dt):
    tau, r = decay_to_nir(np.array([beta]), dt)
    back, scale = nir_to_decay(tau, r, dt)
    assert np.float32(back[0]) == np.float32(beta)  # exact once stored as the layers' float32
    assert scale[0] == pytest.approx(1.0, rel=1e-12)


# ------------------------------------------------------------------------------------ round trip


def test_round_trip_gives_the_same_weights_config_and_logits(tmp_path):
    cfg = config()
    net = random_network(cfg)
    with torch.no_grad():
        net.layers[0].beta[:3] = 1.0  # learned decays that reached 1: no leak, next to leaky neurons
    write_graph(export_graph(cfg, net.state_dict(), keep_subtract_reset=True), tmp_path / "m.nir")
    resolved, state = resolve_from_nir(validate_config(
        {"model": {"from_nir": str(tmp_path / "m.nir")}, "data": DATA}))
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value), key
    assert set(state) == set(net.state_dict())
    ours, theirs = cfg.model.layers, resolved.model.layers
    for a, b in zip(ours, theirs):
        assert (a.type, a.size, a.threshold, a.reset, a.surrogate, a.learn_decay) == \
            (b.type, b.size, b.threshold, b.reset, b.surrogate, b.learn_decay)
    assert resolved.model.readout.reduce == "mean" and resolved.model.from_nir is None
    again = build_network(resolved.model, 35, 4, resolved.data.step_seconds)
    again.load_state_dict(state, strict=True)
    x = spikes_in()
    assert torch.equal(net(x).logits, again(x).logits)


def test_export_cli_then_train_from_the_graph(tmp_path, capsys):
    cfg = config(layers=[LAYERS[0], LAYERS[1] | {"reset": "zero"}])
    train(cfg, tmp_path / "run", console=Console(quiet=True))
    assert main(["export", str(tmp_path / "run"), "--format", "nir"]) == 0
    assert f"wrote {tmp_path / 'run' / 'model.nir'}" in " ".join(capsys.readouterr().out.split())
    trained = newest_intact_checkpoint(tmp_path / "run").weights

    raw = {"model": {"from_nir": str(tmp_path / "run" / "model.nir")}, "data": DATA,
           "training": {"epochs": 1, "lr": 1e-12}}  # an lr that leaves the weights where the graph put them
    (tmp_path / "nir.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "nir.yaml"), "--out", str(tmp_path / "again")]) == 0
    started = newest_intact_checkpoint(tmp_path / "again").weights
    for key, value in trained.items():
        torch.testing.assert_close(started[key], value, rtol=0, atol=1e-9)
    written = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())["model"]
    assert written["from_nir"] is None and [layer["type"] for layer in written["layers"]] == ["rlif", "lif"]
    assert main(["eval", str(tmp_path / "again")]) == 0  # the run folder needs no NIR file any more


# ------------------------------------------------------------------------------------ NIR semantics


def simulate_nir(graph_nodes, chain, x, dt):
    """Forward Euler of a chain of NIR nodes at step dt, straight from NIR's equations (test reference)."""
    h = x.astype(np.float64)  # [T, B, n]
    for syn, neuron, rec in chain:
        w = graph_nodes[syn].weight
        b = getattr(graph_nodes[syn], "bias", np.zeros(w.shape[0]))
        node = graph_nodes[neuron]
        v = np.zeros((h.shape[1], w.shape[0]))
        z, syn = np.zeros_like(v), np.zeros_like(v)
        out = []
        for t in range(h.shape[0]):
            current = h[t] @ w.T + b
            if rec:
                current = current + z @ graph_nodes[rec].weight.T + getattr(graph_nodes[rec], "bias", 0.0)
            if isinstance(node, nir.CubaLIF):  # tau_syn dI/dt = -I + w_in S, then tau_mem dv/dt = v_leak - v + r I
                syn = syn + dt / node.tau_syn * (-syn + node.w_in * current)
                v = v + dt / node.tau_mem * ((node.v_leak - v) + node.r * syn)
            else:
                v = v + dt / node.tau * ((node.v_leak - v) + node.r * current)
            if isinstance(node, nir.LI):
                out.append(v.copy())
                continue
            z = (v > node.v_threshold).astype(np.float64)
            v = np.where(z > 0, node.v_reset, v)
            out.append(z)
        h = np.stack(out)
    return h


def test_imported_lif_follows_nir_forward_euler_with_leak_gain_and_per_neuron_thresholds():
    rng = np.random.default_rng(3)
    dt = 1e-3
    n_in, n, c = 10, 6, 3
    lif = nir.LIF(tau=rng.uniform(5e-3, 2e-2, n), r=rng.uniform(0.5, 3.0, n), v_leak=rng.uniform(-0.1, 0.3, n),
                  v_threshold=rng.uniform(0.2, 1.5, n), v_reset=np.zeros(n))
    li = nir.LI(tau=rng.uniform(5e-3, 2e-2, c), r=rng.uniform(0.5, 2.0, c), v_leak=rng.uniform(-0.1, 0.1, c))
    nodes = {"in": nir.Input(input_type={"input": np.array([n_in])}),
             "fc": nir.Affine(weight=rng.normal(0, 1.5, (n, n_in)), bias=rng.normal(0, 0.2, n)), "lif": lif,
             "rec": nir.Affine(weight=rng.normal(0, 0.8, (n, n)), bias=rng.normal(0, 0.1, n)),
             "out_fc": nir.Linear(weight=rng.normal(0, 1, (c, n))), "li": li,
             "out": nir.Output(output_type={"output": np.array([c])})}
    edges = [("in", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "out_fc"), ("out_fc", "li"),
             ("li", "out")]
    model = graph_to_model(nir.NIRGraph(nodes=nodes, edges=edges), dt)
    assert model.layers[0]["type"] == "rlif" and model.layers[0]["threshold"] == 1.0  # thresholds folded
    cfg = validate_config({"model": {"layers": model.layers, "readout": model.readout}})
    net = build_network(cfg.model, n_in, c, dt)
    net.load_state_dict(model.state, strict=True)
    x = (rng.random((40, 5, n_in)) < 0.4).astype(np.float32)
    spikes = simulate_nir(nodes, [("fc", "lif", "rec")], x, dt)
    ours = net.layers[0](torch.from_numpy(x)).detach().double().numpy()
    assert spikes.mean() > 0.05 and (ours == spikes).all()
    membrane = simulate_nir(nodes, [("fc", "lif", "rec"), ("out_fc", "li", None)], x, dt)
    ours_v = net.readout(torch.from_numpy(ours).float()).detach().double().numpy()
    np.testing.assert_allclose(ours_v, membrane, rtol=1e-4, atol=1e-5)


def test_cuba_lif_reads_as_a_cuba_layer_that_follows_nir_forward_euler():
    rng = np.random.default_rng(5)
    dt, n_in, n = 1e-3, 10, 6

    def graph(tau_syn, v_leak=0.0, recurrent=True):
        cuba = nir.CubaLIF(tau_syn=tau_syn, tau_mem=rng.uniform(4e-3, 2e-2, n), r=rng.uniform(0.5, 3.0, n),
                           v_leak=np.full(n, v_leak), v_threshold=rng.uniform(0.2, 1.2, n), v_reset=np.zeros(n),
                           w_in=rng.uniform(0.5, 2.0, n))
        nodes = {"i": nir.Input(input_type={"input": np.array([n_in])}),
                 "a": nir.Affine(weight=rng.normal(0, 1.5, (n, n_in)), bias=rng.normal(0, 0.1, n)), "c": cuba,
                 "rec": nir.Linear(weight=rng.normal(0, 0.8, (n, n))), "b": nir.Linear(weight=np.ones((2, n))),
                 "li": nir.LI(tau=np.full(2, 0.01), r=np.full(2, 10.0), v_leak=np.zeros(2)),
                 "o": nir.Output(output_type={"output": np.array([2])})}
        edges = [("i", "a"), ("a", "c"), ("c", "b"), ("b", "li"), ("li", "o")]
        if not recurrent:
            del nodes["rec"]
        return nodes, edges + ([("c", "rec"), ("rec", "c")] if recurrent else [])

    nodes, edges = graph(rng.uniform(2e-3, 8e-3, n))
    model = graph_to_model(nir.NIRGraph(nodes=nodes, edges=edges), dt)
    assert model.layers[0]["type"] == "cuba" and model.layers[0]["recurrent"] is True
    cfg = validate_config({"model": {"layers": model.layers, "readout": model.readout}})
    net = build_network(cfg.model, n_in, 2, dt)
    net.load_state_dict(model.state, strict=True)
    x = (rng.random((40, 5, n_in)) < 0.4).astype(np.float32)
    spikes = simulate_nir(nodes, [("a", "c", "rec")], x, dt)
    ours = net.layers[0](torch.from_numpy(x)).detach().double().numpy()
    assert spikes.mean() > 0.05 and (ours == spikes).all()
    # at tau_syn = dt the synaptic current is the plain input: a LIF layer, w_in folded into the weights
    nodes, edges = graph(np.full(n, dt), recurrent=False)
    model = graph_to_model(nir.NIRGraph(nodes=nodes, edges=edges), dt)
    assert model.layers[0]["type"] == "lif"
    np.testing.assert_allclose(model.state["layers.0.fc.weight"].numpy().T,
                               nodes["a"].weight * (nodes["c"].w_in * nodes["c"].r * dt / nodes["c"].tau_mem
                                                    / nodes["c"].v_threshold)[:, None], rtol=1e-6)
    nodes, edges = graph(np.full(n, 5e-3), v_leak=0.1)
    with pytest.raises(ConfigError, match="node 'c' \\(CubaLIF\\) has v_leak != 0 and a synaptic current"):
        graph_to_model(nir.NIRGraph(nodes=nodes, edges=edges), dt)


# ------------------------------------------------------------------------------------ refusals


def test_export_refuses_alif_and_subtract_naming_the_layer(tmp_path, capsys):
    cfg = config(layers=[LAYERS[0], {"type": "alif", "size": 8}])
    with pytest.raises(ConfigError, match="model.layers.1 is an ALIF layer: NIR has no adaptive-threshold neuron"):
        export_graph(cfg, random_network(cfg).state_dict())
    cfg = config()
    train(cfg, tmp_path / "run", console=Console(quiet=True))
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.nir")]) == 2
    assert "model.layers.1 resets by subtraction" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "m.nir").exists()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.nir"), "--keep-subtract-reset"]) == 0
    assert read_graph(tmp_path / "m.nir").nodes["layer1.lif"].metadata["ipu_snn.reset"] == "subtract"


def _write(tmp_path, nodes, edges, name="g.nir"):
    nir.write(tmp_path / name, nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    return tmp_path / name


def _base(n_in=35, c=4):
    return {"input": nir.Input(input_type={"input": np.array([n_in])}),
            "fc": nir.Affine(weight=np.ones((c, n_in), np.float32), bias=np.zeros(c, np.float32)),
            "li": nir.LI(tau=np.full(c, 0.1), r=np.full(c, 5.0), v_leak=np.zeros(c)),
            "output": nir.Output(output_type={"output": np.array([c])})}


def _from_nir_cli(tmp_path, path, capsys):
    raw = {"model": {"from_nir": str(path)}, "data": DATA, "training": {"epochs": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code = main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    return code, " ".join(capsys.readouterr().err.split())


def test_unmappable_node_is_refused_naming_it(tmp_path, capsys):
    nodes = _base() | {"delay": nir.Delay(delay=np.full(35, 0.01))}
    path = _write(tmp_path, nodes, [("input", "delay"), ("delay", "fc"), ("fc", "li"), ("li", "output")])
    code, err = _from_nir_cli(tmp_path, path, capsys)
    assert code == 2 and "g.nir: node 'delay' (Delay) cannot be mapped" in err


def test_node_type_nir_does_not_know_is_refused_naming_it(tmp_path, capsys):
    path = _write(tmp_path, _base(), [("input", "fc"), ("fc", "li"), ("li", "output")])
    with h5py.File(path, "a") as f:
        del f["node/nodes/li/type"]
        f["node/nodes/li/type"] = "Izhikevich"
    code, err = _from_nir_cli(tmp_path, path, capsys)
    assert code == 2 and "node 'li' has type Izhikevich, which nir" in err


def test_graph_that_disagrees_with_the_data_or_lacks_a_readout(tmp_path, capsys):
    path = _write(tmp_path, _base(n_in=10), [("input", "fc"), ("fc", "li"), ("li", "output")])
    code, err = _from_nir_cli(tmp_path, path, capsys)
    assert code == 2 and "maps 10 inputs to 4 classes, but the data gives 35 inputs" in err
    nodes = _base()
    del nodes["li"]
    path = _write(tmp_path, nodes, [("input", "fc"), ("fc", "output")], "no_neuron.nir")
    code, err = _from_nir_cli(tmp_path, path, capsys)
    assert code == 2 and "node 'output' (Output) follows synapse 'fc'; ipu_snn expects a neuron there" in err
    with pytest.raises(ConfigError, match="give model.layers or model.from_nir, not both"):
        validate_config({"model": {"layers": LAYERS, "from_nir": str(path)}})
    path = _write(tmp_path, _base(), [("input", "fc"), ("fc", "li"), ("li", "output")], "short_tau.nir")
    with pytest.raises(ConfigError, match="not longer than the step dt = 0.5.*model.nir_dt"):
        resolve_from_nir(validate_config({"model": {"from_nir": str(path), "nir_dt": 0.5}, "data": DATA}))


# ------------------------------------------------------------------------------------ snnTorch


def _snntorch_net(n_in=20, hidden=12, out=5):
    import snntorch as snn

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden),
        snn.RLeaky(beta=0.9, linear_features=hidden, init_hidden=True, reset_mechanism="zero", reset_delay=False),
        torch.nn.Linear(hidden, out),
        # per-neuron parameters: snnTorch 1.0 exports a scalar threshold with a shape NIR's type check rejects
        snn.Leaky(beta=torch.full((out,), 0.8), threshold=torch.ones(out), init_hidden=True, reset_mechanism="zero",
                  reset_delay=False))
    with torch.no_grad():
        net[0].weight.mul_(2.0)
        net[1].recurrent.weight.mul_(2.0)
        net[1].recurrent.bias.uniform_(-0.2, 0.2)
    return net


def _run_snntorch(modules, x):
    from snntorch import utils

    for m in modules:
        utils.reset(m)
    out = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            h = x[t]
            for m in modules:
                h = m(h)
            out.append(h)
    return torch.stack(out)


@needs_snntorch
def test_a_graph_written_by_snntorch_gives_the_same_spikes():
    from snntorch.export_nir import export_to_nir

    net = _snntorch_net()
    graph = export_to_nir(net, torch.zeros(1, 20), ignore_dims=[0])
    # snnTorch has no leaky integrator to end in: give its graph the LI readout ipu_snn networks end in
    dt = 1e-4  # the step snnTorch writes its time constants for
    tau = np.full(3, dt / (1 - 0.9))
    graph.nodes["readout"] = nir.Affine(weight=np.ones((3, 5), np.float32), bias=np.zeros(3, np.float32))
    graph.nodes["li"] = nir.LI(tau=tau, r=tau / dt, v_leak=np.zeros(3))
    graph.nodes["output"] = nir.Output(output_type={"output": np.array([3])})
    last = next(a for a, b in graph.edges if b == "output")
    graph.edges = [e for e in graph.edges if e[1] != "output"] + [(last, "readout"), ("readout", "li"), ("li", "output")]
    model = graph_to_model(graph, dt, "snntorch")
    assert [layer["type"] for layer in model.layers] == ["rlif", "lif"]
    cfg = validate_config({"model": {"layers": model.layers, "readout": model.readout}})
    ours = build_network(cfg.model, 20, 3, dt)
    ours.load_state_dict(model.state, strict=True)

    x = (torch.rand(40, 4, 20, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    hidden = _run_snntorch([net[0], net[1]], x)
    top = _run_snntorch([net[2], net[3]], hidden)
    with torch.no_grad():
        h1 = ours.layers[0](x)
        h2 = ours.layers[1](h1)
    assert hidden.mean() > 0.05 and top.mean() > 0.02
    # the same forward-Euler step; only float32 rounding of beta = 1 - dt/tau separates the two
    assert torch.equal(h1, hidden) and torch.equal(h2, top)


@needs_snntorch
def test_our_export_loaded_by_snntorch_gives_the_same_spikes():
    from snntorch.import_nir import _nir_to_snntorch_module, _replace_rnn_subgraph_with_nirgraph, import_from_nir

    dt = 1e-4  # snnTorch reads every graph with this step: export for it
    layers = [{"type": "rlif", "size": 12, "beta": 0.9, "reset": "zero"},
              {"type": "lif", "size": 7, "beta": 0.8, "reset": "zero", "threshold": 0.7}]
    cfg = validate_config({"model": {"layers": layers}, "data": {"steps": 30}})
    torch.manual_seed(0)
    net = build_network(cfg.model, 40, 5, cfg.data.step_seconds)
    with torch.no_grad():
        net.layers[0].fc.weight.mul_(2.0)
    x = (torch.rand(30, 4, 40, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    with torch.no_grad():
        h1 = net.layers[0](x)
        h2 = net.layers[1](h1)
    assert h1.mean() > 0.05 and h2.mean() > 0.02

    # snnTorch has no leaky integrator: it gets the graph up to the last spiking layer
    graph = export_graph(cfg, net.state_dict(), dt=dt)
    for name in ("readout.fc", "readout.li"):
        del graph.nodes[name]
    graph.edges = [e for e in graph.edges if not e[0].startswith("readout") and not e[1].startswith("readout")]
    graph.edges.append(("layer1.lif", "output"))
    graph.nodes["output"] = nir.Output(output_type={"output": np.array([7])})

    # the feed-forward layer through snnTorch's public import
    ff = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([12])}), "fc": graph.nodes["layer1.fc"],
                             "lif": graph.nodes["layer1.lif"], "output": graph.nodes["output"]},
                      edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    module = import_from_nir(ff)
    state, out = None, []
    with torch.no_grad():
        for t in range(x.shape[0]):
            z, state = module(h1[t], state)
            out.append(z)
    assert torch.equal(torch.stack(out), h2)

    # the recurrent layer through snnTorch's own RLeaky converter: its import_from_nir leaves that converter out
    # of its dispatch table, so nirtorch runs the recurrent subgraph as W_rec (x + z_prev), not RLeaky
    grouped = _replace_rnn_subgraph_with_nirgraph(graph)
    rleaky = _nir_to_snntorch_module(grouped.nodes["layer0"], init_hidden=True)
    fc = torch.nn.Linear(40, 12)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(graph.nodes["layer0.fc"].weight))
        fc.bias.copy_(torch.from_numpy(graph.nodes["layer0.fc"].bias))
    assert torch.equal(_run_snntorch([fc, rleaky], x), h1)


@settings(max_examples=200, deadline=None)
@given(beta=st.floats(0.01, 0.999))
def test_exact_integration_differs_within_the_documented_bounds(beta):
    # docs/nir.md: integrating the exported node exactly over a step gives decay exp(-(1 - beta)) and gain g
    tau, r = decay_to_nir(np.array([beta]), 1.0)
    exact_decay = np.exp(-1.0 / tau[0])
    gain = (1.0 - exact_decay) * r[0]
    assert 0 < exact_decay - beta <= (1 - beta) ** 2 / 2 + 1e-15
    assert 0 < 1 - gain <= (1 - beta) / 2 + 1e-15
