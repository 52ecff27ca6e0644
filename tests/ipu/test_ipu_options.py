"""The config's mapping to PopTorch / PopDist options, checked against stand-ins that record calls."""

from types import SimpleNamespace

import pytest

from ipu_snn.config import validate_config
from ipu_snn.errors import ConfigError
from ipu_snn.ipu.options import micro_batch_size, poptorch_options, samples_per_step


class Recorder:
    """Accepts any chain of attribute calls and records them (opts.Training.gradientAccumulation(4))."""

    def __init__(self, log, prefix=""):
        self._log, self._prefix = log, prefix

    def __getattr__(self, name):
        return Recorder(self._log, f"{self._prefix}.{name}" if self._prefix and not self._prefix.endswith(":")
                        else f"{self._prefix}{name}")

    def __call__(self, *args):
        self._log.append((self._prefix, args))
        return self


def fake_sdk(under_poprun: bool):
    log = []
    poptorch = SimpleNamespace(Options=lambda: Recorder(log), ReductionType=SimpleNamespace(Mean="Mean"),
                               OutputMode=SimpleNamespace(Sum="Sum", All="All"))
    popdist = SimpleNamespace(isPopdistEnvSet=lambda: under_poprun,
                              poptorch=SimpleNamespace(Options=lambda: Recorder(log, "popdist:")))
    return poptorch, popdist, log


CFG = {"model": {"layers": [{"type": "rlif", "size": 8}]}, "device": "ipu-model",
       "data": {"batch_size": 16}, "training": {"grad_accumulation": 4, "seed": 7},
       "ipu": {"replication": 2, "device_iterations": 8, "available_memory_proportion": 0.3}}


def test_standalone_options():
    poptorch, popdist, log = fake_sdk(under_poprun=False)
    poptorch_options(validate_config(CFG), poptorch, popdist)
    calls = dict(log)
    assert calls["replicationFactor"] == (2,)
    assert calls["deviceIterations"] == (8,)
    assert calls["Training.gradientAccumulation"] == (4,)
    assert calls["Training.accumulationAndReplicationReductionType"] == ("Mean",)
    assert calls["useIpuModel"] == (True,)
    assert calls["setAvailableMemoryProportion"] == ({"IPU0": 0.3},)
    assert calls["randomSeed"] == (7,)
    assert calls["outputMode"] == ("Sum",)  # epoch metrics sum every micro-batch and device iteration


def test_inference_options_leave_out_training_settings():
    poptorch, popdist, log = fake_sdk(under_poprun=False)
    poptorch_options(validate_config(CFG), poptorch, popdist, training=False)
    names = [name for name, _ in log]
    assert not any(name.startswith("Training.") for name in names)  # PopTorch refuses accumulation in inference
    assert dict(log)["outputMode"] == ("All",) and dict(log)["deviceIterations"] == (8,)


def test_poprun_takes_replication_from_the_launcher():
    poptorch, popdist, log = fake_sdk(under_poprun=True)
    poptorch_options(validate_config({**CFG, "device": "ipu"}), poptorch, popdist)
    names = [name for name, _ in log]
    assert "replicationFactor" not in names and "popdist:replicationFactor" not in names
    assert "popdist:deviceIterations" in names and "popdist:useIpuModel" not in names


def test_samples_per_step():
    # batch_scope global: the 16 samples of an optimizer step are split over 2 replicas x 4 micro-batches
    cfg = validate_config(CFG)
    assert micro_batch_size(cfg, 2) == 2
    assert samples_per_step(cfg, replicas=2) == 16 * 8
    per_device = validate_config({**CFG, "data": {"batch_size": 16, "batch_scope": "per_device"}})
    assert micro_batch_size(per_device, 2) == 4 and samples_per_step(per_device, replicas=2) == 16 * 2 * 8


def test_batch_that_does_not_split_is_refused():
    with pytest.raises(ConfigError, match="data.batch_size: 16 cannot be split evenly into 16 replicas x 4"):
        micro_batch_size(validate_config(CFG), 16)
