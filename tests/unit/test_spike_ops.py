"""Sparse spike matmul ops: every backend against the dense reference.

The Triton backends run on CPU tensors through the Triton interpreter when no
GPU is present; conftest.py sets TRITON_INTERPRET before anything imports Triton.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st

from ipu_snn.errors import DeviceError, UserError
from ipu_snn.core.bits import pack_spikes
from ipu_snn.ops import SparsePolicy, SparseSpikes, resolve_backend, spike_product
from ipu_snn.ops.spikes import near_threshold_mask
from ipu_snn.ops import cpu_ext
from ipu_snn.ops.registry import get_kernels

# the device "triton" is where the Triton kernels run (tests/conftest.py's `device`)
BACKENDS = [
    pytest.param("reference", "cpu", id="reference"),
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("triton", "triton", id="triton", marks=pytest.mark.triton),
    pytest.param("triton_sorted", "triton", id="triton_sorted", marks=pytest.mark.triton),
]
TOL = {"rtol": 1e-4, "atol": 1e-4}


def random_spikes(batch: int, n: int, density: float, seed: int, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, n, generator=generator) < density).float().to(device)


def dense_kept(z: torch.Tensor, capacity: int) -> torch.Tensor:
    """The spikes that survive overflow: each sample's first `capacity` spikes."""
    position = (z != 0).cumsum(1)
    return torch.where((z != 0) & (position <= capacity), 1.0, 0.0).to(z.dtype)


def check_matmul(backend: str, device: str, batch: int, n_in: int, n_out: int, density: float,
                 capacity: int, seed: int, second_threshold: float | None = None,
                 dense_grad: bool = False, dtype: torch.dtype = torch.float32) -> SparseSpikes:
    """A sparse `spike_product` (drop_and_count) and both gradients against autograd of the dense matmul of
    the spikes it keeps; returns the same spikes as lists (`SparseSpikes`), which say what it kept."""
    generator = torch.Generator().manual_seed(seed + 1)
    z = random_spikes(batch, n_in, density, seed, device).to(dtype).requires_grad_()
    weight = torch.randn(n_in, n_out, generator=generator).to(device, dtype).requires_grad_()
    v = torch.rand(batch, n_in, generator=generator).to(device) if second_threshold else None
    threshold = 1.0 if second_threshold else None
    near = near_threshold_mask(z.detach(), v, threshold, second_threshold)
    policy = SparsePolicy("sparse", max(capacity, 1), "drop_and_count", listed_grad=not dense_grad, backend=backend)
    out, dropped = spike_product(pack_spikes(z.detach()), weight, None, policy, z=z,
                                 near=None if near is None else pack_spikes(near))
    spikes = SparseSpikes.from_dense(z.detach(), max(capacity, 1), "drop_and_count", v=v, threshold=threshold,
                                     second_threshold=second_threshold, backend=backend)
    kept = dense_kept(z.detach(), max(capacity, 1)).requires_grad_()
    weight_ref = weight.detach().clone().requires_grad_()
    ref = kept @ weight_ref
    tol = TOL if dtype in (torch.float32, torch.float64) else {"rtol": 2e-2, "atol": 2e-2 * n_in}
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(spikes.to_dense(dtype), kept.detach())
    assert torch.equal(dropped.to(spikes.dropped.dtype), spikes.dropped)

    grad_out = torch.randn(batch, n_out, generator=generator).to(device, dtype)
    grad_z, grad_w = torch.autograd.grad(out, (z, weight), grad_out)
    ref_z, ref_w = torch.autograd.grad(ref, (kept, weight_ref), grad_out)
    torch.testing.assert_close(grad_w, ref_w, **tol)
    expected_z = ref_z if dense_grad else ref_z * spikes.listed_mask_dense()
    torch.testing.assert_close(grad_z, expected_z, **tol)
    return spikes


# ---------------------------------------------------------------- spike format


def test_from_dense_lists_spikes_in_order_and_pads_with_zero():
    z = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float32)
    spikes = SparseSpikes.from_dense(z, capacity=4, backend="reference")
    assert spikes.ids.tolist() == [[1, 3, 4, 0], [0, 0, 0, 0]]
    assert spikes.counts.tolist() == [3, 0]
    assert spikes.dropped.tolist() == [0, 0]
    torch.testing.assert_close(spikes.to_dense(), z)


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_compaction_matches_reference(backend, device):
    z = random_spikes(7, 50, 0.3, seed=3, device=device)
    v = torch.rand(7, 50, generator=torch.Generator().manual_seed(4)).to(device)
    for capacity in (0, 5, 20, 50):
        got = SparseSpikes.from_dense(z, capacity, "drop_and_count", v=v, threshold=1.0,
                                      second_threshold=0.6, backend=backend)
        want = SparseSpikes.from_dense(z.cpu(), capacity, "drop_and_count", v=v.cpu(), threshold=1.0,
                                       second_threshold=0.6, backend="reference")
        for name in ("ids", "counts", "near_counts", "dropped", "near_dropped"):
            assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), (capacity, name)


def test_overflow_error_names_the_counts():
    z = torch.zeros(3, 10)
    z[1, :7] = 1
    z[2, :5] = 1
    with pytest.raises(UserError, match=r"1 of 3 rows.*K = 5.*row 1: 7 spikes"):
        SparseSpikes.from_dense(z, capacity=5, overflow="error", backend="reference")


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_overflow_drop_and_count_keeps_first_k(backend, device):
    z = torch.zeros(2, 10, device=device)
    z[0, [1, 2, 4, 6, 9]] = 1
    spikes = SparseSpikes.from_dense(z, capacity=3, overflow="drop_and_count", backend=backend)
    assert spikes.ids[0].tolist() == [1, 2, 4]
    assert spikes.counts.tolist() == [3, 0]
    assert spikes.dropped.tolist() == [2, 0]
    assert spikes.total_dropped() == 2


def test_overflow_policy_is_checked():
    with pytest.raises(ValueError, match="overflow must be one of"):
        SparseSpikes.from_dense(torch.zeros(1, 3), 2, overflow="ignore", backend="reference")


def test_second_threshold_lists_near_neurons_after_spikes():
    z = torch.tensor([[1.0, 0, 0, 0, 1, 0]])
    v = torch.tensor([[1.2, 0.95, 0.5, 0.8, 1.0, 0.79]])
    spikes = SparseSpikes.from_dense(z, capacity=4, v=v, threshold=1.0, second_threshold=0.8,
                                     backend="reference")
    assert spikes.ids.tolist() == [[0, 4, 1, 3]]
    assert spikes.counts.tolist() == [2]
    assert spikes.near_counts.tolist() == [2]
    # Near entries are no spikes: the dense view and the forward ignore them.
    torch.testing.assert_close(spikes.to_dense(), z)
    # With one slot less, the last near neuron is counted, not listed.
    short = SparseSpikes.from_dense(z, capacity=3, v=v, threshold=1.0, second_threshold=0.8,
                                    backend="reference")
    assert short.near_counts.tolist() == [1] and short.near_dropped.tolist() == [1]


def test_second_threshold_needs_all_arguments():
    with pytest.raises(ValueError, match="missing: threshold"):
        SparseSpikes.from_dense(torch.zeros(1, 3), 2, v=torch.zeros(1, 3), second_threshold=0.5,
                                backend="reference")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SparseSpikes.from_dense(torch.zeros(1, 3), 2, v=torch.zeros(1, 3), threshold=1.0,
                                second_threshold=1.5, backend="reference")


def test_constructor_validates_lists():
    ids = torch.tensor([[0, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match="same neuron twice"):
        SparseSpikes(ids, torch.tensor([2], dtype=torch.int32), n=4)
    with pytest.raises(ValueError, match=r"\[0, n = 4\)"):
        SparseSpikes(torch.tensor([[5, 0]], dtype=torch.int32), torch.tensor([1], dtype=torch.int32), n=4)
    with pytest.raises(ValueError, match="exceed the capacity"):
        SparseSpikes(ids, torch.tensor([3], dtype=torch.int32), n=4)
    with pytest.raises(ValueError, match="int32"):
        SparseSpikes(ids.long(), torch.tensor([1], dtype=torch.int32), n=4)
    # Padding past the count may hold anything.
    spikes = SparseSpikes(torch.tensor([[2, 2]], dtype=torch.int32), torch.tensor([1], dtype=torch.int32), n=4)
    assert spikes.to_dense().tolist() == [[0, 0, 1, 0]]


# ---------------------------------------------------------------- matmul and gradients


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(0, 6),
    n_in=st.integers(1, 40),
    n_out=st.integers(1, 70),
    density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    capacity_fraction=st.floats(0.0, 1.2),
    seed=st.integers(0, 2**16),
)
def test_matches_dense_reference(backend, device, batch, n_in, n_out, density, capacity_fraction, seed):
    capacity = max(1, int(capacity_fraction * n_in))
    spikes = check_matmul(backend, device, batch, n_in, n_out, density, capacity, seed)
    totals = (random_spikes(batch, n_in, density, seed) != 0).sum(1)
    assert spikes.dropped.cpu().tolist() == (totals - totals.clamp(max=capacity)).tolist()


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_zero_spikes(backend, device):
    spikes = check_matmul(backend, device, 4, 30, 20, density=0.0, capacity=8, seed=0)
    assert spikes.counts.sum() == 0


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_full_capacity(backend, device):
    # density 1 with capacity n_in: every neuron fires and exactly fills the list.
    spikes = check_matmul(backend, device, 3, 24, 33, density=1.0, capacity=24, seed=1)
    assert spikes.counts.tolist() == [24, 24, 24] and spikes.total_dropped() == 0


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_overflow_drop_and_count_matmul(backend, device):
    spikes = check_matmul(backend, device, 5, 40, 17, density=0.5, capacity=6, seed=2)
    assert spikes.total_dropped() > 0


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_second_threshold_gradients(backend, device):
    spikes = check_matmul(backend, device, 6, 48, 40, density=0.1, capacity=30, seed=5,
                          second_threshold=0.7)
    assert spikes.near_counts.sum() > 0


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_dense_grad_mode(backend, device):
    check_matmul(backend, device, 4, 32, 24, density=0.2, capacity=20, seed=6, dense_grad=True)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_dtypes(backend, dtype):
    check_matmul(backend, "cpu", 4, 64, 96, density=0.2, capacity=40, seed=7, dtype=dtype)


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_leading_dimensions(backend, device):
    z = random_spikes(6, 16, 0.3, seed=8, device=device).reshape(2, 3, 16).requires_grad_()
    weight = torch.randn(16, 5, device=device, requires_grad=True)
    out, dropped = spike_product(pack_spikes(z.detach()), weight, None, SparsePolicy("sparse", 16, backend=backend),
                                 z=z)
    assert out.shape == (2, 3, 5) and dropped.shape == (2, 3)
    torch.testing.assert_close(out, z.detach() @ weight.detach(), **TOL)
    out.sum().backward()
    torch.testing.assert_close(weight.grad, z.detach().reshape(6, 16).T @ torch.ones(6, 5, device=device),
                               **TOL)


@pytest.mark.parametrize("backend, device", BACKENDS, indirect=["device"])
def test_a_product_without_z_differentiates_weight(backend, device):
    z = random_spikes(3, 12, 0.4, seed=9, device=device)
    weight = torch.randn(12, 7, device=device, requires_grad=True)
    spike_product(pack_spikes(z), weight, None, SparsePolicy("sparse", 12, backend=backend))[0].sum().backward()
    torch.testing.assert_close(weight.grad, z.T @ torch.ones(3, 7, device=device), **TOL)


def test_weight_grad_is_deterministic_on_cpu():
    bits = pack_spikes(random_spikes(64, 128, 0.5, seed=10))
    weight = torch.randn(128, 256, requires_grad=True)
    grads = []
    for _ in range(2):
        weight.grad = None
        spike_product(bits, weight, None, SparsePolicy("sparse", 128, backend="cpu"))[0].pow(2).sum().backward()
        grads.append(weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


# ---------------------------------------------------------------- torch.library / torch.compile


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_opcheck(backend):
    z = random_spikes(4, 20, 0.3, seed=11)
    near = torch.rand(4, 20, generator=torch.Generator().manual_seed(12)) > 0.7
    spikes = SparseSpikes.from_dense(z, 10, backend=backend)
    weight = torch.randn(20, 9)
    grad_out = torch.randn(4, 9)
    ops = torch.ops.ipu_snn
    cases = [
        (ops.spike_matmul_fwd.default, (spikes.ids, spikes.counts, weight, backend)),
        (ops.spike_matmul_grad_weight.default, (spikes.ids, spikes.counts, grad_out, 20, backend)),
        (ops.spike_matmul_grad_input.default, (spikes.ids, spikes.counts, weight, grad_out, backend)),
        (ops.compact_spikes.default, (z, near, 10, backend)),
        (ops.compact_spikes.default, (z, None, 3, backend)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_traces_through_the_ops():
    z = random_spikes(4, 24, 0.3, seed=13)
    near = torch.rand(4, 24, generator=torch.Generator().manual_seed(14)) > 0.7
    weight = torch.randn(24, 10)
    ops = torch.ops.ipu_snn

    def layer(z, near, weight):
        spikes = ops.compact_spikes(z, near, 12, "cpu")
        return ops.spike_matmul_fwd(spikes[0], spikes[1], weight, "cpu"), spikes[3]

    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    out, dropped = compiled(z, near, weight)
    torch.testing.assert_close(out, z @ weight, **TOL)
    assert dropped.tolist() == [0, 0, 0, 0]


# ---------------------------------------------------------------- registry, errors, policy


def test_default_backend_follows_the_device():
    assert resolve_backend(None, torch.device("cpu")) == "cpu"


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown spike-product backend 'fpga'; known: "):
        resolve_backend("fpga", torch.device("cpu"))


def test_device_without_backend_is_a_clear_error():
    with pytest.raises(DeviceError, match="no spike-product backend runs on device type 'meta'"):
        resolve_backend(None, torch.device("meta"))


def test_backend_on_the_wrong_device_is_a_clear_error():
    with pytest.raises(DeviceError, match="runs on \\['cpu'\\] tensors"):
        resolve_backend("cpu", torch.device("meta"))


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-ipu-snn")
    with pytest.raises(DeviceError, match="no-such-compiler-ipu-snn.*backend='reference'"):
        cpu_ext._check_toolchain()


def test_build_directory_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_ext.BUILD_DIR_ENV, str(tmp_path))
    assert cpu_ext.build_directory().parent == tmp_path


def test_cpu_kernels_reject_out_of_range_ids():
    kernels = get_kernels("cpu")
    ids = torch.tensor([[3]], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="outside"):
        kernels.forward(ids, torch.tensor([1], dtype=torch.int32), torch.zeros(2, 2))


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.triton
def test_cuda_default_backend_is_triton():
    assert resolve_backend(None, torch.device("cuda")) == "triton"


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("backend", ["triton", "triton_sorted", "reference"])
def test_cuda_large_shape(backend):
    check_matmul(backend, "cuda", 128, 1024, 1024, density=0.05, capacity=120, seed=14,
                 second_threshold=0.8)


# ---------------------------------------------------------------- benchmark script


def test_benchmark_quick_run_writes_outputs_and_keeps_doc_text(tmp_path):
    root = Path(__file__).resolve().parents[2]
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\nHand-written analysis.\n")
    subprocess.run(
        [sys.executable, str(root / "scripts" / "bench_spike_matmul.py"), "--device", "cpu", "--quick",
         "--repeats", "1", "--threads", "1", "--out", str(tmp_path / "out"), "--doc", str(doc)],
        check=True, cwd=root, capture_output=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))},
    )
    for suffix in ("json", "md", "png"):
        assert (tmp_path / "out" / f"spike_matmul_cpu_t1.{suffix}").is_file()
    text = doc.read_text()
    assert "Hand-written analysis." in text and "<!-- BEGIN GENERATED spike_matmul_cpu_t1 -->" in text
    assert (tmp_path / "spike_matmul_cpu_t1.png").is_file()
