"""``device: ipu-emulator``: the network of configs/ipu_emulator_tiny.yaml with its spiking layers run as
the IPU network op's graph on the host interpreter gives the CPU backend's logits and gradients, under
every schedule; and `ipu-snn train` trains through it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ipu_snn.bptt.schedules import double, revolve, store_all, uniform
from ipu_snn.config import load_config
from ipu_snn.executor import TimeLoop
from ipu_snn.ipu.interpreted import InterpretedNetwork, adopt
from ipu_snn.network import build_network
from ipu_snn.core.bits import pack_spikes

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "ipu_emulator_tiny.yaml"
# The codelets compute in float32, as does the CPU backend here: gradients agree to this fraction of
# their largest magnitude (float32 sums in another order).
RTOL = 1e-4
SCHEDULES = {"store_all": store_all, "uniform": lambda w: uniform(w, 2), "revolve": lambda w: revolve(w, 2),
             "double": lambda w: double(w, 2, 1)}


# a bounded surrogate: the network op forms the spikes' gradients only where d != 0 (the listed backward, on
# the tiles that hold several neurons: 8 tiles here), and its gradients still equal the CPU backend's
LISTED = ["model.sparse_grad=auto", "model.layers.0.surrogate.name=triangle", "model.layers.1.surrogate.name=boxcar",
          "model.layers.0.surrogate.scale=3", "model.layers.1.surrogate.scale=3"]


# every spiking layer's decay and per-neuron threshold learned: their gradients out of the network op
LEARNED = [f"model.layers.{i}.{field}=true" for i in (0, 1) for field in ("learn_decay", "learn_threshold")]
# a recurrent ALIF layer, then a CUBA layer, their thresholds learned
TWO_STATES = ["model.layers.0.type=alif", "model.layers.0.recurrent=true", "model.layers.1.type=cuba",
              "model.layers.0.learn_threshold=true", "model.layers.1.learn_threshold=true"]


@pytest.mark.parametrize("name, extra", [(n, []) for n in SCHEDULES] + [("store_all", LISTED), ("double", LISTED)]
                         + [(n, LEARNED) for n in ("store_all", "uniform", "double")]
                         + [(n, TWO_STATES) for n in ("store_all", "uniform", "double")])
def test_gradients_equal_the_cpu_backends(name, extra):
    import ipu_snn.ipu  # noqa: F401  (registers the readout's spike backend)

    cfg = load_config(CONFIG, ["model.layers.0.size=7", "model.layers.1.size=5", *extra]).model
    n_in, classes, steps, batch = 11, 3, 10, 4
    loop = TimeLoop(3, SCHEDULES[name])
    torch.manual_seed(0)
    cpu = build_network(cfg, n_in, classes, 1e-3, loop=loop, device="cpu")
    ipu = adopt(build_network(cfg, n_in, classes, 1e-3, loop=loop, device="ipu-emulator"))
    assert isinstance(ipu, InterpretedNetwork)
    if extra == LISTED:
        ipu.tiles = 8
    ipu.load_state_dict(cpu.state_dict())
    g = torch.Generator().manual_seed(1)
    x = pack_spikes((torch.rand(batch, steps, n_in, generator=g) < 0.4).float())
    y = torch.randint(0, classes, (batch,), generator=g)
    outs = []
    for net in (cpu, ipu):
        out = net(x, with_counts=True)
        F.cross_entropy(out.logits, y).backward()
        outs.append(out)
    torch.testing.assert_close(outs[1].logits, outs[0].logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[1].rates, outs[0].rates)
    for a, b in zip(outs[1].counts, outs[0].counts):
        torch.testing.assert_close(a, b)
    assert outs[0].rates.sum() > 0
    for (pname, p), q in zip(cpu.named_parameters(), ipu.parameters()):
        scale = float(p.grad.abs().max())
        assert float((q.grad - p.grad).abs().max()) <= RTOL * max(scale, 1e-6), pname


def test_refuses_what_the_op_does_not_compute():
    from ipu_snn.errors import ConfigError

    cfg = load_config(CONFIG, ["model.layers.1.type=alif", "model.layers.1.learn_decay=true"]).model
    with pytest.raises(ConfigError, match="model.layers.1.learn_decay: .*ALIF"):
        adopt(build_network(cfg, 11, 3, 1e-3, device="ipu-emulator"))


@pytest.mark.slow
def test_train_cli_trains_through_the_interpreter(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "ipu_snn.cli", "train", str(CONFIG), "bptt.schedule=double", "training.epochs=1",
         "data.synthetic.n_train=32", "data.synthetic.n_test=8", "data.steps=12", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1/1" in result.stdout


@pytest.mark.parametrize("extra", [[], LISTED, LEARNED, TWO_STATES])
def test_the_plan_counts_the_layers_the_op_runs(extra):
    # graph_plan builds its counting graph from the config; the op (and ipu-emulator) from the built network:
    # both give the same layers (listed backward, learned decays and thresholds), so the plan counts their tapes
    from ipu_snn.ipu.custom_ops import network_spec
    from ipu_snn.ipu.graph_plan import layer_specs

    cfg = load_config(CONFIG, ["model.layers.0.size=7", "model.layers.1.size=5", *extra]).model
    net = adopt(build_network(cfg, 11, 3, 1e-3, device="ipu-emulator"))
    assert network_spec(net, 10).layers == tuple(layer_specs(cfg))
