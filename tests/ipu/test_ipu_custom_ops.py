"""The IPU network op without the SDK: loading the PopART library, and the ``poptorch.custom_op`` call
(name, inputs, attributes, output shapes) that the model makes."""

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
    assert custom_ops.library_path().parts[-3:] == ("custom_ops", "build", "libipu_snn_ops.so")
    makefile = (custom_ops.DEFAULT_LIBRARY.parents[1] / "Makefile").read_text()
    assert "OP_LIB := $(BUILD)/libipu_snn_ops.so" in makefile


def test_unloadable_library_is_a_device_error(fresh_library, tmp_path):
    fake = tmp_path / "libipu_snn_ops.so"
    fake.write_text("not an ELF file")
    fresh_library.setenv(custom_ops.LIBRARY_ENV, str(fake))
    with pytest.raises(DeviceError, match="cannot load the IPU op library"):
        custom_ops.load_op_library()


def test_library_loads_once(poptorch):
    first = custom_ops.load_op_library()
    assert isinstance(first, ctypes.CDLL) and custom_ops.load_op_library() is first


def test_network_op_spec_carries_the_schedule_and_its_slots():
    from ipu_snn.bptt.schedules import double
    from ipu_snn.config import ModelConfig
    from ipu_snn.executor import TimeLoop
    from ipu_snn.network import build_network

    cfg = ModelConfig.model_validate({"layers": [{"type": "rlif", "size": 6}, {"type": "lif", "size": 4}]})
    net = build_network(cfg, 10, 3, 1e-3, loop=TimeLoop(2, lambda w: double(w, 2, 1)))
    spec = custom_ops.network_spec(net, 12)  # 6 windows of 2 steps
    attrs = spec.attributes()
    assert attrs["sizes"] == [6, 4] and attrs["recurrent"] == [1, 0] and attrs["readout"] == 3
    assert attrs["offchip_slots"] >= 1 and attrs["local_slots"] >= 1  # double with one local slot
    kinds = attrs["actions"][0::6]
    assert kinds.count(1) == 12  # every step reversed once
    assert 2 in kinds and 3 in kinds  # stores and loads of checkpoints
    carried = spec.carried(5, 12)
    # rlif: v, last bits, tape d, tape bits, tape previous bits, checkpoints v and bits; lif: v, tape d, tape bits,
    # checkpoints v; readout: v, checkpoints v; the trace with its zero row
    assert len(carried) == 7 + 4 + 2 + 1
    # flat and part-major, as network::carriedShapes makes them (read from the C++)
    assert carried[1] == ((5 * 1,), torch.uint8) and carried[2] == ((spec.tape_slots * 5 * 6,), torch.float32)
    assert carried[-1] == ((13 * 5 * 3,), torch.float32)


def test_network_call_is_one_custom_op_with_its_example_outputs(poptorch):
    from ipu_snn.bptt.schedules import uniform
    from ipu_snn.config import ModelConfig
    from ipu_snn.core.bits import pack_spikes
    from ipu_snn.executor import TimeLoop
    from ipu_snn.network import build_network

    cfg = ModelConfig.model_validate({"layers": [{"type": "rlif", "size": 6}]})
    net = build_network(cfg, 10, 3, 1e-3, loop=TimeLoop(2, lambda w: uniform(w, 2)))
    bits = pack_spikes((torch.rand(3, 8, 10, generator=torch.Generator().manual_seed(0)) < 0.4).float())
    spec = custom_ops.network_spec(net, 8)
    trace, counts = custom_ops.network(poptorch, bits, custom_ops.network_params(net), spec)
    assert trace.shape == (8, 3, 3) and len(counts) == 1 and counts[0].shape == (3, 6)
    # the CPU network's spikes: each neuron's count over the batch and the steps
    torch.testing.assert_close(counts[0].sum(0), net(bits, with_counts=True).counts[0][0].float())
    (call,) = poptorch_standin.custom_op_calls
    assert call["name"] == "Network" and call["shapes"][0] == (3, 8, 2) and call["inputs"] == 1 + 4 + 3
    assert call["attributes"] == spec.attributes()
