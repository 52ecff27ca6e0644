"""NIR with the peers as they are installed: ``export --for snntorch / norse`` run by each peer's public
importer, and each peer's own export read here, spike for spike (docs/nir.md)."""

import importlib.util
import warnings

import yaml
import pytest
import torch
from rich.console import Console

nir = pytest.importorskip("nir", reason="needs the nir extra (pip install 'ipu_snn[nir]')")
from ipu_snn.cli import main  # noqa: E402
from ipu_snn.config import validate_config  # noqa: E402
from ipu_snn.interop.nir import (NIRWarning, SNNTORCH_DT, export_graph, graph_to_model, infer_dt,  # noqa: E402
                                 write_graph)
from ipu_snn.network import build_network  # noqa: E402
from ipu_snn.run_folder import newest_intact_checkpoint  # noqa: E402
from ipu_snn.training import train  # noqa: E402


def _has(*names):
    return all(importlib.util.find_spec(n) is not None for n in names)


needs_snntorch = pytest.mark.skipif(not _has("snntorch", "nirtorch"), reason="needs snntorch (in the test extra)")
needs_norse = pytest.mark.skipif(not _has("norse", "nirtorch"),
                                 reason="needs norse (pip install --no-deps norse==1.1.0; docs/nir.md)")

DATA = {"steps": 40, "max_time": 0.4, "channel_pooling": 20, "batch_size": 16, "val_split": 0.25,
        "synthetic": {"n_train": 48, "n_test": 16, "n_classes": 4}}
LAYERS = [{"type": "rlif", "size": 16, "beta": 0.9, "reset": "zero", "learn_decay": True},
          {"type": "lif", "size": 10, "beta": 0.8, "reset": "zero", "threshold": 0.7, "learn_decay": True,
           "learn_threshold": True}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A network trained for an epoch (learned per-neuron decays and, in the second layer, thresholds), its config
    and a batch of inputs."""
    cfg = validate_config({"model": {"layers": LAYERS, "readout": {"beta": 0.9, "learn_decay": True}},
                           "data": DATA, "training": {"epochs": 1, "lr": 0.02}})
    out = tmp_path_factory.mktemp("run")
    train(cfg, out, console=Console(quiet=True))
    weights = newest_intact_checkpoint(out).weights
    net = build_network(cfg.model, 35, 4, cfg.data.step_seconds)
    net.load_state_dict(weights)
    x = (torch.rand(DATA["steps"], 8, 35, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    return cfg, net, x, out


def ours(net, x):
    """Each spiking layer's spikes [T, B, n] and the readout's membrane trace."""
    with torch.no_grad():
        h, out = x, []
        for layer in net.layers:
            h = layer(h)
            out.append(h)
        return out, net.readout(h)


def _file(graph, tmp_path, name):
    write_graph(graph, tmp_path / name)  # what the user hands the peer: the file, read back by nir
    return nir.read(tmp_path / name)


def _run_recording(module, x, names, step, membrane):
    """Run a peer's module step by step; record the outputs of the named submodules and the readout membrane."""
    seen = {n: [] for n in names}
    hooks = [module.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: seen[n].append((o[0] if isinstance(o, tuple) else o).detach().clone())) for n in names]
    trace = []
    state = None
    with torch.no_grad():
        for t in range(x.shape[0]):
            state = step(module, x[t], state)
            trace.append(membrane(module, state))
    for h in hooks:
        h.remove()
    return [torch.stack(seen[n]) for n in names], torch.stack(trace)


@needs_snntorch
def test_export_for_snntorch_runs_in_its_public_importer_with_the_same_spikes(trained, tmp_path):
    from snntorch import utils
    from snntorch.import_nir import import_from_nir

    cfg, net, x, run = trained
    spikes, trace = ours(net, x)
    assert all(s.mean() > 0.02 for s in spikes), [float(s.mean()) for s in spikes]
    assert main(["export", str(run), "--for", "snntorch", "--out", str(tmp_path / "snn.nir")]) == 0
    graph = nir.read(tmp_path / "snn.nir")
    module = import_from_nir(graph)
    utils.reset(module)

    def step(m, xt, state):
        _, state = m(xt, state)
        return state

    got, mem = _run_recording(module, x, ["layer0_lif", "layer1_lif"], step,
                              lambda m, s: m.get_submodule("readout_li").mem.detach().clone())
    for a, b in zip(got, spikes):
        assert torch.equal(a, b)
    torch.testing.assert_close(mem, trace, rtol=1e-5, atol=1e-5)
    assert torch.equal(mem.argmax(-1), trace.argmax(-1))


def _norse_step(m, xt, state):
    _, state = m(xt, state)
    return state


@needs_norse
def test_export_for_norse_runs_in_its_public_importer_with_the_same_spikes(trained, tmp_path):
    from norse.torch import from_nir

    cfg, net, x, run = trained
    spikes, trace = ours(net, x)
    assert main(["export", str(run), "--for", "norse", "--out", str(tmp_path / "norse.nir")]) == 0
    graph = nir.read(tmp_path / "norse.nir")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Norse 1.1 calls nirtorch.load
        module = from_nir(graph, dt=1e-3)
    got, mem = _run_recording(module, x, ["layer0_lif", "layer1_lif"], _norse_step,
                              lambda m, s: s.state["readout_li"][0].v.detach().clone())
    for a, b in zip(got, spikes):
        assert torch.equal(a, b)
    torch.testing.assert_close(mem, trace, rtol=1e-4, atol=1e-4)


def _integrating_readout(trained):
    cfg, net, x, _ = trained
    net = build_network(cfg.model, 35, 4, cfg.data.step_seconds)
    net.load_state_dict(trained[1].state_dict())
    with torch.no_grad():
        net.readout.beta.fill_(1.0)  # a learned decay that reached 1: a plain integrator
    return cfg, net, x


def test_a_readout_that_does_not_leak_is_written_as_an_integrator(trained, tmp_path):
    cfg, net, x = _integrating_readout(trained)
    generic = export_graph(cfg, net.state_dict())
    assert type(generic.nodes["readout.li"]).__name__ == "I"
    assert type(export_graph(cfg, net.state_dict(), peer="norse").nodes["readout.li"]).__name__ == "IF"
    back = graph_to_model(_file(generic, tmp_path, "g.nir"), cfg.data.step_seconds)
    for key, value in net.state_dict().items():
        assert torch.equal(back.state[key], value), key


@needs_norse
def test_norse_runs_an_integrating_readout_exactly(trained, tmp_path):
    from norse.torch import from_nir

    cfg, net, x = _integrating_readout(trained)
    _, trace = ours(net, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = from_nir(_file(export_graph(cfg, net.state_dict(), peer="norse"), tmp_path, "n.nir"), dt=1e-3)
    _, mem = _run_recording(module, x, [], _norse_step, lambda m, s: s.state["readout_li"][0].v.detach().clone())
    torch.testing.assert_close(mem, trace, rtol=1e-4, atol=1e-4)


@needs_snntorch
def test_snntorch_runs_an_integrating_readout(trained, tmp_path):
    from snntorch import utils
    from snntorch.import_nir import import_from_nir

    cfg, net, x = _integrating_readout(trained)
    _, trace = ours(net, x)
    module = import_from_nir(_file(export_graph(cfg, net.state_dict(), peer="snntorch"), tmp_path, "s.nir"))
    utils.reset(module)
    step = _norse_step
    _, mem = _run_recording(module, x, [], step, lambda m, s: m.get_submodule("readout_li").mem.detach().clone())
    torch.testing.assert_close(mem, trace, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ peers' own exports


@needs_snntorch
def test_snntorchs_own_recurrent_export_reads_back_with_the_same_spikes(tmp_path):
    import snntorch as snn
    from snntorch import utils
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(20, 12),
        snn.RLeaky(beta=0.9, linear_features=12, init_hidden=True, reset_mechanism="zero", reset_delay=False),
        torch.nn.Linear(12, 5),
        snn.Leaky(beta=torch.full((5,), 0.8), threshold=torch.ones(5), init_hidden=True, reset_mechanism="zero",
                  reset_delay=False))
    with torch.no_grad():
        net[0].weight.mul_(2.0)
        net[1].recurrent.weight.mul_(2.0)
        net[2].weight.mul_(2.0)
    graph = _file(export_to_nir(net, torch.zeros(1, 20), ignore_dims=[0]), tmp_path, "snntorch.nir")
    with pytest.warns(NIRWarning, match="snnTorch.*nir_dt = 0.0001.*reset_delay"):
        dt = infer_dt(graph, 0.01, "snntorch.nir")
    with pytest.warns(NIRWarning, match="ends in spiking layer.*spike counts are the logits.*nir_output: membrane"):
        model = graph_to_model(graph, dt, "snntorch.nir")
    cfg = validate_config({"model": {"layers": model.layers, "readout": model.readout}})
    mine = build_network(cfg.model, 20, 5, dt)
    mine.load_state_dict(model.state, strict=True)
    assert [layer.type for layer in cfg.model.layers] == ["rlif", "lif"]

    x = (torch.rand(40, 4, 20, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    utils.reset(net)
    with torch.no_grad():
        hidden, top = [], []
        for t in range(x.shape[0]):
            h = net[1](net[0](x[t]))
            hidden.append(h)
            top.append(net[3](net[2](h)))
    hidden, top = torch.stack(hidden), torch.stack(top)
    spikes, _ = ours(mine, x)
    assert hidden.mean() > 0.05 and top.mean() > 0.05
    assert torch.equal(spikes[0], hidden) and torch.equal(spikes[1], top)
    assert torch.equal(mine(x.transpose(0, 1)).logits, top.sum(0))  # the logits are the spike counts


@needs_norse
def test_norses_own_export_reads_back_with_the_same_spikes(tmp_path):
    import norse.torch as norse
    from norse.torch.utils.export_nir import to_nir

    torch.manual_seed(0)
    net = norse.SequentialState(torch.nn.Linear(20, 12), norse.LIFBoxCell(), torch.nn.Linear(12, 5),
                                norse.LIBoxCell())
    with torch.no_grad():
        net[0].weight.mul_(8.0)
        net[0].bias.add_(1.5)
    # in memory: nir 1.0.8 cannot write Norse 1.1's graphs (0-d torch tensors as parameters)
    graph = to_nir(net, torch.zeros(1, 20))  # a batch dimension in its Input and Output types
    assert list(graph.nodes["input"].input_type["input"]) == [1, 20]
    with pytest.warns(NIRWarning, match="Norse.*nir_dt = dt\\^2 = 1e-06"):
        dt = infer_dt(graph, 0.01, "norse.nir")
    model = graph_to_model(graph, dt, "norse.nir")
    cfg = validate_config({"model": {"layers": model.layers, "readout": model.readout}})
    mine = build_network(cfg.model, 20, 5, dt)
    mine.load_state_dict(model.state, strict=True)

    x = (torch.rand(40, 4, 20, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    with torch.no_grad():
        lif, li, hidden, trace = net[1], net[3], [], []
        s1 = s3 = None
        for t in range(x.shape[0]):
            z, s1 = lif(net[0](x[t]), s1)
            v, s3 = li(net[2](z), s3)
            hidden.append(z)
            trace.append(v)
    hidden, trace = torch.stack(hidden), torch.stack(trace)
    spikes, membrane = ours(mine, x)
    assert hidden.mean() > 0.05
    assert torch.equal(spikes[0], hidden)
    torch.testing.assert_close(membrane, trace, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("peer", ["snntorch", "norse"])
def test_a_peer_export_reads_back_here(trained, tmp_path, peer):
    cfg, net, x, _ = trained
    graph = _file(export_graph(cfg, net.state_dict(), peer=peer), tmp_path, f"{peer}.nir")
    back = graph_to_model(graph, infer_dt(graph, 1.0))  # the graph's own ipu_snn.dt, not the 1.0 offered
    assert [layer["type"] for layer in back.layers] == ["rlif", "lif"]
    assert back.layers[1]["learn_threshold"] and float(net.layers[1].threshold.detach().std()) > 0  # learned, per neuron
    again = build_network(validate_config({"model": {"layers": back.layers, "readout": back.readout}}).model, 35, 4,
                          cfg.data.step_seconds)
    again.load_state_dict(back.state, strict=True)
    spikes, trace = ours(net, x)
    spikes2, trace2 = ours(again, x)
    for a, b in zip(spikes, spikes2):
        assert torch.equal(a, b)
    torch.testing.assert_close(trace2, trace, rtol=1e-5, atol=1e-5)


def test_snntorch_export_refuses_another_dt(trained, tmp_path, capsys):
    run = trained[3]
    assert main(["export", str(run), "--for", "snntorch", "--dt", "0.01", "--out", str(tmp_path / "x.nir")]) == 2
    assert "snntorch reads every graph with dt = 0.0001 s" in capsys.readouterr().err
    assert not (tmp_path / "x.nir").exists()


@needs_snntorch
def test_the_cli_states_its_guesses_about_a_snntorch_graph(tmp_path, capsys):
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    net = torch.nn.Sequential(torch.nn.Linear(35, 8), snn.Leaky(beta=torch.full((8,), 0.9), threshold=torch.ones(8),
                                                                init_hidden=True, reset_mechanism="zero"),
                              torch.nn.Linear(8, 4), snn.Leaky(beta=torch.full((4,), 0.8), threshold=torch.ones(4),
                                                               init_hidden=True, reset_mechanism="zero"))
    nir.write(tmp_path / "s.nir", export_to_nir(net, torch.zeros(1, 35), ignore_dims=[0]))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {"from_nir": "s.nir"}, "data": DATA}))
    assert main(["validate", str(tmp_path / "c.yaml")]) == 0
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert "warning: " in err and "nir_dt = 0.0001 s" in err and "reset_delay" in err
    assert "ends in spiking layer" in err and "Traceback" not in err and "NIRWarning" not in err
    shown = yaml.safe_load(captured.out)
    assert shown["model"]["readout"]["reduce"] == "last" and shown["model"]["readout"]["beta"] == 1.0


# ------------------------------------------------------------------------------------ cuba (NIR's CubaLIF)

CUBA = [{"type": "cuba", "size": 16, "recurrent": True, "reset": "zero", "learn_decay": True},
        {"type": "cuba", "size": 10, "reset": "zero", "threshold": 0.7, "learn_threshold": True}]


@pytest.fixture(scope="module")
def cuba():
    """A random-weight cuba network (a recurrent and a feed-forward layer; per-neuron decays and, in the second
    layer, learned per-neuron thresholds) and a batch of inputs."""
    cfg = validate_config({"model": {"layers": CUBA, "readout": {"beta": 0.9, "learn_decay": True}}, "data": DATA})
    torch.manual_seed(0)
    net = build_network(cfg.model, 35, 4, cfg.data.step_seconds)
    with torch.no_grad():
        for name, value in net.state_dict().items():
            low, high = {"beta": (0.7, 0.95), "alpha": (0.3, 0.9), "threshold": (0.5, 1.0)}.get(name.split(".")[-1],
                                                                                               (None, None))
            if low is not None:
                value.uniform_(low, high)
    x = (torch.rand(DATA["steps"], 8, 35, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    return cfg, net, x


@pytest.mark.parametrize("peer", [pytest.param("snntorch", marks=needs_snntorch), pytest.param("norse", marks=needs_norse)])
def test_a_cuba_export_runs_in_each_peers_importer_with_the_same_spikes(cuba, tmp_path, peer):
    # snnTorch reads CubaLIF as its Synaptic (one threshold per layer: export folds the learned ones into the
    # weights), Norse as LIBoxCell -> r -> LIFBoxCell; the recurrent layer as each peer runs a recurrent LIF
    cfg, net, x = cuba
    spikes, trace = ours(net, x)
    assert all(s.mean() > 0.05 for s in spikes), [float(s.mean()) for s in spikes]
    graph = _file(export_graph(cfg, net.state_dict(), peer=peer), tmp_path, f"{peer}.nir")
    assert type(graph.nodes["layer0.lif"]).__name__ == "CubaLIF"
    if peer == "snntorch":
        from snntorch import utils
        from snntorch.import_nir import import_from_nir

        module = import_from_nir(graph)
        utils.reset(module)
        membrane = lambda m, s: m.get_submodule("readout_li").mem.detach().clone()  # noqa: E731
    else:
        from norse.torch import from_nir

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = from_nir(graph, dt=1e-3)
        membrane = lambda m, s: s.state["readout_li"][0].v.detach().clone()  # noqa: E731
    got, mem = _run_recording(module, x, ["layer0_lif", "layer1_lif"], _norse_step, membrane)
    for a, b in zip(got, spikes):
        assert torch.equal(a, b)
    torch.testing.assert_close(mem, trace, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("peer", ["generic", "snntorch", "norse"])
def test_a_cuba_export_reads_back_here(cuba, tmp_path, peer):
    cfg, net, x = cuba
    graph = _file(export_graph(cfg, net.state_dict(), peer=peer), tmp_path, f"{peer}.nir")
    back = graph_to_model(graph, infer_dt(graph, 1.0))
    assert [(layer["type"], layer["recurrent"], layer["learn_threshold"]) for layer in back.layers] == \
        [("cuba", True, False), ("cuba", False, True)]
    again = build_network(validate_config({"model": {"layers": back.layers, "readout": back.readout}}).model, 35, 4,
                          cfg.data.step_seconds)
    again.load_state_dict(back.state, strict=True)
    if peer == "generic":  # as written: the same parameters
        for key, value in net.state_dict().items():
            torch.testing.assert_close(back.state[key], value, rtol=1e-6, atol=1e-7, msg=key)
    spikes, trace = ours(net, x)
    spikes2, trace2 = ours(again, x)
    for a, b in zip(spikes, spikes2):
        assert torch.equal(a, b)
    torch.testing.assert_close(trace2, trace, rtol=1e-5, atol=1e-5)


@needs_snntorch
@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.xfail(strict=True, raises=ValueError, reason="snnTorch 1.0's export_to_nir cannot write Synaptic (nir's "
                   "type inference fails: snntorch#410) nor RSynaptic (nirtorch: 'Cannot find the input of an empty "
                   "graph'); docs/nir.md")
def test_snntorchs_own_cuba_export_reads_back_with_the_same_spikes(recurrent):
    import snntorch as snn
    from snntorch import utils
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    kind = dict(alpha=0.8, beta=0.9, init_hidden=True, reset_mechanism="zero", reset_delay=False)
    cell = snn.RSynaptic(linear_features=12, **kind) if recurrent else snn.Synaptic(**kind)
    net = torch.nn.Sequential(torch.nn.Linear(20, 12), cell)
    graph = export_to_nir(net, torch.zeros(1, 20), ignore_dims=[0])  # raises in snnTorch 1.0.0
    model = graph_to_model(graph, SNNTORCH_DT, spiking_output="spike_count")
    mine = build_network(validate_config({"model": {"layers": model.layers, "readout": model.readout}}).model,
                         20, 12, SNNTORCH_DT)
    mine.load_state_dict(model.state, strict=True)
    x = (torch.rand(40, 4, 20, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    utils.reset(net)
    with torch.no_grad():
        theirs = torch.stack([net(x[t]) for t in range(40)])  # init_hidden: the spikes alone
    assert torch.equal(ours(mine, x)[0][0], theirs)


@needs_norse
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="Norse 1.1 writes its current-based LIFCell as a "
                   "CubaLIF with w_in = 1 (NIR scales the input by dt / tau_syn, LIFCell does not) and its membrane "
                   "takes the previous step's synaptic current (NIR's and ours take this step's); docs/nir.md")
def test_norses_own_cuba_export_reads_back_with_the_same_spikes():
    import norse.torch as norse
    from norse.torch.utils.export_nir import to_nir

    torch.manual_seed(0)
    net = norse.SequentialState(torch.nn.Linear(20, 12), norse.LIFCell(), torch.nn.Linear(12, 5), norse.LIBoxCell())
    with torch.no_grad():
        net[0].weight.mul_(8.0)
        net[0].bias.add_(1.5)
    graph = to_nir(net, torch.zeros(1, 20))
    assert type(graph.nodes["1"]).__name__ == "CubaLIF"
    with pytest.warns(NIRWarning, match="Norse"):
        dt = infer_dt(graph, 0.01, "norse.nir")
    model = graph_to_model(graph, dt, "norse.nir")
    mine = build_network(validate_config({"model": {"layers": model.layers, "readout": model.readout}}).model,
                         20, 5, dt)
    mine.load_state_dict(model.state, strict=True)
    x = (torch.rand(40, 4, 20, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    with torch.no_grad():
        state, hidden = None, []
        for t in range(x.shape[0]):
            z, state = net[1](net[0](x[t]), state)
            hidden.append(z)
    hidden = torch.stack(hidden)
    assert hidden.mean() > 0.05
    assert torch.equal(ours(mine, x)[0][0], hidden)


# ------------------------------------------------------------------------------------ Norse's recurrent export


@needs_norse
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="Norse 1.1's to_nir writes LIFRecurrentCell as a node "
                   "of None, without its recurrent weights; docs/nir.md")
def test_norse_writes_a_recurrent_cell_as_nir():
    import norse.torch as norse
    from norse.torch.utils.export_nir import to_nir

    graph = to_nir(norse.SequentialState(torch.nn.Linear(20, 12), norse.LIFRecurrentCell(12, 12)), torch.zeros(1, 20))
    kinds = sorted(type(node).__name__ for node in graph.nodes.values())
    assert "NoneType" not in kinds and any(k in kinds for k in ("LIF", "CubaLIF")), kinds
    graph_to_model(graph, 1e-6, spiking_output="spike_count")  # and it reads here as a recurrent layer


@needs_norse
@pytest.mark.xfail(strict=True, raises=AttributeError, reason="Norse 1.1's to_nir of a RecurrentSequential fails in "
                   "nirtorch: \"'list' object has no attribute 'shape'\"; docs/nir.md")
def test_norse_writes_a_recurrent_sequential_as_nir():
    import norse.torch as norse
    from norse.torch.utils.export_nir import to_nir

    net = norse.RecurrentSequential(torch.nn.Linear(20, 12), norse.LIFBoxCell(), torch.nn.Linear(12, 12))
    graph = to_nir(net, torch.zeros(1, 20))
    assert any(type(node).__name__ == "LIF" for node in graph.nodes.values())
