"""The ``ipu_snn::`` custom ops: one torch.library op per kernel, each with a fake.

The ops take the backend name as an argument and find the kernel in the
registry, so one op serves every device (and tests can run the Triton kernels
on CPU tensors under TRITON_INTERPRET=1). The fake kernels give shapes only;
they let torch.compile and FakeTensor shape inference trace through the ops.
Autograd lives one level up (matmul.py), because the gradient flows to
the dense spike tensor, which is not an input of these ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ipu_snn.ops.backend import SpikeKernels
from ipu_snn.ops.registry import get_kernels, resolve_backend


def _kernels(backend: str, like: Tensor) -> SpikeKernels:
    """The kernels of ``backend``, checked against the device of ``like``."""
    return get_kernels(resolve_backend(backend, like.device))


def _check_spike_list(op: str, ids: Tensor, counts: Tensor) -> None:
    if ids.dim() != 2 or ids.dtype != torch.int32:
        raise ValueError(f"{op}: ids must be an int32 [B, K] tensor, got {ids.dtype} {tuple(ids.shape)}")
    if counts.dim() != 1 or counts.dtype != torch.int32 or counts.shape[0] != ids.shape[0]:
        raise ValueError(
            f"{op}: counts must be an int32 [B] tensor with B = {ids.shape[0]}, "
            f"got {counts.dtype} {tuple(counts.shape)}"
        )


def _check_matrix(op: str, name: str, t: Tensor) -> None:
    if t.dim() != 2 or not t.is_floating_point():
        raise ValueError(f"{op}: {name} must be a floating-point matrix, got {t.dtype} {tuple(t.shape)}")


def _check_same_device(op: str, *tensors: Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"{op}: all tensors must be on one device, got {sorted(map(str, devices))}")


def _check_forward(ids: Tensor, counts: Tensor, weight: Tensor) -> None:
    op = "ipu_snn::spike_matmul_fwd"
    _check_spike_list(op, ids, counts)
    _check_matrix(op, "weight", weight)
    _check_same_device(op, ids, counts, weight)


def _check_grad_weight(ids: Tensor, counts: Tensor, grad_out: Tensor, n_in: int) -> None:
    op = "ipu_snn::spike_matmul_grad_weight"
    _check_spike_list(op, ids, counts)
    _check_matrix(op, "grad_out", grad_out)
    _check_same_device(op, ids, counts, grad_out)
    if grad_out.shape[0] != ids.shape[0] or n_in < 0:
        raise ValueError(
            f"{op}: grad_out must have B = {ids.shape[0]} rows and n_in must be >= 0, "
            f"got grad_out {tuple(grad_out.shape)}, n_in = {n_in}"
        )


def _check_grad_input(ids: Tensor, counts: Tensor, weight: Tensor, grad_out: Tensor) -> None:
    op = "ipu_snn::spike_matmul_grad_input"
    _check_spike_list(op, ids, counts)
    _check_matrix(op, "weight", weight)
    _check_matrix(op, "grad_out", grad_out)
    _check_same_device(op, ids, counts, weight, grad_out)
    if tuple(grad_out.shape) != (ids.shape[0], weight.shape[1]):
        raise ValueError(
            f"{op}: grad_out must be [{ids.shape[0]}, {weight.shape[1]}], got {tuple(grad_out.shape)}"
        )


def _check_compact(z: Tensor, near: Tensor | None, capacity: int) -> None:
    op = "ipu_snn::compact_spikes"
    if z.dim() != 2:
        raise ValueError(f"{op}: z must be a [B, N] tensor, got {tuple(z.shape)}")
    if near is not None and (near.shape != z.shape or near.device != z.device):
        raise ValueError(f"{op}: near must match z's shape and device, got {tuple(near.shape)}")
    if capacity < 0:
        raise ValueError(f"{op}: capacity must be >= 0, got {capacity}")


@torch.library.custom_op("ipu_snn::spike_matmul_fwd", mutates_args=())
def spike_matmul_fwd(ids: Tensor, counts: Tensor, weight: Tensor, backend: str) -> Tensor:
    """out[b] = sum of weight rows ids[b, :counts[b]]: the dense ``spikes @ weight``."""
    _check_forward(ids, counts, weight)
    return _kernels(backend, weight).forward(ids, counts, weight)


@spike_matmul_fwd.register_fake
def _(ids: Tensor, counts: Tensor, weight: Tensor, backend: str) -> Tensor:
    _check_forward(ids, counts, weight)
    return weight.new_empty(ids.shape[0], weight.shape[1])


@torch.library.custom_op("ipu_snn::spike_matmul_grad_weight", mutates_args=())
def spike_matmul_grad_weight(ids: Tensor, counts: Tensor, grad_out: Tensor, n_in: int, backend: str) -> Tensor:
    """grad_weight[i] = sum of grad_out[b] over samples b that list i: ``spikes.T @ grad_out``."""
    _check_grad_weight(ids, counts, grad_out, n_in)
    return _kernels(backend, grad_out).grad_weight(ids, counts, grad_out, n_in)


@spike_matmul_grad_weight.register_fake
def _(ids: Tensor, counts: Tensor, grad_out: Tensor, n_in: int, backend: str) -> Tensor:
    _check_grad_weight(ids, counts, grad_out, n_in)
    return grad_out.new_empty(n_in, grad_out.shape[1])


@torch.library.custom_op("ipu_snn::spike_matmul_grad_input", mutates_args=())
def spike_matmul_grad_input(ids: Tensor, counts: Tensor, weight: Tensor, grad_out: Tensor, backend: str) -> Tensor:
    """values[b, k] = <weight[ids[b, k]], grad_out[b]> for k < counts[b], else 0 ([B, K])."""
    _check_grad_input(ids, counts, weight, grad_out)
    return _kernels(backend, weight).grad_input(ids, counts, weight, grad_out)


@spike_matmul_grad_input.register_fake
def _(ids: Tensor, counts: Tensor, weight: Tensor, grad_out: Tensor, backend: str) -> Tensor:
    _check_grad_input(ids, counts, weight, grad_out)
    return weight.new_empty(ids.shape)


@torch.library.custom_op("ipu_snn::compact_spikes", mutates_args=())
def compact_spikes(
    z: Tensor, near: Tensor | None, capacity: int, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Dense spikes to a capacity-K list: (ids, counts, near_counts, dropped, near_dropped)."""
    _check_compact(z, near, capacity)
    return tuple(_kernels(backend, z).compact(z, near, capacity))


@compact_spikes.register_fake
def _(z: Tensor, near: Tensor | None, capacity: int, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_compact(z, near, capacity)
    batch = z.shape[0]
    per_sample = [z.new_empty(batch, dtype=torch.int32) for _ in range(4)]
    return (z.new_empty(batch, capacity, dtype=torch.int32), *per_sample)
