"""The unified time loop (fused, sparse and checkpointed at once) against the plain autograd loop, in float64.

Every combination of schedule x window length x sparse/dense products x
lif/rlif/alif/cuba x learned decays x learned thresholds is drawn at random; the gradients of every
parameter must equal plain autograd through ``neuron.reference.step``.
"""

import importlib.util
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.bptt import double, revolve, two_level_optimal, uniform
from ipu_snn.bptt.schedules import Costs
from ipu_snn.config import ModelConfig
from ipu_snn.errors import UserError
from ipu_snn.executor import TimeLoop, window_bounds
from ipu_snn.network import auto_products, build_network, pack_inputs
from ipu_snn.ops.policy import crossover_key
from ipu_snn.neuron.window import LayerState, WindowSettings, spiking_window
from ipu_snn.neuron.spec import NeuronSpec
from ipu_snn.ops.policy import SparsePolicy

SCHEDULES = {
    "store_all": lambda W: None,
    "uniform": lambda W: (lambda n: uniform(n, 2)),
    "revolve": lambda W: (lambda n: revolve(n, 2)),
    "double": lambda W: (lambda n: double(n, 2, 0, "uniform")),
    "double_revolve": lambda W: (lambda n: double(n, 3, 1, "revolve")),
    "two_level": lambda W: (lambda n: two_level_optimal(n, 2, n, Costs(offchip_write=0.5, offchip_read=0.5))),
}
LAYERS = {
    "lif": {"type": "lif"},
    "rlif": {"type": "rlif"},
    "alif": {"type": "alif", "adapt_strength": 0.6},
    "alif_ff": {"type": "alif", "recurrent": False},
    "cuba": {"type": "cuba", "recurrent": True},
    "cuba_ff": {"type": "cuba"},
}


def model(kinds, learn, learn_threshold=False, reset="subtract", **extra) -> ModelConfig:
    layers = [{**LAYERS[k], "size": size, "learn_decay": learn, "threshold": 0.6, "reset": reset,
               "learn_threshold": learn_threshold} for k, size in zip(kinds, (13, 9, 11))]
    return ModelConfig.model_validate({"layers": layers, "readout": {"learn_decay": learn, "reduce": "max"}, **extra})


def run(cfg, x, y, loop=TimeLoop(), mode=None, kernels=None, seed=0):
    torch.manual_seed(seed)
    n_in = x.shape[-1] if x.dtype != torch.uint8 else 7
    # sparse: auto goes sparse at or below a crossover the calibration step would measure; fixed here
    crossovers = {crossover_key(*p): 0.3 for p in auto_products(cfg, n_in, 4)}
    net = build_network(cfg, n_in, 4, dt=1e-3, loop=loop, mode=mode, crossovers=crossovers).double()
    if kernels:
        for layer in net.layers:
            layer.settings = replace(layer.settings, kernels=kernels)
        net.readout.kernels = kernels
    out = net(x)
    F.cross_entropy(out.logits, y).backward()
    return out, {n: p.grad.clone() for n, p in net.named_parameters()}


def assert_same(got, expected, tol=1e-9):
    (out, grads), (out_ref, grads_ref) = got, expected
    torch.testing.assert_close(out.logits, out_ref.logits, rtol=tol, atol=tol)
    torch.testing.assert_close(out.rates, out_ref.rates)
    for name, g in grads_ref.items():
        scale = g.abs().max().item() + 1e-12
        assert (grads[name] - g).abs().max().item() <= tol * scale + 1e-12, name


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.sampled_from(sorted(LAYERS)), min_size=1, max_size=2),
       learn=st.booleans(), learn_threshold=st.booleans(), reset=st.sampled_from(["subtract", "zero"]),
       T=st.integers(1, 40), window=st.integers(1, 16),
       schedule=st.sampled_from(sorted(SCHEDULES)), sparse=st.sampled_from([False, True, "auto"]),
       density=st.floats(0.02, 0.6), packed=st.booleans(), seed=st.integers(0, 2**16))
def test_every_combination_equals_the_plain_loop(kinds, learn, learn_threshold, reset, T, window, schedule, sparse,
                                                 density, packed, seed):
    g = torch.Generator().manual_seed(seed)
    frames = (torch.rand(3, T, 7, generator=g) < density).double()
    x = pack_inputs(frames) if packed else frames
    y = torch.randint(0, 4, (3,), generator=g)
    extra = {"sparse": sparse, "sparse_capacity": 1.0} if sparse is not False else {}
    cfg = model(kinds, learn, learn_threshold, reset, **extra)
    loop = TimeLoop(window, SCHEDULES[schedule](window))
    expected = run(cfg.model_copy(update={"fused": False}), frames, y, seed=seed)
    assert_same(run(cfg, x, y, loop, seed=seed), expected)


@pytest.mark.parametrize("case", range(6))
def test_a_learned_threshold_is_exact_under_every_schedule_and_product(case):
    # model.layers.N.learn_threshold: a threshold [N] per neuron, whose gradient the fused window forms from its
    # own adjoints; against autograd through the reference step: each model once, the resets, the schedules, dense /
    # sparse / auto products and the listed (triangle) and dense adjoints taken in turn, the cpu window and the
    # generic one (reference and triton step kernels) in turn
    kind, reset = sorted(LAYERS)[case], ("subtract", "zero")[case % 2]
    schedule, sparse = sorted(SCHEDULES)[case % 6], (False, True, "auto")[case % 3]
    g = torch.Generator().manual_seed(11 + case)
    frames = (torch.rand(3, 13, 7, generator=g) < 0.35).double()
    y = torch.randint(0, 4, (3,), generator=g)
    extra = {"sparse": sparse, "sparse_capacity": 1.0} if sparse is not False else {}
    cfg = model([kind, "rlif"], False, True, reset, **extra)
    if case % 2:  # a bounded surrogate: sparse_grad auto lists the adjoint where the products are sparse
        layers = [l.model_dump() | {"surrogate": {"name": "triangle", "scale": 2.0}} for l in cfg.layers]
        cfg = ModelConfig.model_validate(cfg.model_dump() | {"layers": layers})
    loop = TimeLoop(4, SCHEDULES[schedule](4))
    expected = run(cfg.model_copy(update={"fused": False}), frames, y, seed=case)
    assert expected[1]["layers.0.threshold"].abs().max() > 1e-3  # the gradient reaches the threshold
    kernels = {3: "reference", 5: "triton" if importlib.util.find_spec("triton") else None}.get(case)
    assert_same(run(cfg, pack_inputs(frames), y, loop, kernels=kernels, seed=case), expected)


@pytest.mark.parametrize("kernels", ["reference", pytest.param("triton", marks=pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed (pip install 'ipu_snn[gpu]')"))])
def test_the_generic_window_loop_equals_the_cpu_one(kernels):
    # backends without a whole-window kernel run the same window from Python, one step kernel at a time
    g = torch.Generator().manual_seed(3)
    x = pack_inputs((torch.rand(2, 12, 7, generator=g) < 0.3).double())
    y = torch.randint(0, 4, (2,), generator=g)
    for sparse in (False, True):
        cfg = model(["rlif", "alif"], True, sparse=sparse, sparse_capacity=1.0)
        loop = TimeLoop(5, lambda n: revolve(n, 2))
        assert_same(run(cfg, x, y, loop, kernels=kernels), run(cfg, x, y, loop))


@pytest.mark.parametrize("surrogate, near, exact", [("triangle", 0.0, True), ("boxcar", 0.0, True),
                                                    ("fast_sigmoid", 0.0, True), ("fast_sigmoid", 0.5, False)])
def test_listed_backward_is_exact_for_bounded_surrogates(surrogate, near, exact):
    # sparse_grad: spikes with sparse_grad_min_derivative: 0 lists every neuron whose surrogate derivative is not zero:
    # the only ones a gradient of the spikes can reach, so nothing is lost (fast_sigmoid lists every
    # neuron: exact and dense; triangle and boxcar, of bounded support, list few)
    g = torch.Generator().manual_seed(7)
    frames = (torch.rand(3, 25, 7, generator=g) < 0.4).double()
    y = torch.randint(0, 4, (3,), generator=g)
    layers = [{"type": t, "size": 16, "threshold": 0.5, "surrogate": {"name": surrogate, "scale": 4.0}}
              for t in ("rlif", "alif")]
    base = {"layers": layers, "readout": {"reduce": "mean"}}
    dense = ModelConfig.model_validate(base)
    listed = ModelConfig.model_validate({**base, "sparse": True, "sparse_capacity": 1.0, "sparse_grad": "spikes",
                                         "sparse_grad_min_derivative": near})
    expected = run(dense, frames, y)
    for loop in (TimeLoop(), TimeLoop(4, lambda n: revolve(n, 2))):
        got = run(listed, pack_inputs(frames), y, loop)
        if exact:
            assert_same(got, expected)
        else:  # fast_sigmoid is never zero: a cut-off above 0 leaves neurons out, and their gradient with them
            assert max((got[1][n] - g).abs().max().item() for n, g in expected[1].items()) > 1e-6


def test_windows_split_where_asked():
    assert window_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert window_bounds(3, 8) == [(0, 3)]
    with pytest.raises(ValueError):
        window_bounds(0, 4)


def test_state_adjoints_chain_across_two_calls():
    # a window's initial-state gradient is what the previous window's final state receives
    torch.manual_seed(0)
    spec = NeuronSpec("alif", threshold=0.5, adapt_strength=0.4)
    policy = SparsePolicy()
    settings_ = WindowSettings(spec, recurrent=policy)
    n, b = 6, 2
    w = torch.randn(n, n, dtype=torch.float64, requires_grad=True)
    beta = torch.full((n,), 0.8, dtype=torch.float64)
    rho = torch.full((n,), 0.9, dtype=torch.float64)
    currents = torch.randn(10, b, n, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(b, n, dtype=torch.float64)
    state = LayerState(zeros, zeros, zeros, None)
    whole, _, _ = spiking_window(currents, state, w, beta, rho, settings_)
    first, mid, _ = spiking_window(currents[:4], state, w, beta, rho, settings_)
    second, _, _ = spiking_window(currents[4:], mid, w, beta, rho, settings_)
    weights = torch.randn(10, b, n, dtype=torch.float64)
    g_whole = torch.autograd.grad((whole.z * weights).sum(), (currents, w))
    g_split = torch.autograd.grad((torch.cat([first.z, second.z]) * weights).sum(), (currents, w))
    for a, c in zip(g_split, g_whole):
        torch.testing.assert_close(a, c)


def test_reduced_precision_derivatives_stay_within_their_bound():
    g = torch.Generator().manual_seed(5)
    x = pack_inputs((torch.rand(8, 40, 7, generator=g) < 0.3).float())
    y = torch.randint(0, 4, (8,), generator=g)
    cfg = ModelConfig.model_validate({"layers": [{"type": "rlif", "size": 64, "learn_decay": True}]})
    _, exact = run(cfg, x, y)
    for dtype, unit in (("float16", 2.0 ** -11), ("bfloat16", 2.0 ** -8)):
        _, low = run(cfg.model_copy(update={"fused_saved_dtype": dtype}), x, y)
        for name, e in exact.items():
            rel = ((low[name] - e).norm() / e.norm()).item()
            # each stored factor is off by at most one rounding unit; over 40 steps the errors add up
            # mostly incoherently, so a few units bound the whole gradient
            assert rel < 8 * unit, (dtype, name, rel)


def test_overflow_is_an_error_naming_the_field_or_is_counted():
    x = pack_inputs(torch.ones(2, 5, 7, dtype=torch.float64))  # every input spikes: more than 2 of 7 fit
    y = torch.zeros(2, dtype=torch.long)
    strict = model(["rlif"], False, sparse=True, sparse_capacity=0.3)
    with pytest.raises(UserError, match=r"model\.layers\.0's input.*model\.sparse_capacity"):
        run(strict, x, y)
    counting = model(["rlif"], False, sparse=True, sparse_capacity=0.3, sparse_overflow="drop_and_count")
    out, _ = run(counting, x, y)
    assert out.dropped.sum().item() >= 2 * 5 * (7 - 3)  # at least the input layer's overflow, every step
    # auto never drops: where the spikes do not fit, it multiplies densely
    out, _ = run(model(["rlif"], False, sparse="auto", sparse_capacity=0.3), x, y)
    assert out.dropped.sum().item() == 0


def test_sparse_grad_min_derivative_needs_the_fused_mode():
    cfg = model(["rlif"], False, sparse=True, sparse_grad="spikes", sparse_grad_min_derivative=0.0, fused=False)
    with pytest.raises(UserError, match="sparse_grad_min_derivative"):
        build_network(cfg, 7, 4, dt=1e-3)
