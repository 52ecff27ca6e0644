"""Products on packed spikes (``ops.product``): every backend and mode against dense autograd, and the
measured dense/sparse crossover."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.core.bits import pack_spikes, unpack_spikes
from ipu_snn.errors import UserError
from ipu_snn.ops import policy as policy_module
from ipu_snn.ops.policy import MODES, PRODUCT_MODE_CODES, SparsePolicy
from ipu_snn.ops.registry import get_kernels
from ipu_snn.ops.product import spike_product

HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["reference", "cpu"] + (["triton"] if HAS_TRITON else [])


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=6 if HAS_TRITON else 10, deadline=None, derandomize=True)
@given(rows=st.integers(1, 9), lead=st.integers(1, 3), n_in=st.integers(1, 40), n_out=st.integers(1, 12),
       density=st.floats(0.0, 0.7), mode=st.sampled_from(["dense", "sparse", "auto"]),
       listed=st.booleans(), seed=st.integers(0, 999))
def test_product_equals_dense_autograd(backend, rows, lead, n_in, n_out, density, mode, listed, seed):
    listed = listed and mode != "dense"
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(lead, rows, n_in, generator=g, dtype=torch.float64) < density).double().requires_grad_()
    near = torch.rand(lead, rows, n_in, generator=g) < 0.3
    weight = torch.randn(n_in, n_out, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(n_out, generator=g, dtype=torch.float64, requires_grad=True)
    policy = SparsePolicy(mode, n_in if mode != "dense" else 0, max_density=0.5, listed_grad=listed,
                          backend=backend)
    out, dropped = spike_product(pack_spikes(z.detach()), weight, bias, policy, z=z,
                                 near=pack_spikes(near) if listed else None)
    assert dropped.shape == (lead, rows) and int(dropped.sum()) == 0
    grad_out = torch.randn(lead, rows, n_out, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, (z, weight, bias), grad_out)
    expected_out = z @ weight + bias
    expected = list(torch.autograd.grad(expected_out, (z, weight, bias), grad_out))
    if listed:  # the input gradient only at the listed neurons: spikes, then near-threshold ones
        expected[0] = expected[0] * ((z.detach() != 0) | near).double()
    # the Triton kernels carry their sums in float32, whatever the weight dtype
    tol = {"rtol": 1e-4, "atol": 1e-4} if backend == "triton" else {}
    torch.testing.assert_close(out, expected_out, **tol)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_capacity_drops_the_highest_ids_and_counts_them(backend):
    z = torch.zeros(2, 10, dtype=torch.float64)
    z[0, [1, 4, 6, 9]] = 1
    z[1, [0]] = 1
    weight = torch.arange(10 * 3, dtype=torch.float64).reshape(10, 3)
    counting = SparsePolicy("sparse", 2, "drop_and_count", backend=backend)
    out, dropped = spike_product(pack_spikes(z), weight, None, counting)
    assert dropped.tolist() == [2, 0]
    torch.testing.assert_close(out[0], weight[1] + weight[4])
    with pytest.raises(UserError, match=r"Spike overflow in layer 9's input: 1 of 2 rows.*sparse_capacity"):
        spike_product(pack_spikes(z), weight, None, SparsePolicy("sparse", 2, backend=backend),
                      where="layer 9's input")


def test_bits_kernels_of_the_cpu_equal_the_list_compositions():
    g = torch.Generator().manual_seed(1)
    cpu, ref = get_kernels("cpu"), get_kernels("reference")
    for n_in, n_out in ((37, 5), (1100, 1000)):  # the second takes the neuron-order weight gradient
        bits = pack_spikes(torch.rand(50, n_in, generator=g) < 0.1)
        near = pack_spikes(torch.rand(50, n_in, generator=g) < 0.1)
        weight = torch.randn(n_in, n_out, generator=g)
        grad = torch.randn(50, n_out, generator=g)
        for capacity in (3, n_in):
            for bias in (None, torch.randn(n_out, generator=g)):
                for a, b in zip(cpu.bits_forward(bits, n_in, weight, bias, capacity),
                                ref.bits_forward(bits, n_in, weight, bias, capacity)):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(cpu.bits_grad_weight(bits, n_in, grad, capacity),
                                       ref.bits_grad_weight(bits, n_in, grad, capacity), rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(cpu.bits_grad_input(bits, near, n_in, weight, grad, capacity),
                                       ref.bits_grad_input(bits, near, n_in, weight, grad, capacity),
                                       rtol=1e-5, atol=1e-4)
        assert torch.equal(cpu.count_bits(bits), ref.count_bits(bits))


@pytest.mark.parametrize("backend", ["reference", "cpu"])  # Triton's bits products compact as the reference
def test_padding_bits_of_packed_input_are_not_spikes(backend):
    """Bits beyond n in a row's last byte (random bytes from outside; the packing writes 0) never list a
    neuron: every product equals that of the same bits with the padding cleared. They used to list ids
    >= n, which the CPU kernels read weights at and wrote gradient rows to, past the end (heap corruption)."""
    g = torch.Generator().manual_seed(3)
    kernels = get_kernels(backend)
    shapes = ((13, 5), (61, 7), (70, 3)) + (((1101, 1000),) if backend == "cpu" else ())  # 61: padding in a word
    for n_in, n_out in shapes:
        raw = torch.randint(0, 256, (16, (n_in + 7) // 8), generator=g, dtype=torch.uint8)
        near = torch.randint(0, 256, raw.shape, generator=g, dtype=torch.uint8)
        clean, clean_near = pack_spikes(unpack_spikes(raw, n_in)), pack_spikes(unpack_spikes(near, n_in))
        weight = torch.randn(n_in, n_out, generator=g, dtype=torch.float64)
        grad = torch.randn(16, n_out, generator=g, dtype=torch.float64)
        ids, counts, near_counts, dropped, _ = kernels.compact_bits(raw, near, n_in, n_in)
        assert int(ids.max()) < n_in
        for a, b in zip((ids, counts, near_counts, dropped), kernels.compact_bits(clean, clean_near, n_in, n_in)):
            assert torch.equal(a, b)
        for capacity in (4, n_in):
            for a, b in zip(kernels.bits_forward(raw, n_in, weight, None, capacity),
                            kernels.bits_forward(clean, n_in, weight, None, capacity)):
                assert torch.equal(a, b)
            assert torch.equal(kernels.bits_grad_weight(raw, n_in, grad, capacity),
                               kernels.bits_grad_weight(clean, n_in, grad, capacity))
            assert torch.equal(kernels.bits_grad_input(raw, near, n_in, weight, grad, capacity),
                               kernels.bits_grad_input(clean, clean_near, n_in, weight, grad, capacity))
        policy = SparsePolicy("sparse", n_in, listed_grad=True, backend=backend)
        z = unpack_spikes(clean, n_in, torch.float64).requires_grad_()
        for bits, near_bits in ((raw, near), (clean, clean_near)):
            w = weight.clone().requires_grad_()
            out, _ = spike_product(bits, w, None, policy, z=z, near=near_bits)
            got = (out, *torch.autograd.grad(out, (z, w), grad))
            if bits is raw:
                first = got
        for a, b in zip(first, got):
            assert torch.equal(a, b)


def test_crossovers_are_calibrated_once_and_building_measures_nothing(tmp_path, monkeypatch):
    from ipu_snn.calibration import crossovers
    from ipu_snn.config import validate_config
    from ipu_snn.network import build_network

    monkeypatch.setenv("IPU_SNN_CACHE", str(tmp_path))
    cfg = validate_config({"model": {"layers": [{"type": "rlif", "size": 32}], "sparse": "auto"},
                           "data": {"steps": 10}})
    measured, cached = crossovers(cfg, 64, 4)
    assert not cached and set(measured) == {"64x32|window", "32x32|step", "32x4|window"}
    assert all(0.0 <= v <= 1.0 for v in measured.values())
    table = json.loads((tmp_path / "calibration.json").read_text())
    assert sorted(table.values()) == sorted(measured.values())

    # a later process reads them back rather than measuring again: the same choices on resume; and
    # building a network never measures (its crossovers are an input)
    def no_measuring(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(policy_module, "_measure", no_measuring)
    assert crossovers(cfg, 64, 4) == (measured, True)
    net = build_network(cfg.model, 64, 4, dt=1e-3, crossovers=measured)
    assert net.layers[0].policies.input.max_density == measured["64x32|window"]
    # a product given no measured crossover gets its device's documented default, still measuring nothing
    net = build_network(cfg.model, 64, 4, dt=1e-3, crossovers={"64x32|window": 0.5})
    assert net.layers[0].policies.input.max_density == 0.5
    assert net.layers[0].policies.recurrent.max_density == policy_module.DEFAULT_CROSSOVERS["cpu"]


def test_sparse_auto_is_the_default_and_each_device_decides_it_explicitly():
    """A config that says nothing builds ``auto`` products at the default crossover of its device's tensors
    (cpu: the C++ kernels'; cuda: 0, dense, no GPU crossover measured); on ipu and ipu-model the network op
    runs the products, so auto leaves the host copy's dense (and its listed backward off)."""
    from ipu_snn.config import validate_config
    from ipu_snn.network import build_network, listed_backward, products_mode

    cfg = validate_config({"model": {"layers": [{"type": "rlif", "size": 8,
                                                 "surrogate": {"name": "triangle", "scale": 3}}]}})
    assert cfg.model.sparse == "auto"
    net = build_network(cfg.model, 16, 4, dt=1e-3)
    products = [net.layers[0].policies.input, net.layers[0].policies.recurrent, net.readout.policy]
    assert {(p.mode, p.max_density) for p in products} == {("auto", policy_module.DEFAULT_CROSSOVERS["cpu"])}
    assert policy_module.default_crossover("cuda") == 0.0 and policy_module.default_crossover("mps") == 0.0
    for device in ("ipu", "ipu-model"):
        assert products_mode(cfg.model, device) is False and products_mode(cfg.model, "cpu") == "auto"
        assert not any(g.listed for g in listed_backward(cfg.model, True, device))
        assert listed_backward(cfg.model, True, "cpu")[0].listed
        assert products_mode(cfg.model.model_copy(update={"sparse": True}), device) is True


def test_auto_chooses_by_the_spikes_it_has():
    policy = SparsePolicy("auto", 2, max_density=0.1)
    assert policy.list_length(torch.tensor([1, 0, 2]), 20) == 20  # 3 of 60: every spike listed
    assert policy.list_length(torch.tensor([5, 5, 5]), 20) is None  # a quarter: dense
    # preallocated lists (the recurrent loop): sparse only where every row fits them
    assert policy.list_length(torch.tensor([1, 0, 2]), 20, fixed_lists=True) == 2
    assert policy.list_length(torch.tensor([0, 0, 3]), 20, fixed_lists=True) is None
    assert policy.list_length(torch.tensor([], dtype=torch.int32), 20) is None
    assert SparsePolicy("sparse", 4).list_length(None, 20) == 4
    assert SparsePolicy().list_length(None, 20) is None
    with pytest.raises(ValueError, match="capacity >= 1"):
        SparsePolicy("sparse", 0)


def test_the_cpu_window_loop_takes_each_product_mode_by_its_name():
    """PRODUCT_MODE_CODES pairs each mode's name with the C++ loop's enum value of the same name."""
    source = (Path(__file__).resolve().parents[2] / "custom_ops" / "cpu" / "neuron_glue.h").read_text()
    enum = re.search(r"enum class ProductMode[^{]*\{([^}]*)\}", source).group(1)
    in_cpp = {name.lower(): int(code) for name, code in re.findall(r"k(\w+)\s*=\s*(\d+)", enum)}
    assert int(re.search(r"constexpr int32_t kProductModes = (\d+);", source).group(1)) == len(in_cpp)
    assert in_cpp == PRODUCT_MODE_CODES
    assert sorted(PRODUCT_MODE_CODES) == sorted(MODES)


def test_a_default_run_and_the_api_take_the_crossovers_measured_here(small_run, quiet):
    """Without a word about model.sparse, ipu-snn train's plan and ipu_snn.build run every product auto at the
    crossover the calibration step measured on this machine (not the unmeasured default)."""
    import ipu_snn
    from ipu_snn.config import validate_config
    from ipu_snn.data import input_shape
    from ipu_snn.loop import plan_time_loop
    from ipu_snn.network import auto_products
    from ipu_snn.ops.policy import crossover_key

    cfg = validate_config({**small_run, "bptt": {"window": 20}})  # a set window: no window costs to time
    n_inputs, n_classes = input_shape(cfg.data)
    run_plan = plan_time_loop(cfg, quiet(), cfg.data.batch_size)
    keys = {crossover_key(*p) for p in auto_products(cfg.model, n_inputs, n_classes, cfg.data.binary)}
    assert cfg.model.sparse == "auto" and keys and set(run_plan.crossovers) == keys
    net = ipu_snn.build(cfg)
    layer = net.layers[0]
    assert layer.policies.input.max_density == run_plan.crossovers[crossover_key(n_inputs, layer.n_out)]
    assert layer.policies.recurrent.max_density == run_plan.crossovers[crossover_key(layer.n_out, layer.n_out, True)]
