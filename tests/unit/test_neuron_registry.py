"""The neuron-model registry and the surrogate table against every language's table, and every model on
every kernel backend against autograd through the model's own step, in float64.

A model or surrogate added to the Python tables but missing from a kernel (a C++ enum, the Triton
codes, the Poplar network op's codes, the parameter struct's reader) fails here.
"""

from __future__ import annotations

import importlib.util
import re
import typing
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ipu_snn.config import LAYER_CONFIGS, LAYER_TYPES, ModelConfig, SurrogateConfig
from ipu_snn.network import build_network, pack_inputs
from ipu_snn.neuron import kernels as kernel_table
from ipu_snn.neuron.models import KERNEL_CODES, MODELS
from ipu_snn.neuron.params import neuron_params
from ipu_snn.neuron.spec import RESET_CODES, NeuronSpec
from ipu_snn.neuron.surrogates import SURROGATES

CUSTOM_OPS = Path(__file__).resolve().parents[2] / "custom_ops"
HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["reference", "cpu", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="no triton"))]


def camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def cpp_enum(path: Path, name: str) -> dict[str, int]:
    body = re.search(rf"enum class {name}[^{{]*{{(.*?)}};", path.read_text(), re.S).group(1)
    return {k: int(v) for k, v in re.findall(r"k(\w+)\s*=\s*(\d+)", body)}


def cpp_constant(path: Path, name: str) -> int:
    return int(re.search(rf"constexpr int32_t {name} = (\d+);", path.read_text()).group(1))


CORE = CUSTOM_OPS / "include" / "neuron_core.h"
GLUE = CUSTOM_OPS / "cpu" / "neuron_glue.h"


def test_the_kernel_codes_are_the_registrys_in_cpp_and_triton():
    assert set(LAYER_TYPES) == set(MODELS) == set(LAYER_CONFIGS)
    # every model's kernel has one code, distinct from the others' and dense from 0
    assert sorted(KERNEL_CODES.values()) == list(range(len(KERNEL_CODES)))
    assert cpp_enum(CORE, "NeuronKind") == {camel(k): code for k, code in KERNEL_CODES.items()}
    assert cpp_constant(CORE, "kNeuronKinds") == len(KERNEL_CODES)
    if HAS_TRITON:
        from ipu_snn.neuron import triton_kernels

        assert triton_kernels.KERNELS == KERNEL_CODES


def test_the_surrogate_codes_are_the_tables_in_every_language():
    codes = {name: s.code for name, s in SURROGATES.items()}
    assert sorted(codes.values()) == list(range(len(codes)))
    assert cpp_enum(CORE, "SurrogateKind") == {camel(name): code for name, code in codes.items()}
    assert cpp_constant(CORE, "kSurrogateKinds") == len(codes)  # the C++ reader's bound
    assert cpp_enum(CORE, "Reset") == {name.title(): code for name, code in RESET_CODES.items()}
    assert set(typing.get_args(SurrogateConfig.model_fields["name"].annotation)) == set(codes)
    if HAS_TRITON:
        from ipu_snn.neuron import triton_kernels

        assert triton_kernels.SURROGATE_CODES == codes


def test_the_poplar_network_op_takes_the_registrys_codes():
    # The network op has no string table of its own: its attributes carry the surrogate and reset codes of
    # the tables above (checked against neuron_core.h's enums, which its vertices read), as ints.
    op = (CUSTOM_OPS / "poplar" / "network_op.cpp").read_text()
    for attribute in ("surrogates", "resets"):
        assert f'perLayer<Ints>(a, "{attribute}", n)' in op, attribute
    calls = (CUSTOM_OPS.parent / "ipu_snn" / "ipu" / "custom_ops.py").read_text()
    assert "l.spec.reset_code, l.spec.surrogate_code" in calls


def test_the_cpu_ops_read_the_parameter_struct_by_name():
    ops = kernel_table.load("cpu")
    spec = NeuronSpec("lif", surrogate="atan", scale=2.0)
    x = torch.zeros(2, 5)
    raw = torch.ops.ipu_snn_cpu.neuron_fwd
    params = neuron_params(spec)
    # the same struct in another key order gives the same result
    shuffled = dict(reversed(list(params.items())))
    ok = raw(x + 1.5, x, None, torch.ones(5), None, params, torch.float32)
    for got, expected in zip(raw(x + 1.5, x, None, torch.ones(5), None, shuffled, torch.float32), ok):
        assert torch.equal(got, expected)
    missing = {k: v for k, v in params.items() if k != "scale"}
    with pytest.raises(RuntimeError, match=r"neuron_fwd: the parameters have no field 'scale'"):
        raw(x, x, None, torch.ones(5), None, missing, torch.float32)
    with pytest.raises(RuntimeError, match=r"neuron_fwd: the parameters have fields this op does not take"):
        raw(x, x, None, torch.ones(5), None, {**params, "treshold": 1.0}, torch.float32)
    with pytest.raises(RuntimeError, match=r"parameter 'surrogate' must be an integer code in \[0, 4\)"):
        raw(x, x, None, torch.ones(5), None, {**params, "surrogate": float(len(SURROGATES))}, torch.float32)
    with pytest.raises(RuntimeError, match=r"parameter 'kernel' must be an integer code"):
        raw(x, x, None, torch.ones(5), None, {**params, "kernel": float(len(KERNEL_CODES))}, torch.float32)
    assert ops.name == "cpu"


def _net(layer: dict, mode: str | None, kernels: str | None, x, y):
    cfg = ModelConfig.model_validate({"layers": [{**layer, "size": 11, "threshold": 0.6, "learn_decay": True}],
                                      "readout": {"learn_decay": True}, "fused": mode != "autograd"})
    torch.manual_seed(0)
    net = build_network(cfg, 7, 4, dt=1e-3).double()
    if kernels:
        for lay in net.layers:
            lay.settings = replace(lay.settings, kernels=kernels)
        net.readout.kernels = kernels
    out = net(x)
    F.cross_entropy(out.logits, y).backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_on_every_backend_matches_autograd_through_its_step(name, backend):
    # the registry is enumerated: a new model runs here on every kernel backend without touching this file
    model = MODELS[name]
    g = torch.Generator().manual_seed(11)
    frames = (torch.rand(3, 9, 7, generator=g) < 0.4).double()
    y = torch.randint(0, 4, (3,), generator=g)
    for recurrent in ((False, True) if model.recurrent is None else (model.recurrent,)):
        layer = {"type": name, **{p.name: p.default / 3 for p in model.params},
                 **({"recurrent": recurrent} if model.recurrent is None else {})}
        logits_ref, grads_ref = _net(layer, "autograd", None, frames, y)  # autograd through model.step
        logits, grads = _net(layer, "fused", backend, pack_inputs(frames), y)
        torch.testing.assert_close(logits, logits_ref, rtol=1e-10, atol=1e-10)
        assert set(grads) == set(grads_ref) and ("layers.0.rec.weight" in grads) == recurrent
        for key, expected in grads_ref.items():
            torch.testing.assert_close(grads[key], expected, rtol=1e-9, atol=1e-11, msg=f"{key} {recurrent=}")
