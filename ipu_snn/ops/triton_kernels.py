"""Triton kernels of the spike matmul (the `triton` and `triton_sorted` backends).

They target CUDA GPUs and also run on CPU tensors under TRITON_INTERPRET=1,
which is how CI tests them. The interpreter only runs loops whose bounds are
compile-time constants, so every loop runs to a constexpr bound (capacity,
n_out, batch) and masks what lies past the data. On a GPU that means one
compilation per distinct bound, which training, with its fixed capacity and
layer shapes, pays once.

Sums are carried in fp32 whatever the weight dtype.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ipu_snn.ops import reference
from ipu_snn.ops.backend import SpikeKernels

#: True when this module was imported under TRITON_INTERPRET=1: the kernels were
#: built for the interpreter and accept CPU tensors (and only those).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Block shapes: chosen, not autotuned or measured on a GPU here. BLOCK_N = 128 fp32 columns is 512
# bytes, four 128-byte memory transactions per row, so a warp's loads are whole and coalesced; 16 rows
# per program keep a block's accumulators in registers. Forward: a program sums BLOCK_B samples x
# BLOCK_N columns, so the columns of a fired weight row are loaded as one wide coalesced vector.
FORWARD_BLOCK_B = 16
FORWARD_BLOCK_N = 128
# Input gradient: a program computes BLOCK_K dot products of one sample.
GRAD_INPUT_BLOCK_K = 16
GRAD_INPUT_BLOCK_N = 128
# Weight gradient: atomics scatter BLOCK_K listed rows x BLOCK_N columns per
# program; the segment variant sums BLOCK_S samples of one neuron per step.
GRAD_WEIGHT_BLOCK_K = 16
GRAD_WEIGHT_BLOCK_N = 128
SEGMENT_BLOCK_S = 16


@triton.jit
def _forward_kernel(ids_ptr, counts_ptr, weight_ptr, out_ptr, batch, capacity: tl.constexpr, n_out,
                    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    # Batch blocks are the fastest grid axis, so the programs in flight at once
    # share a column tile: the weight tile W[:, cols] they gather from is
    # reused across samples through the cache instead of refetched per sample.
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < batch
    col_ok = cols < n_out
    counts = tl.load(counts_ptr + rows, mask=row_ok, other=0)
    row_base = rows.to(tl.int64) * capacity
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for k in range(0, capacity):
        live = row_ok & (k < counts)
        neuron = tl.load(ids_ptr + row_base + k, mask=live, other=0).to(tl.int64)
        w = tl.load(weight_ptr + neuron[:, None] * n_out + cols[None, :],
                    mask=live[:, None] & col_ok[None, :], other=0.0)
        acc += w.to(tl.float32)
    out = out_ptr + rows.to(tl.int64)[:, None] * n_out + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grad_input_kernel(ids_ptr, counts_ptr, weight_ptr, grad_ptr, values_ptr, capacity, n_out: tl.constexpr,
                       BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    slots = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    count = tl.load(counts_ptr + b)
    live = slots < count
    neuron = tl.load(ids_ptr + b * capacity + slots, mask=live, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for c0 in range(0, n_out, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n_out
        g = tl.load(grad_ptr + b * n_out + cols, mask=col_ok, other=0.0).to(tl.float32)
        w = tl.load(weight_ptr + neuron[:, None] * n_out + cols[None, :],
                    mask=live[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * g[None, :], axis=1)
    # Unlisted slots store the 0 they accumulated, as the contract requires.
    tl.store(values_ptr + b * capacity + slots, acc.to(values_ptr.dtype.element_ty),
             mask=slots < capacity)


@triton.jit
def _grad_weight_atomic_kernel(ids_ptr, counts_ptr, grad_ptr, grad_weight_ptr, capacity, n_out,
                               BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    slots = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < n_out
    live = slots < tl.load(counts_ptr + b)
    neuron = tl.load(ids_ptr + b * capacity + slots, mask=live, other=0).to(tl.int64)
    g = tl.load(grad_ptr + b * n_out + cols, mask=col_ok, other=0.0).to(tl.float32)
    # Samples that fired the same neuron add into the same row: atomics make
    # that safe; the order of the additions (and so the rounding) is not fixed.
    tl.atomic_add(grad_weight_ptr + neuron[:, None] * n_out + cols[None, :],
                  tl.broadcast_to(g[None, :], (BLOCK_K, BLOCK_N)),
                  mask=live[:, None] & col_ok[None, :], sem="relaxed")


@triton.jit
def _grad_weight_segment_kernel(segment_start_ptr, segment_length_ptr, samples_ptr, grad_ptr,
                                grad_weight_ptr, batch: tl.constexpr, n_out,
                                BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr):
    neuron = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_out
    start = tl.load(segment_start_ptr + neuron)
    length = tl.load(segment_length_ptr + neuron)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    # A neuron is listed at most once per sample, so no segment exceeds batch.
    for s0 in range(0, batch, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        live = s < length
        sample = tl.load(samples_ptr + start + s, mask=live, other=0).to(tl.int64)
        g = tl.load(grad_ptr + sample[:, None] * n_out + cols[None, :],
                    mask=live[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(g.to(tl.float32), axis=0)
    # Every row is written, including the 0 rows of neurons nobody fired, so
    # the gradient needs no separate zero fill.
    tl.store(grad_weight_ptr + neuron * n_out + cols, acc.to(grad_weight_ptr.dtype.element_ty),
             mask=col_ok)


def forward(ids: Tensor, counts: Tensor, weight: Tensor) -> Tensor:
    ids, counts, weight = ids.contiguous(), counts.contiguous(), weight.contiguous()
    (batch, capacity), n_out = ids.shape, weight.shape[1]
    if batch == 0 or n_out == 0 or capacity == 0:
        return weight.new_zeros(batch, n_out)
    out = weight.new_empty(batch, n_out)
    grid = (triton.cdiv(batch, FORWARD_BLOCK_B), triton.cdiv(n_out, FORWARD_BLOCK_N))
    _forward_kernel[grid](ids, counts, weight, out, batch, capacity, n_out,
                          BLOCK_B=FORWARD_BLOCK_B, BLOCK_N=FORWARD_BLOCK_N)
    return out


def grad_input(ids: Tensor, counts: Tensor, weight: Tensor, grad_out: Tensor) -> Tensor:
    ids, counts, weight = ids.contiguous(), counts.contiguous(), weight.contiguous()
    grad_out = grad_out.contiguous()
    batch, capacity = ids.shape
    n_out = weight.shape[1]
    if batch == 0 or capacity == 0 or n_out == 0:
        return weight.new_zeros(batch, capacity)
    values = weight.new_empty(batch, capacity)
    grid = (batch, triton.cdiv(capacity, GRAD_INPUT_BLOCK_K))
    _grad_input_kernel[grid](ids, counts, weight, grad_out, values, capacity, n_out,
                             BLOCK_K=GRAD_INPUT_BLOCK_K, BLOCK_N=GRAD_INPUT_BLOCK_N)
    return values


def grad_weight_atomic(ids: Tensor, counts: Tensor, grad_out: Tensor, n_in: int) -> Tensor:
    ids, counts, grad_out = ids.contiguous(), counts.contiguous(), grad_out.contiguous()
    batch, capacity = ids.shape
    n_out = grad_out.shape[1]
    # fp32 accumulator: atomics on half would round at every addition.
    acc = torch.zeros(n_in, n_out, dtype=torch.float32, device=grad_out.device)
    if batch and capacity and n_out and n_in:
        grid = (batch, triton.cdiv(n_out, GRAD_WEIGHT_BLOCK_N), triton.cdiv(capacity, GRAD_WEIGHT_BLOCK_K))
        _grad_weight_atomic_kernel[grid](ids, counts, grad_out, acc, capacity, n_out,
                                         BLOCK_K=GRAD_WEIGHT_BLOCK_K, BLOCK_N=GRAD_WEIGHT_BLOCK_N)
    return acc.to(grad_out.dtype)


def grad_weight_sorted(ids: Tensor, counts: Tensor, grad_out: Tensor, n_in: int) -> Tensor:
    ids, counts, grad_out = ids.contiguous(), counts.contiguous(), grad_out.contiguous()
    batch, capacity = ids.shape
    n_out = grad_out.shape[1]
    grad_weight = grad_out.new_empty(n_in, n_out)
    if n_in == 0 or n_out == 0:
        return grad_weight
    # Sort the listed (sample, neuron) pairs by neuron; unlisted slots get the
    # sentinel neuron n_in, which sorts last and owns no segment.
    live = reference.listed_mask(counts, capacity)
    neuron = torch.where(live, ids, n_in).flatten().long()
    order = torch.argsort(neuron, stable=True)
    samples = (order // max(capacity, 1)).to(torch.int32)
    length = torch.bincount(neuron, minlength=n_in + 1)[:n_in]
    start = torch.cumsum(length, 0) - length
    grid = (n_in, triton.cdiv(n_out, GRAD_WEIGHT_BLOCK_N))
    _grad_weight_segment_kernel[grid](start, length, samples, grad_out, grad_weight, batch, n_out,
                                      BLOCK_S=SEGMENT_BLOCK_S, BLOCK_N=GRAD_WEIGHT_BLOCK_N)
    return grad_weight


def kernels(weight_grad: str) -> SpikeKernels:
    """The Triton backend with the given weight-gradient strategy ("atomic" or "sorted")."""
    strategies = {"atomic": ("triton", grad_weight_atomic), "sorted": ("triton_sorted", grad_weight_sorted)}
    name, grad_weight = strategies[weight_grad]
    return SpikeKernels.from_lists(name, frozenset({"cpu"} if INTERPRETED else {"cuda"}), forward, grad_weight,
                                   grad_input, reference.compact, reference.compact_bits)
