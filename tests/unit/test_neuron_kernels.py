"""The fused neuron step: every backend's kernels, for every row of the surrogate table, against autograd.

The Triton backend runs on CPU tensors through the interpreter when no GPU is
present (conftest.py sets TRITON_INTERPRET); those cases are kept small.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.neuron import kernels as kernel_table
from ipu_snn.core.bits import pack_spikes, unpack_spikes
from ipu_snn.neuron.models import MODELS
from ipu_snn.neuron.ops import neuron_step_bwd, neuron_step_fwd
from ipu_snn.neuron.reference import step as reference_step
from ipu_snn.neuron.spec import NeuronSpec
from ipu_snn.neuron.surrogates import SURROGATES
from ipu_snn.ops.cpu_ext import CUSTOM_OPS_DIR

# the device "triton" is where the Triton kernels run (tests/conftest.py's `device`)

BACKENDS = [
    pytest.param("reference", "cpu", id="reference"),
    pytest.param("reference", "cuda", id="reference-cuda", marks=pytest.mark.gpu),
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("triton", "triton", id="triton", marks=pytest.mark.triton),
]
F64 = {"rtol": 1e-12, "atol": 1e-12}


class Step:
    """Random inputs of one step, and autograd's outputs and gradients for them."""

    def __init__(self, batch, n, alif, reset, surrogate, scale, threshold, seed, dtype=torch.float64,
                 device="cpu"):
        g = torch.Generator().manual_seed(seed)

        def rand(*shape, low=-1.0, high=1.0):
            return (low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(device, dtype)

        self.alif, self.reset, self.surrogate, self.scale = alif, reset, surrogate, scale
        self.model = "alif" if alif else "lif"
        self.threshold = threshold
        self.adapt_strength = 0.7 if alif else 0.0
        self.current = rand(batch, n, low=-0.5, high=1.5)
        self.v = rand(batch, n)
        self.a = rand(batch, n, low=0.0, high=1.0) if alif else None
        self.beta = rand(n, low=0.0, high=1.0)
        self.rho = rand(n, low=0.0, high=1.0) if alif else None
        self.grads = [rand(batch, n) for _ in range(3 if alif else 2)]  # w.r.t. z, v_new, a_new

    @property
    def spec(self) -> NeuronSpec:
        return NeuronSpec(self.model, self.threshold, self.adapt_strength, self.reset, self.surrogate, self.scale)

    def autograd(self):
        current = self.current.clone().requires_grad_()
        v = self.v.clone().requires_grad_()
        a = self.a.clone().requires_grad_() if self.alif else None
        v_new, a_new, z = reference_step(self.spec, self.beta, self.rho, v, a, current)
        outputs, inputs = ((z, v_new, a_new), (current, v, a)) if self.alif else ((z, v_new), (current, v))
        grads = torch.autograd.grad(outputs, inputs, self.grads)
        return [o.detach() for o in outputs], grads

    def forward(self, backend, saved_dtype=None):
        return neuron_step_fwd(self.current, self.v, self.a, self.beta, self.rho, self.model, self.threshold,
                               self.adapt_strength, self.reset, self.surrogate, self.scale,
                               saved_dtype or self.current.dtype, backend)

    def backward(self, backend, zbits, d, grad_a=True):
        return neuron_step_bwd(self.grads[0], self.grads[1], self.grads[2] if self.alif and grad_a else None,
                               zbits, d, self.model, self.adapt_strength, self.reset, backend)


def check_against_autograd(step: Step, backend: str, tol) -> None:
    (z_ref, v_ref, *a_ref), grads_ref = step.autograd()
    v_new, a_new, z, d, zbits = step.forward(backend)
    torch.testing.assert_close(v_new, v_ref, **tol)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    torch.testing.assert_close(unpack_spikes(zbits, z.shape[1], z.dtype), z, rtol=0, atol=0)
    if step.alif:
        torch.testing.assert_close(a_new, a_ref[0], **tol)
    else:
        assert a_new.numel() == 0
    # d is sg'(x) at the step's own x = v - theta.
    v = step.beta * step.v + step.current
    theta = step.threshold + step.adapt_strength * (step.rho * step.a) if step.alif else step.threshold
    torch.testing.assert_close(d, SURROGATES[step.surrogate].grad(v - theta, step.scale), **tol)

    # the kernel's gradients are w.r.t. v before the reset and a after the decay; the leak's
    # backward (the products with beta and rho) is the caller's, as the spec says
    gv, ga = step.backward(backend, zbits, d)
    torch.testing.assert_close(gv, grads_ref[0], **tol)
    torch.testing.assert_close(step.beta * gv, grads_ref[1], **tol)
    if step.alif:
        torch.testing.assert_close(step.rho * ga, grads_ref[2], **tol)
    else:
        assert ga.numel() == 0


step_shapes = st.tuples(st.integers(1, 5), st.integers(1, 40))  # N: mostly not a multiple of 8


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_every_surrogate_on_every_backend_matches_autograd(backend, device, surrogate):
    # the table is enumerated: a new row is tested on every backend without touching this file
    examples = 6 if backend == "triton" and device == "cpu" else 12

    @settings(max_examples=examples, deadline=None, derandomize=True)
    @given(shape=step_shapes, alif=st.booleans(), reset=st.sampled_from(["subtract", "zero"]),
           scale=st.floats(0.5, 8.0), threshold=st.floats(0.2, 1.2), seed=st.integers(0, 2**16))
    def run(shape, alif, reset, scale, threshold, seed):
        step = Step(*shape, alif, reset, surrogate, scale, threshold, seed, device=device)
        check_against_autograd(step, backend, F64)

    run()


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
@pytest.mark.parametrize("alif", [False, True], ids=["lif", "alif"])
def test_float32_state_matches_autograd(backend, device, alif):
    step = Step(3, 19, alif, "subtract", "atan", 4.0, 0.8, seed=5, dtype=torch.float32, device=device)
    check_against_autograd(step, backend, {"rtol": 1e-5, "atol": 1e-6})


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_missing_grad_a_counts_as_zero(backend, device):
    step = Step(2, 11, True, "subtract", "triangle", 2.0, 0.5, seed=3, device=device)
    _, _, _, d, zbits = step.forward(backend)
    without = step.backward(backend, zbits, d, grad_a=False)
    step.grads[2] = torch.zeros_like(step.grads[2])
    with_zero = step.backward(backend, zbits, d)
    for got, expected in zip(without, with_zero):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


SAVED = [(torch.float16, 2.0**-11, 2.0**-25), (torch.bfloat16, 2.0**-8, 0.0)]


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
@pytest.mark.parametrize("saved, unit_roundoff, smallest_step", SAVED, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("state", [torch.float32, torch.float64])
def test_reduced_precision_d_is_the_rounded_float32_d(backend, device, saved, unit_roundoff,
                                                      smallest_step, state):
    step = Step(4, 27, True, "zero", "fast_sigmoid", 3.0, 0.6, seed=9, dtype=state, device=device)
    *_, d32, zbits = step.forward(backend, torch.float32)
    *_, d_low, zbits_low = step.forward(backend, saved)
    assert d_low.dtype == saved
    assert torch.equal(zbits_low, zbits)
    # Within half a unit in the last place of the reduced dtype (plus the
    # absolute step of float16's subnormals).
    error = (d_low.double() - d32.double()).abs()
    bound = unit_roundoff * d32.double().abs() * (1 + 1e-6) + smallest_step / 2
    assert bool((error <= bound).all()), f"max error {error.max().item()}"
    # The backward reads the saved d as is: the same result as handing it the
    # rounded values in float32.
    low = step.backward(backend, zbits, d_low)
    widened = step.backward(backend, zbits, d_low.float() if state == torch.float32 else d_low.double())
    for got, expected in zip(low, widened):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_cpu_threads_split_rows_and_bytes_mid_row():
    # B * ceil(N / 8) = 64 * 38 bytes and B * N = 19200 elements both exceed
    # one thread's grain, so chunks start inside rows and inside bytes' rows.
    step = Step(64, 300, True, "subtract", "boxcar", 1.5, 0.3, seed=21)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = step.forward("reference")
        got = step.forward("cpu")
        expected_grads = step.backward("reference", zbits=expected[4], d=expected[3])
        got_grads = step.backward("cpu", zbits=got[4], d=got[3])
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(got + got_grads, expected + expected_grads):
        torch.testing.assert_close(x, y, **F64)


# --------------------------------------------------------------------------- bits


def test_bit_layout_is_little_endian_within_each_row():
    z = torch.zeros(2, 10)
    z[0, 0] = z[0, 9] = 1  # byte 0 bit 0, byte 1 bit 1
    z[1, 3] = z[1, 7] = z[1, 8] = 1
    assert pack_spikes(z).tolist() == [[1, 2], [8 + 128, 1]]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(lead=st.lists(st.integers(0, 4), max_size=2), n=st.integers(0, 40), density=st.floats(0.0, 1.0))
def test_the_cpu_and_device_packings_agree(lead, n, density):
    # the CPU packs with numpy, a GPU with torch ops: one layout, checked here on the CPU
    from ipu_snn.core.bits import _pack_on_device

    z = (torch.rand(*lead, n, generator=torch.Generator().manual_seed(n)) < density).to(torch.float32) * 2.5
    packed = pack_spikes(z)
    assert packed.dtype == torch.uint8 and packed.shape == (*lead, (n + 7) // 8)
    assert torch.equal(packed, _pack_on_device(z))
    assert torch.equal(unpack_spikes(packed, n), (z != 0).float())


@settings(max_examples=30, deadline=None, derandomize=True)
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), n=st.integers(1, 50), seed=st.integers(0, 999))
def test_bits_round_trip(lead, n, seed):
    z = (torch.rand(*lead, n, generator=torch.Generator().manual_seed(seed)) < 0.4).float()
    bits = pack_spikes(z)
    assert bits.dtype == torch.uint8 and bits.shape == (*lead, (n + 7) // 8)
    assert torch.equal(unpack_spikes(bits, n, torch.float32), z)
    assert bool((bits[..., -1].int() < 2 ** (n - 8 * (bits.shape[-1] - 1))).all())  # padding bits are 0


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_kernel_bits_equal_packed_z_with_zero_padding(backend, device):
    step = Step(3, 13, False, "zero", "boxcar", 1.0, 0.1, seed=4, device=device)  # fires often
    _, _, z, _, zbits = step.forward(backend)
    assert z.sum() > 0
    assert torch.equal(zbits.cpu(), pack_spikes(z.cpu()))
    assert bool((zbits[:, -1].int() < 2 ** 5).all())


def test_unpack_rejects_a_mismatched_width():
    with pytest.raises(ValueError, match=r"uint8 \[\.\.\., 2\] for n = 9"):
        unpack_spikes(torch.zeros(2, 1, dtype=torch.uint8), 9, torch.float32)


# ------------------------------------------------------------------- errors, registry


def _fwd_args(**change):
    args = dict(current=torch.zeros(2, 5), v=torch.zeros(2, 5), a=None, beta=torch.ones(5), rho=None, model="lif",
                threshold=1.0, adapt_strength=0.0, reset="subtract", surrogate="atan", scale=2.0,
                saved_dtype=torch.float32, backend="reference")
    args.update(change)
    return args


def _bwd_args(**change):
    args = dict(grad_z=torch.zeros(2, 5), grad_v=torch.zeros(2, 5), grad_a=None,
                zbits=torch.zeros(2, 1, dtype=torch.uint8), d=torch.zeros(2, 5), model="lif",
                adapt_strength=0.0, reset="subtract", backend="reference")
    args.update(change)
    return args


@pytest.mark.parametrize("change, message", [
    ({"v": torch.zeros(2, 6)}, r"v must match current"),
    ({"current": torch.zeros(2, 5, dtype=torch.float16), "v": torch.zeros(2, 5, dtype=torch.float16)},
     r"current must be a float32 or float64 \[B, N\]"),
    ({"current": torch.zeros(10)}, r"current must be a float32 or float64 \[B, N\]"),
    ({"beta": torch.ones(4)}, r"beta must be a \[5\] per-neuron"),
    ({"a": torch.zeros(2, 5)}, r"lif needs neither a nor rho"),
    ({"model": "alif", "a": torch.zeros(2, 5)}, r"alif needs both a and rho"),
    ({"model": "alif", "a": torch.zeros(2, 5), "rho": torch.ones(5, dtype=torch.float64)},
     r"rho must be a \[5\] per-neuron"),
    ({"model": "izhikevich"}, r"model must be one of lif, rlif, alif"),
    ({"saved_dtype": torch.float64}, r"saved as float32, float16 or bfloat16"),
    ({"reset": "hard"}, r"reset must be one of subtract, zero"),
    ({"surrogate": "sigmoid"}, r"surrogate must be one of"),
    ({"scale": 0.0}, r"scale must be a positive number"),
])
def test_forward_rejects_bad_input(change, message):
    with pytest.raises(ValueError, match=message):
        neuron_step_fwd(**_fwd_args(**change))


@pytest.mark.parametrize("change, message", [
    ({"zbits": torch.zeros(2, 5, dtype=torch.uint8)}, r"zbits must be uint8 \[2, 1\]"),
    ({"zbits": torch.zeros(2, 1)}, r"zbits must be uint8"),
    ({"d": torch.zeros(2, 4)}, r"d must be \[2, 5\]"),
    ({"d": torch.zeros(2, 5, dtype=torch.int32)}, r"saved as float32"),
    ({"grad_a": torch.zeros(2, 5)}, r"grad_a was given for a lif step"),
    ({"model": "izhikevich"}, r"model must be one of lif, rlif, alif"),
    ({"reset": "hard"}, r"reset must be one of subtract, zero"),
    ({"grad_z": torch.zeros(2, 5, dtype=torch.float64)}, r"grad_z must match grad_v"),
])
def test_backward_rejects_bad_input(change, message):
    with pytest.raises(ValueError, match=message):
        neuron_step_bwd(**_bwd_args(**change))


def test_cpu_kernels_check_their_inputs_too():
    # The C++ ops are reachable without the Python checks (torch.ops.ipu_snn_cpu).
    ops = kernel_table.load("cpu")
    spec = NeuronSpec(surrogate="atan", scale=2.0)
    with pytest.raises(RuntimeError, match=r"neuron_fwd: beta must be a CPU vector of N = 5"):
        ops.forward(torch.zeros(2, 5), torch.zeros(2, 5), None, torch.ones(3), None, spec, torch.float32)
    with pytest.raises(RuntimeError, match=r"neuron_bwd: zbits must be a uint8 CPU matrix"):
        ops.backward(torch.zeros(2, 5), torch.zeros(2, 5), None, torch.zeros(2, 2, dtype=torch.uint8),
                     torch.zeros(2, 5), spec)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(Exception, match=r"unknown neuron-kernel backend 'nope'; known: cpu, reference, triton"):
        kernel_table.resolve("nope", torch.device("cpu"))


def test_raw_kernels_give_what_the_ops_give():
    step = Step(3, 12, True, "zero", "atan", 3.0, 0.5, seed=8)
    kernels = kernel_table.resolve(None, torch.device("cpu"))  # the cpu default
    assert kernels.name == "cpu"
    forward = kernels.forward(step.current, step.v, step.a, step.beta, step.rho, step.spec, torch.float32)
    for got, expected in zip(forward, step.forward("cpu", torch.float32)):
        assert torch.equal(got, expected)
    _, _, _, d, zbits = forward
    backward = kernels.backward(*step.grads, zbits, d, step.spec)
    for got, expected in zip(backward, step.backward("cpu", zbits, d)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("alif", [False, True], ids=["lif", "alif"])
def test_opcheck(backend, alif):
    step = Step(3, 10, alif, "subtract", "fast_sigmoid", 5.0, 0.5, seed=2)
    fwd_args = (step.current, step.v, step.a, step.beta, step.rho, step.model, step.threshold, step.adapt_strength,
                step.reset, step.surrogate, step.scale, torch.float16, backend)
    torch.library.opcheck(torch.ops.ipu_snn.neuron_step_fwd.default, fwd_args)
    _, _, _, d, zbits = neuron_step_fwd(*fwd_args)
    bwd_args = (step.grads[0], step.grads[1], step.grads[2] if alif else None, zbits, d, step.model,
                step.adapt_strength, step.reset, backend)
    torch.library.opcheck(torch.ops.ipu_snn.neuron_step_bwd.default, bwd_args)


# ------------------------------------------------------------------ the shared header


HEADER_DRIVER = r"""
// Compiled against neuron_core.h alone: no torch, as a Poplar vertex sees it.
#include <cstdio>
#include "neuron_core.h"
namespace core = ipu_snn::core;
int main() {
  const int64_t B = 3, N = 11, E = B * N;
  float cur[E], v[E], a[E], beta[N], rho[N], vn[E], an[E], z[E], d[E];
  for (int64_t i = 0; i < E; ++i) {
    cur[i] = 0.3f * float(i % 7) - 0.4f;
    v[i] = 0.1f * float(i % 5);
    a[i] = 0.05f * float(i % 3);
  }
  for (int64_t j = 0; j < N; ++j) { beta[j] = 0.9f - 0.01f * float(j); rho[j] = 0.8f; }
  const core::NeuronScalars s{0.5, 0.7, core::Reset::kSubtract, core::SurrogateKind::kTriangle, 2.0,
                             core::NeuronKind::kAlif};
  // Two ranges that split a row must give what one range gives.
  float vn2[E], an2[E], z2[E], d2[E];
  core::neuron_forward<float, float>(cur, v, a, beta, rho, N, 0, E, s, vn, an, z, d);
  core::neuron_forward<float, float>(cur, v, a, beta, rho, N, 0, 17, s, vn2, an2, z2, d2);
  core::neuron_forward<float, float>(cur, v, a, beta, rho, N, 17, E, s, vn2, an2, z2, d2);
  uint8_t bits[3 * 2];
  core::pack_bits<float>(z, N, 0, B * core::packed_row_bytes(N), bits);
  float gz[E], gv[E], ga[E], gc[E], gvp[E], gap[E], gc2[E], gvp2[E], gap2[E], ga_only[E];
  for (int64_t i = 0; i < E; ++i) {
    gz[i] = 0.2f * float(i % 4) - 0.3f;
    gv[i] = 0.1f * float(i % 6) - 0.2f;
    ga[i] = 0.05f * float(i % 5);
  }
  const auto sub = core::Reset::kSubtract;
  core::LeakBackward<float> leak{beta, rho, gvp, gap};
  core::neuron_backward<float, float>(gz, gv, ga, bits, d, N, 0, E, true, 0.7, sub, gc, ga_only, leak);
  // Split inside a row, off a byte boundary (13 = row 1, neuron 2).
  core::LeakBackward<float> leak2{beta, rho, gvp2, gap2};
  core::neuron_backward<float, float>(gz, gv, ga, bits, d, N, 0, 13, true, 0.7, sub, gc2, nullptr, leak2);
  core::neuron_backward<float, float>(gz, gv, ga, bits, d, N, 13, E, true, 0.7, sub, gc2, nullptr, leak2);
  // In place: grad_v_prev over grad_v and grad_a_prev over grad_a.
  core::LeakBackward<float> in_place{beta, rho, gv, ga};
  core::neuron_backward<float, float>(gz, gv, ga, bits, d, N, 0, E, true, 0.7, sub, gc, nullptr, in_place);
  int bad = 0, fired = 0;
  for (int64_t i = 0; i < E; ++i) {
    bad += vn[i] != vn2[i] || an[i] != an2[i] || z[i] != z2[i] || d[i] != d2[i];
    bad += (z[i] != 0.0f) != core::unpack_bit(bits + (i / N) * 2, i % N);
    bad += gv[i] != gvp[i] || ga[i] != gap[i];
    bad += gc2[i] != gc[i] || gvp2[i] != gvp[i] || gap2[i] != gap[i];
    bad += gap[i] != rho[i % N] * ga_only[i] || gvp[i] != beta[i % N] * gc[i];  // the leak epilogue
    fired += z[i] != 0.0f;
  }
  std::printf("%d %d\n", bad, fired);
  return bad != 0 || fired == 0 || fired == E;
}
"""


@pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")
def test_header_is_self_contained_and_in_place_safe(tmp_path: Path):
    source = tmp_path / "driver.cpp"
    source.write_text(HEADER_DRIVER)
    binary = tmp_path / "driver"
    subprocess.run(["c++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{CUSTOM_OPS_DIR / 'include'}",
                    str(source), "-o", str(binary)], check=True, capture_output=True, text=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("backend, device", [p for p in BACKENDS if p.id != "reference-cuda"], indirect=["device"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_per_neuron_threshold_on_the_step_kernels(model, backend, device):
    # learn_threshold: a threshold [N] in place of the spec's scalar (ALIF: its base threshold), as the
    # autograd step fires
    g = torch.Generator().manual_seed(4)
    batch, n, two = 3, 13, MODELS[model].n_state > 1

    def rand(*shape, low=-1.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)

    spec = NeuronSpec(model, 0.8, 0.6 if model == "alif" else 0.0, "subtract", "atan", 3.0)
    current, v, beta = rand(batch, n, low=-0.5, high=1.5), rand(batch, n), rand(n, low=0.0, high=1.0)
    a, rho = (rand(batch, n, low=0.0, high=1.0), rand(n, low=0.0, high=1.0)) if two else (None, None)
    threshold = rand(n, low=0.2, high=1.4)
    v_ref, a_ref, z_ref = reference_step(spec, beta, rho, v, a, current, threshold=threshold)
    assert not torch.equal(z_ref, reference_step(spec, beta, rho, v, a, current)[2])  # the threshold matters
    ref = kernel_table.load("reference").forward(current, v, a, beta, rho, spec, torch.float64, threshold)
    on = [t.to(device) if t is not None else None for t in (current, v, a, beta, rho, threshold)]
    out = kernel_table.load(backend).forward(*on[:5], spec, torch.float64, on[5])
    v_new, a_new, z, d, bits = [t.cpu() if t is not None else None for t in out]
    torch.testing.assert_close(v_new, v_ref, **F64)
    assert torch.equal(z, z_ref) and torch.equal(bits, ref[4])
    torch.testing.assert_close(d, ref[3], **F64)
    if two:
        torch.testing.assert_close(a_new, a_ref, **F64)
