"""The network op's Poplar graph (custom_ops/poplar/network_graph.cpp) run by the host interpreter
(tests/poplar_mock/poplar_mock): the readout's trace and every gradient against plain autograd in
float64, under every schedule and sample pass; the interpreter's refusals; each tile's recorded bytes."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from ipu_snn.bptt.schedules import double, revolve, store_all, uniform
from ipu_snn.executor import window_bounds
from ipu_snn.ipu.interpreter import (MK2_TILE_BYTES, HostNetwork, LayerSpec, carried_shapes, network_trace,
                                     selfcheck)
from ipu_snn.core.bits import pack_spikes
from ipu_snn.neuron.reference import step
from ipu_snn.neuron.spec import NeuronSpec
from ipu_snn.neuron.surrogates import spike

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")

B, T, N_IN, N_OUT = 3, 9, 13, 4
SIZES = [(6, True), (5, False)]  # an RLIF layer, then a LIF layer
# The codelets compute in float32; the reference runs in float64. Gradients agree to this fraction
# of their largest magnitude (float32 sums over B * T terms).
RTOL = 2e-5


def _schedules(windows: int):
    return {"store_all": store_all(windows), "uniform": uniform(windows, 2), "revolve": revolve(windows, 2),
            "double": double(windows, 2, 1)}


def _problem(seed: int, spec: NeuronSpec, learn_threshold: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(B, T, N_IN, generator=g) < 0.4).float()
    params, n_prev = [], N_IN
    for n, rec in SIZES:
        params += [torch.randn(n_prev, n, generator=g) * 0.8, torch.randn(n, generator=g) * 0.1,
                   torch.rand(n, generator=g) * 0.5 + 0.4]
        if rec:
            params.append(torch.randn(n, n, generator=g) * 0.5)
        if learn_threshold:
            params.append(spec.threshold * (torch.rand(n, generator=g) * 0.6 + 0.7))
        if spec.neuron.n_state > 1:  # rho
            params.append(torch.rand(n, generator=g) * 0.5 + 0.4)
        n_prev = n
    params += [torch.randn(n_prev, N_OUT, generator=g), torch.randn(N_OUT, generator=g) * 0.1,
               torch.rand(N_OUT, generator=g) * 0.5 + 0.4]
    return x, params


def _reference(x, params, spec, learn_threshold: bool = False):
    p = [t.detach().double().requires_grad_() for t in params]
    h, i = x.double().transpose(0, 1), 0
    for n, rec in SIZES:
        w, b, beta = p[i:i + 3]
        i += 3
        w_rec = p[i] if rec else None
        i += int(rec)
        threshold = p[i] if learn_threshold else None
        i += int(learn_threshold)
        rho = p[i] if spec.neuron.n_state > 1 else None
        i += int(rho is not None)
        v = torch.zeros(B, n, dtype=torch.float64)
        a = torch.zeros(B, n, dtype=torch.float64) if rho is not None else None
        z = torch.zeros(B, n, dtype=torch.float64)
        out = []
        for t in range(T):
            current = h[t] @ w + b + (z @ w_rec if rec else 0.0)
            v, a, z = step(spec, beta, rho, v, a, current, spike, threshold)
            out.append(z)
        h = torch.stack(out)
    w, b, beta = p[i:i + 3]
    v, trace = torch.zeros(B, N_OUT, dtype=torch.float64), []
    for t in range(T):
        v = beta * v + h[t] @ w + b
        trace.append(v)
    return torch.stack(trace), p


def _layers(spec, learn_decay: bool = False, learn_threshold: bool = False):
    return [LayerSpec(n, rec, spec.threshold, spec.reset_code, spec.surrogate_code, spec.scale,
                      learn_decay=learn_decay, learn_threshold=learn_threshold, kind=spec.kernel_code,
                      adapt_strength=spec.adapt_strength) for n, rec in SIZES]


@pytest.mark.parametrize("window, passes", [(1, 0), (2, 2)])
@pytest.mark.parametrize("name", ["store_all", "uniform", "revolve", "double"])
def test_trace_and_gradients_equal_autograd_under_every_schedule(name, window, passes):
    spec = NeuronSpec(reset="subtract" if window == 1 else "zero", surrogate="fast_sigmoid")
    x, params = _problem(window, spec)
    bounds = window_bounds(T, window)
    host = HostNetwork(B, T, N_IN, _layers(spec), _schedules(len(bounds))[name], bounds, N_OUT,
                       samples_per_pass=passes)
    leaves = [t.clone().requires_grad_() for t in params]
    trace = network_trace(host, pack_spikes(x), leaves)
    want, ref = _reference(x, params, spec)
    assert float((trace.detach().double() - want.detach()).abs().max()) <= 1e-5 * float(want.detach().abs().max())
    assert sum(float(host.read(f"spike_count.{i}", (B, n)).sum()) for i, (n, _) in enumerate(SIZES)) > 0
    grad = torch.randn(trace.shape, generator=torch.Generator().manual_seed(7))
    (trace * grad).sum().backward()
    (want * grad.double()).sum().backward()
    for k, (got, exp) in enumerate(zip(leaves, ref)):
        if got.grad is None:  # beta of a spiking layer: the op does not learn those decays
            assert k != len(leaves) - 1  # the readout's decay has its gradient
            continue
        scale = float(exp.grad.abs().max())
        assert scale > 0
        assert float((got.grad.double() - exp.grad).abs().max()) <= RTOL * scale
    counts = host.counts()
    assert (counts["remote_bytes_moved"] > 0) == (name == "double")


def _compare(host, x, params, spec, learn_threshold=False) -> list[int]:
    """Run the op and the float64 autograd reference; check the trace and every gradient the op returns
    (each non-zero in the reference); the indices of the parameters it returned gradients for."""
    leaves = [t.clone().requires_grad_() for t in params]
    trace = network_trace(host, pack_spikes(x), leaves)
    want, ref = _reference(x, params, spec, learn_threshold)
    assert float((trace.detach().double() - want.detach()).abs().max()) <= 1e-5 * float(want.detach().abs().max())
    grad = torch.randn(trace.shape, generator=torch.Generator().manual_seed(7))
    (trace * grad).sum().backward()
    (want * grad.double()).sum().backward()
    returned = []
    for k, (got, exp) in enumerate(zip(leaves, ref)):
        if got.grad is None:
            continue
        returned.append(k)
        scale = float(exp.grad.abs().max())
        assert scale > 0, k
        assert float((got.grad.double() - exp.grad).abs().max()) <= RTOL * scale, k
    return returned


@pytest.mark.parametrize("name", ["store_all", "uniform", "double"])
@pytest.mark.parametrize("surrogate, scale", [("triangle", 3.0), ("boxcar", 2.0)])
def test_the_listed_backward_equals_autograd(surrogate, scale, name):
    # a bounded surrogate: the op forms the spikes' gradients only where d != 0 (ListedGradInput), exact
    spec = NeuronSpec(surrogate=surrogate, scale=scale)
    layers = _layers(spec)
    assert all(l.listed for l in layers)
    x, params = _problem(3, spec)
    bounds = window_bounds(T, 2)
    # 8 tiles: several neurons on a tile, where a tile lists (one column: the dense partial costs the same)
    host = HostNetwork(B, T, N_IN, layers, _schedules(len(bounds))[name], bounds, N_OUT, samples_per_pass=2,
                       tiles=8)
    assert any(name.endswith("liveBits") for t in range(8) for name, _ in host.tile_variables(t))
    assert len(_compare(host, x, params, spec)) == len(params) - len(SIZES)  # all but the layers' betas
    # the time model counts a dot product only at the neurons of non-zero d (at the plan's density)
    dense = HostNetwork(B, T, N_IN, [replace(l, listed=False) for l in layers], store_all(len(bounds)), bounds,
                        N_OUT, samples_per_pass=2, tiles=8, holds_data=False)
    listed = HostNetwork(B, T, N_IN, layers, store_all(len(bounds)), bounds, N_OUT, samples_per_pass=2, tiles=8,
                         holds_data=False)
    assert listed.cost(True, 0.05)["work_elements"] < dense.cost(True, 0.05)["work_elements"]


@pytest.mark.parametrize("name", ["store_all", "uniform", "double"])
@pytest.mark.parametrize("reset, surrogate", [("subtract", "fast_sigmoid"), ("zero", "triangle")])
def test_learned_decays_and_thresholds_equal_autograd(name, reset, surrogate):
    # beta and a per-neuron threshold of every spiking layer learned: their gradients out of the op
    spec = NeuronSpec(reset=reset, surrogate=surrogate, scale=3.0)
    x, params = _problem(5, spec, learn_threshold=True)
    bounds = window_bounds(T, 2)
    host = HostNetwork(B, T, N_IN, _layers(spec, True, True), _schedules(len(bounds))[name], bounds, N_OUT,
                       samples_per_pass=2, tiles=8)
    assert _compare(host, x, params, spec, learn_threshold=True) == list(range(len(params)))  # every one learned


@pytest.mark.parametrize("name", ["store_all", "uniform", "double"])
@pytest.mark.parametrize("model, reset", [("alif", "subtract"), ("alif", "zero"), ("cuba", "subtract")])
def test_alif_and_cuba_equal_autograd(name, model, reset):
    # a second state (ALIF's adaptation, CUBA's synaptic current) on the tiles, carried, checkpointed on the
    # tiles (uniform) and off-chip (double); the thresholds learned; rho given (not learned)
    spec = NeuronSpec(model=model, reset=reset, surrogate="triangle" if model == "alif" else "fast_sigmoid",
                      scale=2.0, adapt_strength=0.6 if model == "alif" else 0.0)
    x, params = _problem(11, spec, learn_threshold=True)
    bounds = window_bounds(T, 2)
    host = HostNetwork(B, T, N_IN, _layers(spec, learn_threshold=True), _schedules(len(bounds))[name], bounds,
                       N_OUT, samples_per_pass=2, tiles=8)
    # all but the spiking layers' beta and rho (not learned here)
    assert len(_compare(host, x, params, spec, learn_threshold=True)) == len(params) - 2 * len(SIZES)


def test_the_tape_and_checkpoints_follow_the_schedule():
    spec = NeuronSpec()
    bounds = window_bounds(T, 1)
    full = HostNetwork(B, T, N_IN, _layers(spec), store_all(T), bounds, N_OUT, holds_data=False)
    dbl = HostNetwork(B, T, N_IN, _layers(spec), double(T, 3, 1), bounds, N_OUT, holds_data=False)
    assert full.tape_slots == T and dbl.tape_slots < T
    assert dbl.counts()["remote_bytes"] > 0 and full.counts()["remote_bytes"] == 0
    assert dbl.tile_bytes().max() < full.tile_bytes().max()


def test_each_tile_fits_and_the_counting_graph_records_the_same_bytes():
    spec = NeuronSpec()
    bounds = window_bounds(T, 3)
    for schedule in _schedules(len(bounds)).values():
        run = HostNetwork(B, T, N_IN, _layers(spec), schedule, bounds, N_OUT)
        count = HostNetwork(B, T, N_IN, _layers(spec), schedule, bounds, N_OUT, holds_data=False)
        recorded = run.tile_bytes()
        assert recorded.max() <= MK2_TILE_BYTES
        assert (recorded > 0).sum() >= sum(n for n, _ in SIZES) + N_OUT  # one neuron per tile; the trace spread
        np.testing.assert_array_equal(recorded, count.tile_bytes())


# the variables of the carried state (makeCarried's names) and of the parameters (makeInput's)
_CARRIED = (".v", ".stateBits", ".tapeD", ".tapeBits", ".tapePrevBits", ".checkpointV", ".checkpointBits", ".output")
_PARAMS = (".weightIn", ".bias", ".beta", ".weightRec")


@pytest.mark.parametrize("name", ["store_all", "revolve"])
def test_the_two_builds_hold_the_carried_state_and_the_parameters_once(name):
    # The forward build makes the carried state, the backward build (the grad op's) uses it as it is: after
    # both, its variables hold exactly one copy of each carried output, and one of each parameter.
    spec = NeuronSpec()
    bounds = window_bounds(T, 2)
    schedule = _schedules(len(bounds))[name]
    host = HostNetwork(B, T, N_IN, _layers(spec), schedule, bounds, N_OUT, holds_data=False)
    variables = host.variables()
    carried = carried_shapes(B, T, _layers(spec), N_OUT, host.tape_slots, max(schedule.max_local_slots, 0))
    one_copy = sum(int(np.prod(shape)) * (1 if bits else 4) for shape, bits in carried)
    assert sum(b for n, b in variables if n.endswith(_CARRIED)) == one_copy
    params, n_prev = 0, N_IN
    for n, rec in SIZES:
        params += 4 * (n_prev * n + 2 * n + (n * n if rec else 0))
        n_prev = n
    params += 4 * (n_prev * N_OUT + 2 * N_OUT)
    assert sum(b for n, b in variables if n.endswith(_PARAMS)) == params
    # the grad build makes its own forward-step scratch only where the schedule recomputes (revolve)
    steps_scratch = sum(1 for n, _ in variables if n.endswith(".vNew"))
    assert steps_scratch == (2 if name == "revolve" else 1) * (sum(n for n, _ in SIZES) + N_OUT)


def test_a_counting_graph_cannot_run():
    host = HostNetwork(B, T, N_IN, _layers(NeuronSpec()), store_all(T), window_bounds(T, 1), N_OUT, holds_data=False)
    with pytest.raises(Exception, match="counting graph"):
        host.run(backward=False)


@pytest.mark.parametrize("fault, message", [(0, "reads its Output field 'out'"),
                                            (1, "field 'acc' \\(InOut\\) is left unconnected"),
                                            (2, "variable 'b' has elements mapped to no tile")])
def test_the_interpreter_refuses_a_wrong_graph(fault, message):
    import re
    refusal = selfcheck(fault)
    assert refusal is not None and re.search(message, refusal), refusal
    assert selfcheck(3) is None
