"""The device table (ipu_snn.devices.DEVICES): one row per config device, naming its backends."""

import typing

import pytest
import torch

from ipu_snn.config import Config
from ipu_snn.devices import DEVICES, POPTORCH_DEVICES, TENSOR_DEFAULTS, device, device_spec
from ipu_snn.errors import DeviceError
from ipu_snn.neuron import kernels as neuron_kernels
from ipu_snn.ops import registry


def test_every_config_device_has_a_row():
    assert set(typing.get_args(Config.model_fields["device"].annotation)) == set(DEVICES)
    assert POPTORCH_DEVICES == ("ipu", "ipu-model")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        device("tpu")


def test_the_rows_name_backends_and_specs_that_exist():
    import ipu_snn.ipu  # noqa: F401  (registers the emulator's spike backend, as the row says)

    for name, row in DEVICES.items():
        assert row.tensors in TENSOR_DEFAULTS
        assert row.spikes is None or row.spikes in registry.backend_names(), name
        assert row.neurons is None or row.neurons in neuron_kernels.names(), name
        assert device_spec(name).name in ("cpu", "h100", "h200", "a100", "ipu-mk2")
    for defaults in TENSOR_DEFAULTS.values():
        assert defaults["spikes"] in registry.backend_names() and defaults["neurons"] in neuron_kernels.names()


def test_both_backend_tables_take_their_defaults_from_the_device_table():
    cpu = torch.device("cpu")
    assert registry.resolve_backend(None, cpu) == TENSOR_DEFAULTS["cpu"]["spikes"]
    assert neuron_kernels.BACKENDS.resolve(None, cpu) == TENSOR_DEFAULTS["cpu"]["neurons"]
    for table in (registry.BACKENDS, neuron_kernels.BACKENDS):
        with pytest.raises(DeviceError, match="backend runs on device type 'meta' by default"):
            table.resolve(None, torch.device("meta"))
