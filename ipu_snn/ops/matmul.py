"""Differentiable sparse spike matmul: ``spike_matmul`` and the layer helper ``sparse_linear``.

Forward: ``spikes.to_dense() @ weight`` computed as a gather-add of the weight
rows of the neurons that fired.

Backward:
  * weight: ``spikes.T @ grad_out``, a scatter-add of each sample's output
    gradient into the rows of the neurons it fired;
  * the dense spike tensor z the spikes were made from (the link to the
    surrogate spike function): by default only at the listed neurons (spikes
    and near-threshold entries) and 0 elsewhere, which is the sparse backward of
    Finkbeiner et al.; with ``dense_grad=True`` the full ``grad_out @ weight.T``,
    for surrogates whose support is unbounded.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ipu_snn.ops import library  # noqa: F401  (registers the ipu_snn:: ops)
from ipu_snn.ops.reference import scatter_listed
from ipu_snn.ops.registry import resolve_backend
from ipu_snn.ops.spikes import OverflowPolicy, SparseSpikes


class _SpikeMatmul(torch.autograd.Function):
    """Inputs: z (dense spikes or None), weight, then the spike list (no gradient)."""

    # forward(ctx, ...) rather than a separate setup_context: with setup_context,
    # Function.apply binds arguments through inspect.signature on every call,
    # which cost about 40 us, as much as a small layer's whole forward.
    @staticmethod
    def forward(ctx, z, weight, ids, counts, listed_counts, backend, dense_grad):
        ctx.save_for_backward(weight, ids, counts, listed_counts)
        ctx.backend = backend
        ctx.dense_grad = dense_grad
        ctx.z_dtype = z.dtype if z is not None else None
        return torch.ops.ipu_snn.spike_matmul_fwd(ids, counts, weight, backend)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        weight, ids, counts, listed_counts = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_z = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.ipu_snn.spike_matmul_grad_weight(
                ids, counts, grad_out, weight.shape[0], ctx.backend
            )
        if ctx.needs_input_grad[0]:
            if ctx.dense_grad:
                grad_z = grad_out.to(weight.dtype) @ weight.T
            else:
                values = torch.ops.ipu_snn.spike_matmul_grad_input(
                    ids, listed_counts, weight, grad_out, ctx.backend
                )
                grad_z = scatter_listed(values, ids, listed_counts, weight.shape[0])
            grad_z = grad_z.to(ctx.z_dtype)
        return grad_z, grad_weight, None, None, None, None, None


def spike_matmul(
    spikes: SparseSpikes,
    weight: Tensor,
    *,
    z: Tensor | None = None,
    dense_grad: bool = False,
    backend: str | None = None,
) -> Tensor:
    """``spikes.to_dense() @ weight`` for weight [n_in, n_out], as a gather-add.

    Differentiable with respect to ``weight``, and to ``z`` when it is given:
    z must be the dense [B, n_in] tensor ``spikes`` was made from (for example
    the output of a surrogate spike function); see the module docstring for
    which entries of z receive a gradient.
    """
    if weight.dim() != 2 or weight.shape[0] != spikes.n:
        raise ValueError(
            f"spike_matmul: weight must be [n_in = {spikes.n}, n_out], got {tuple(weight.shape)}"
        )
    if z is not None and tuple(z.shape) != (spikes.batch_size, spikes.n):
        raise ValueError(
            f"spike_matmul: z must be the dense spikes [{spikes.batch_size}, {spikes.n}], "
            f"got {tuple(z.shape)}"
        )
    backend = resolve_backend(backend, weight.device)
    needs_grad = weight.requires_grad or (z is not None and z.requires_grad)
    if not (needs_grad and torch.is_grad_enabled()):
        # Inference: the autograd.Function would only add ~30 us of Python per call.
        return torch.ops.ipu_snn.spike_matmul_fwd(spikes.ids, spikes.counts, weight, backend)
    return _SpikeMatmul.apply(
        z, weight, spikes.ids, spikes.counts, spikes.listed_counts, backend, dense_grad
    )


class SparseLinearResult(NamedTuple):
    output: Tensor
    #: The compacted spikes; ``spikes.dropped`` holds the overflow to report.
    spikes: SparseSpikes


def sparse_linear(
    z: Tensor,
    weight: Tensor,
    capacity: int,
    overflow: OverflowPolicy = "error",
    v: Tensor | None = None,
    threshold: float | Tensor | None = None,
    second_threshold: float | None = None,
    dense_grad: bool = False,
    backend: str | None = None,
) -> SparseLinearResult:
    """``z @ weight`` for dense 0/1 spikes z [..., n_in], computed sparsely.

    z is compacted to at most ``capacity`` spikes per sample (see
    ``SparseSpikes.from_dense`` for ``overflow`` and the second threshold, for
    which ``v`` has z's shape), then multiplied with ``spike_matmul``.
    Gradients flow to both z and weight. Returns the output [..., n_out] and
    the spikes, whose ``dropped`` counts what overflow left out.
    """
    if z.dim() < 1 or weight.dim() != 2 or z.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"sparse_linear: z [..., n_in] and weight [n_in, n_out] do not match: "
            f"{tuple(z.shape)} and {tuple(weight.shape)}"
        )
    lead = z.shape[:-1]
    flat = z.reshape(-1, z.shape[-1])
    # v and a tensor threshold follow z into the flattened [B, n_in] layout.
    flat_v = v.reshape(flat.shape) if v is not None and v.shape == z.shape else v
    if isinstance(threshold, Tensor):
        threshold = threshold.expand(z.shape).reshape(flat.shape)
    spikes = SparseSpikes.from_dense(
        flat.detach(), capacity, overflow=overflow, v=flat_v, threshold=threshold,
        second_threshold=second_threshold, backend=backend,
    )
    out = spike_matmul(spikes, weight, z=flat, dense_grad=dense_grad, backend=backend)
    return SparseLinearResult(out.reshape(*lead, weight.shape[1]), spikes)
