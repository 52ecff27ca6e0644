"""The IPU spike ops without the SDK: loading the PopART library, and the ``poptorch.custom_op`` calls
(names, inputs, attributes, output shapes) against the reference kernels through a stand-in PopTorch."""

import ctypes
import sys

import _ctypes

import pytest
import torch

import poptorch_standin
from ipu_snn.errors import DeviceError
from ipu_snn.ipu import custom_ops


@pytest.fixture
def fresh_library(monkeypatch):
    custom_ops._load.cache_clear()
    yield monkeypatch
    custom_ops._load.cache_clear()


@pytest.fixture
def poptorch(fresh_library):
    """The stand-in PopTorch, and a real shared library (Python's _ctypes) where the op library would be."""
    module = poptorch_standin.make_poptorch()
    fresh_library.setitem(sys.modules, "poptorch", module)
    fresh_library.setenv(custom_ops.LIBRARY_ENV, _ctypes.__file__)
    return module


def test_missing_library_says_how_to_build_it(fresh_library, tmp_path):
    fresh_library.setenv(custom_ops.LIBRARY_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(DeviceError) as err:
        custom_ops.load_op_library()
    message = str(err.value)
    assert "nowhere.so" in message and "make -C custom_ops ipu" in message and "Poplar SDK" in message


def test_default_library_is_the_make_target(fresh_library):
    fresh_library.delenv(custom_ops.LIBRARY_ENV, raising=False)
    assert custom_ops.library_path().parts[-3:] == ("custom_ops", "build", "libspike_matmul_op.so")


def test_unloadable_library_is_a_device_error(fresh_library, tmp_path):
    fake = tmp_path / "libspike_matmul_op.so"
    fake.write_text("not an ELF file")
    fresh_library.setenv(custom_ops.LIBRARY_ENV, str(fake))
    with pytest.raises(DeviceError, match="cannot load the IPU spike-op library"):
        custom_ops.load_op_library()


def test_library_loads_once(poptorch):
    first = custom_ops.load_op_library()
    assert isinstance(first, ctypes.CDLL) and custom_ops.load_op_library() is first


def _spikes(generator, batch, n, density=0.3):
    z = (torch.rand(batch, n, generator=generator) < density).float()
    near = torch.rand(batch, n, generator=generator) < 0.2
    return z, near


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ipu_ops_match_the_reference(poptorch, seed):
    g = torch.Generator().manual_seed(seed)
    batch, n_in, n_out, capacity = 5, 19, 7, 6
    tiles = custom_ops.TileRange(3, 40)
    z, near = _spikes(g, batch, n_in)
    weight = torch.randn(n_in, n_out, generator=g)
    grad_out = torch.randn(batch, n_out, generator=g)

    # the stand-in runs the reference kernels; what is checked here is the calls' plumbing (which input
    # goes where, what comes back), so the expectations are written from the dense spikes alone
    for flags in (None, near):
        ids, counts, near_counts, dropped, near_dropped = custom_ops.compact(poptorch, z, flags, capacity, tiles)
        for b in range(batch):
            fired = torch.nonzero(z[b]).flatten()
            close = torch.nonzero(flags[b] & (z[b] == 0)).flatten() if flags is not None else fired[:0]
            listed = torch.cat([fired, close])[:capacity]
            assert counts[b] == min(len(fired), capacity) and dropped[b] == len(fired) - counts[b]
            assert near_counts[b] == len(listed) - counts[b] and near_dropped[b] == len(close) - near_counts[b]
            assert ids[b, :len(listed)].tolist() == listed.tolist()
    kept = torch.zeros(batch, n_in)
    listed_mask = torch.zeros(batch, n_in, dtype=torch.bool)
    for b in range(batch):
        kept[b, ids[b, :counts[b]].long()] = 1.0
        listed_mask[b, ids[b, :counts[b] + near_counts[b]].long()] = True
    assert torch.allclose(custom_ops.spike_matmul(poptorch, ids, counts, weight, tiles=tiles), kept @ weight,
                          atol=1e-5)
    listed = counts + near_counts
    values = custom_ops.spike_matmul_grad_input(poptorch, ids, listed, weight, grad_out, tiles=tiles)
    dense = grad_out @ weight.t()
    for b in range(batch):
        assert torch.allclose(values[b, :listed[b]], dense[b, ids[b, :listed[b]].long()], atol=1e-5)

    calls = {c["name"]: c for c in poptorch_standin.custom_op_calls}
    assert set(calls) == {"SpikeSelect", "SpikeMatmul", "SpikeMatmulGradInput"}
    assert all(c["attributes"]["tile_begin"] == 3 and c["attributes"]["tile_end"] == 40 for c in calls.values())
    assert calls["SpikeSelect"]["attributes"]["capacity"] == capacity
    assert calls["SpikeMatmulGradInput"]["inputs"] == 4


def test_spike_select_thresholds(poptorch):
    membrane = torch.tensor([[0.2, 1.5, 0.9, 1.1, 0.7]])
    ids, counts = custom_ops.spike_select(poptorch, membrane, capacity=3, threshold=1.0, near_threshold=0.8)
    # spikes 1 and 3 first, then the near-threshold 2; 0 and 4 are below both thresholds
    assert ids.tolist() == [[1, 3, 2]] and counts.tolist() == [[2, 1, 0, 0]]
    ids, counts = custom_ops.spike_select(poptorch, membrane, capacity=1, threshold=1.0)
    assert ids.tolist() == [[1]] and counts.tolist() == [[1, 0, 1, 0]]  # one spike over capacity, no near list
    assert poptorch_standin.custom_op_calls[-1]["attributes"]["near_threshold"] == 1.0


@pytest.mark.parametrize("dense_grad", [True, False])
def test_spike_linear_call_and_its_gradients(poptorch, dense_grad):
    g = torch.Generator().manual_seed(4)
    batch, n_in, n_out, capacity = 4, 11, 6, 3
    z, _ = _spikes(g, batch, n_in)
    z = z.requires_grad_()
    weight = torch.randn(n_in, n_out, generator=g, requires_grad=True)
    ids, counts, _, _, _ = custom_ops.compact(poptorch, z.detach(), None, capacity, tiles=custom_ops.TileRange(2, 9))
    out = custom_ops.spike_linear(poptorch, z, ids, counts, weight, dense_grad=dense_grad,
                                  tiles=custom_ops.TileRange(2, 9))
    call = poptorch_standin.custom_op_calls[-1]
    assert call["name"] == "SpikeLinear" and call["inputs"] == 4
    assert call["attributes"] == {"dense_grad": int(dense_grad), "tile_begin": 2, "tile_end": 9}

    # what the stand-in's SpikeLinear (PopART's grad ops in its place) gives, against dense autograd
    grad_out = torch.randn(batch, n_out, generator=g)
    grad_z, grad_w = torch.autograd.grad(out, (z, weight), grad_out)
    listed = torch.zeros(batch, n_in)
    for b in range(batch):
        listed[b, ids[b, :counts[b]].long()] = 1.0
    assert torch.allclose(out, listed @ weight, atol=1e-6)
    assert torch.allclose(grad_w, listed.T @ grad_out, atol=1e-5)
    full = grad_out @ weight.detach().T
    assert torch.allclose(grad_z, full if dense_grad else full * listed, atol=1e-5)
    assert (listed != (z.detach() != 0).float()).any(), "the case must overflow the list somewhere"
