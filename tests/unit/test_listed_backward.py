"""model.sparse_grad: auto, the exact listed backward, against the dense adjoint in float64.

For every neuron type x BPTT schedule x surrogate of bounded support, drawn at random: the loss is
the same and every gradient is within 1e-12 of its scale, while the backward visits fewer neurons
than the dense adjoint would (so the listed path is what ran)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.bptt import double, revolve, two_level_optimal, uniform
from ipu_snn.bptt.schedules import Costs
from ipu_snn.config import ModelConfig
from ipu_snn.errors import ConfigError
from ipu_snn.executor import TimeLoop
from ipu_snn.network import build_network, listed_backward, pack_inputs

SCHEDULES = {
    "store_all": lambda: None,
    "uniform": lambda: (lambda n: uniform(n, 2)),
    "revolve": lambda: (lambda n: revolve(n, 2)),
    "double": lambda: (lambda n: double(n, 2, 0, "uniform")),
    "two_level": lambda: (lambda n: two_level_optimal(n, 2, n, Costs(offchip_write=0.5, offchip_read=0.5))),
}
LAYERS = {"lif": {"type": "lif"}, "rlif": {"type": "rlif"}, "alif": {"type": "alif", "adapt_strength": 0.6},
          "alif_ff": {"type": "alif", "recurrent": False}}


def config(kinds, surrogate, scale, learn, **extra) -> ModelConfig:
    layers = [{**LAYERS[k], "size": size, "learn_decay": learn, "threshold": 0.6,
               "surrogate": {"name": surrogate, "scale": scale}} for k, size in zip(kinds, (13, 9, 11))]
    return ModelConfig.model_validate({"layers": layers, "readout": {"learn_decay": learn, "reduce": "mean"},
                                       **extra})


def run(cfg, x, y, loop=TimeLoop(), seed=0):
    torch.manual_seed(seed)
    net = build_network(cfg, 7, 4, dt=1e-3, loop=loop).double()
    out = net(x)
    loss = F.cross_entropy(out.logits, y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in net.named_parameters()}, net.backward_visits()


@settings(max_examples=30, deadline=None)
@given(kinds=st.lists(st.sampled_from(sorted(LAYERS)), min_size=1, max_size=2), surrogate=st.sampled_from(["triangle", "boxcar"]),
       scale=st.sampled_from([1.0, 3.0, 10.0]), learn=st.booleans(), T=st.integers(2, 30), window=st.integers(1, 12),
       schedule=st.sampled_from(sorted(SCHEDULES)), sparse=st.sampled_from([True, "auto"]),
       density=st.floats(0.05, 0.6), seed=st.integers(0, 2**16))
def test_auto_is_exact_for_bounded_surrogates(kinds, surrogate, scale, learn, T, window, schedule, sparse, density, seed):
    g = torch.Generator().manual_seed(seed)
    frames = (torch.rand(3, T, 7, generator=g) < density).double()
    y = torch.randint(0, 4, (3,), generator=g)
    listed = config(kinds, surrogate, scale, learn, sparse=sparse, sparse_capacity=1.0)  # sparse_grad: auto
    assert listed.sparse_grad == "auto" and all(p.listed and p.exact for p in listed_backward(listed, True))
    loss_ref, grads_ref, no_visits = run(config(kinds, surrogate, scale, learn, sparse_grad="dense"), frames, y,
                                         seed=seed)
    assert no_visits == {}
    loss, grads, visits = run(listed, pack_inputs(frames), y, TimeLoop(window, SCHEDULES[schedule]()), seed=seed)
    assert abs(loss - loss_ref) <= 1e-12 * abs(loss_ref)
    for name, ref in grads_ref.items():
        assert (grads[name] - ref).abs().max().item() <= 1e-12 * ref.abs().max().item() + 1e-300, name
    assert set(visits) == {f"backward_visited_layer{i}" for i in range(len(kinds))}
    assert all(0.0 <= v <= 1.0 for v in visits.values())


def test_the_listed_backward_visits_only_listed_neurons():
    # sparse: true lists at every product, so what is visited is exactly the spikes and the neurons of
    # non-zero surrogate derivative, a fraction that a narrower surrogate makes smaller
    g = torch.Generator().manual_seed(1)
    frames = (torch.rand(4, 30, 7, generator=g) < 0.2).double()
    y = torch.randint(0, 4, (4,), generator=g)
    visited = {}
    for scale in (1.0, 10.0):
        cfg = config(["rlif"], "triangle", scale, False, sparse=True, sparse_capacity=1.0)
        visited[scale] = run(cfg, pack_inputs(frames), y)[2]["backward_visited_layer0"]
    assert 0.0 < visited[10.0] < visited[1.0] <= 1.0


def test_auto_keeps_the_dense_adjoint_where_listing_is_not_exact():
    for cfg, fused in ((config(["rlif"], "fast_sigmoid", 10.0, False, sparse=True), True),  # unbounded support
                       (config(["rlif"], "triangle", 3.0, False, sparse=False), True),  # no spike lists
                       (config(["rlif"], "triangle", 3.0, False, sparse=True), False)):  # autograd: no near bits
        assert not listed_backward(cfg, fused)[0].listed
    # the ipu-emulator's network op lists spikes only: auto keeps the dense adjoint there
    bounded = config(["rlif"], "triangle", 3.0, False, sparse=True)
    assert listed_backward(bounded, True)[0].listed and not listed_backward(bounded, True, "ipu-emulator")[0].listed
    approximate = config(["rlif"], "fast_sigmoid", 10.0, False, sparse=True, sparse_grad="spikes")
    assert listed_backward(approximate, True)[0] == (True, False, None)


def test_the_old_name_of_the_near_threshold_fraction_is_an_error_naming_the_new_one():
    with pytest.raises(ValueError, match="sparse_near was renamed model.sparse_grad_min_derivative"):
        config(["rlif"], "triangle", 3.0, False, sparse=True, sparse_grad="spikes", sparse_near=0.0)
    with pytest.raises(ValueError, match="sparse_grad_min_derivative lists near-threshold neurons"):
        config(["rlif"], "triangle", 3.0, False, sparse=True, sparse_grad_min_derivative=0.0)
    with pytest.raises(ConfigError, match="sparse_grad_min_derivative"):
        build_network(config(["rlif"], "triangle", 3.0, False, sparse=True, sparse_grad="spikes",
                             sparse_grad_min_derivative=0.0, fused=False), 7, 4, dt=1e-3)
