"""The config's mapping to PopTorch / PopDist options, checked against stand-ins that record calls."""

from types import SimpleNamespace

from ipu_snn.config import validate_config
from ipu_snn.ipu.options import poptorch_options, samples_per_step


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
    poptorch = SimpleNamespace(Options=lambda: Recorder(log), ReductionType=SimpleNamespace(Mean="Mean"))
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


def test_poprun_takes_replication_from_the_launcher():
    poptorch, popdist, log = fake_sdk(under_poprun=True)
    poptorch_options(validate_config({**CFG, "device": "ipu"}), poptorch, popdist)
    names = [name for name, _ in log]
    assert "replicationFactor" not in names and "popdist:replicationFactor" not in names
    assert "popdist:deviceIterations" in names and "popdist:useIpuModel" not in names


def test_samples_per_step():
    assert samples_per_step(validate_config(CFG), replicas=16) == 16 * 4 * 16 * 8
