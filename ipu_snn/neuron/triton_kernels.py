"""Triton kernels of the fused LIF/ALIF step (the `triton` backend of the kernel table).

Forward: one pass reads current, v, a and writes v_new, a_new, z, the
surrogate derivative d (in the saved dtype) and the packed spike bits.
Backward: one pass reads the gradients, the bits and d, and writes gv and ga.
The math is ipu_snn/neuron/spec.py's; the surrogate codes are the table's in
ipu_snn/neuron/surrogates.py (one branch per surrogate in `_surrogate_grad`).

Like ipu_snn/ops/triton_kernels.py these run on CUDA and, under
TRITON_INTERPRET=1, on CPU tensors. Each program owns a [BLOCK_B, BLOCK_N] tile with BLOCK_N a multiple
of 8, so it packs whole bytes of every row it touches and no two programs
write the same byte.

The float scalars (threshold, ...) reach the kernels in a small tensor of the
state dtype rather than as arguments: Triton passes Python floats as fp32,
which would round a float64 threshold. The tensor is cached per value, so a
training loop builds it once per layer.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..core.bits import packed_row_bytes

#: True when imported under TRITON_INTERPRET=1: the kernels then take CPU tensors (and only those).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

BLOCK_B = 4
BLOCK_N = 256  # 32 packed bytes per row

# Slots of the scalar tensor.
_THRESHOLD, _ADAPT, _SCALE, _HALF_SCALE, _ATAN_SLOPE, _BOX_HALF_WIDTH = range(6)


@functools.lru_cache(maxsize=64)
def _scalars(threshold: float, adapt_strength: float, scale: float, dtype: torch.dtype,
             device: torch.device) -> Tensor:
    # Formed in Python (double) exactly as neurons.py forms them, then rounded
    # once to the state dtype, as torch rounds a Python scalar.
    values = [0.0] * 6
    values[_THRESHOLD] = threshold
    values[_ADAPT] = adapt_strength
    values[_SCALE] = scale
    values[_HALF_SCALE] = scale / 2.0
    values[_ATAN_SLOPE] = math.pi / 2.0 * scale
    values[_BOX_HALF_WIDTH] = 0.5 / scale
    return torch.tensor(values, dtype=dtype, device=device)


@triton.jit
def _surrogate_grad(x, scalars_ptr, SURROGATE: tl.constexpr):
    scale = tl.load(scalars_ptr + 2)
    ax = tl.abs(x)
    # one branch per row of the surrogate table, by its code
    if SURROGATE == 0:  # fast_sigmoid
        denom = scale * ax + 1.0
        g = 1.0 / (denom * denom)
    elif SURROGATE == 1:  # atan
        u = tl.load(scalars_ptr + 4) * x
        g = tl.load(scalars_ptr + 3) / (1.0 + u * u)
    elif SURROGATE == 2:  # triangle
        g = scale * tl.maximum(1.0 - scale * ax, 0.0)
    else:  # boxcar
        g = tl.where(ax < tl.load(scalars_ptr + 5), scale, 0.0)
    return g


@triton.jit
def _saved(d, d_ptr, SAVED_BF16: tl.constexpr):
    # Reduced precision goes through fp32, as the C++ core and torch round
    # (double -> float -> half). bfloat16 is rounded here, to nearest even on
    # the fp32 bits, into an int16 view: the interpreter's own fp32 -> bf16
    # cast truncates and its fp64 -> bf16 cast is wrong.
    if SAVED_BF16:
        d32 = d.to(tl.float32)
        u = d32.to(tl.uint32, bitcast=True)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).to(tl.int32)
        r = tl.where(d32 != d32, 0x7FC0, r)  # NaN stays a quiet NaN
        return r.to(tl.int16)
    elif d_ptr.dtype.element_ty == tl.float16:
        return d.to(tl.float32).to(tl.float16)
    else:
        return d.to(d_ptr.dtype.element_ty)


@triton.jit
def _tile(batch, n, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's [BLOCK_B, BLOCK_N] tile of a [batch, n] tensor: its rows and columns, their masks,
    and the elements' offsets."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < batch
    col_ok = cols < n
    ok = row_ok[:, None] & col_ok[None, :]
    return rows, cols, row_ok, col_ok, ok, rows.to(tl.int64)[:, None] * n + cols[None, :]


@triton.jit
def _forward_kernel(current_ptr, v_ptr, a_ptr, beta_ptr, rho_ptr, scalars_ptr,
                    v_new_ptr, a_new_ptr, z_ptr, d_ptr, bits_ptr, batch, n, row_bytes,
                    ADAPTIVE: tl.constexpr, SUBTRACT: tl.constexpr, SURROGATE: tl.constexpr,
                    SAVED_BF16: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, row_ok, col_ok, ok, offs = _tile(batch, n, BLOCK_B, BLOCK_N)

    beta = tl.load(beta_ptr + cols, mask=col_ok, other=0.0)
    v = beta[None, :] * tl.load(v_ptr + offs, mask=ok, other=0.0) + tl.load(current_ptr + offs, mask=ok, other=0.0)
    theta = tl.load(scalars_ptr + 0)
    if ADAPTIVE:
        rho = tl.load(rho_ptr + cols, mask=col_ok, other=0.0)
        a = rho[None, :] * tl.load(a_ptr + offs, mask=ok, other=0.0)
        theta = theta + tl.load(scalars_ptr + 1) * a
    x = v - theta
    fired = (x > 0) & ok
    z = fired.to(v.dtype)
    if SUBTRACT:
        v_new = v - z * theta
    else:
        v_new = v * (1.0 - z)
    tl.store(v_new_ptr + offs, v_new, mask=ok)
    tl.store(z_ptr + offs, z, mask=ok)
    d = _surrogate_grad(x, scalars_ptr, SURROGATE)
    tl.store(d_ptr + offs, _saved(d, d_ptr, SAVED_BF16), mask=ok)
    if ADAPTIVE:
        tl.store(a_new_ptr + offs, a + z, mask=ok)

    # Bit k of byte c holds neuron 8c + k; masked-out neurons are 0 (fired is
    # false there), so a row's padding bits come out 0.
    BYTES: tl.constexpr = BLOCK_N // 8
    shifts = tl.arange(0, 8)
    packed = tl.sum(tl.reshape(fired.to(tl.int32), (BLOCK_B, BYTES, 8)) << shifts[None, None, :], axis=2)
    byte_cols = tl.program_id(1) * BYTES + tl.arange(0, BYTES)
    byte_offs = rows.to(tl.int64)[:, None] * row_bytes + byte_cols[None, :]
    tl.store(bits_ptr + byte_offs, packed.to(tl.uint8),
             mask=row_ok[:, None] & (byte_cols < row_bytes)[None, :])


@triton.jit
def _backward_kernel(grad_z_ptr, grad_v_ptr, grad_a_ptr, bits_ptr, d_ptr, scalars_ptr, gv_ptr, ga_ptr,
                     batch, n, row_bytes,
                     ADAPTIVE: tl.constexpr, HAS_GRAD_A: tl.constexpr, SUBTRACT: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, row_ok, col_ok, ok, offs = _tile(batch, n, BLOCK_B, BLOCK_N)

    byte = tl.load(bits_ptr + rows.to(tl.int64)[:, None] * row_bytes + (cols // 8)[None, :], mask=ok, other=0)
    grad_v = tl.load(grad_v_ptr + offs, mask=ok, other=0.0)
    z = ((byte.to(tl.int32) >> (cols % 8)[None, :]) & 1).to(grad_v.dtype)
    gz = tl.load(grad_z_ptr + offs, mask=ok, other=0.0)
    if HAS_GRAD_A:
        grad_a = tl.load(grad_a_ptr + offs, mask=ok, other=0.0)
        gz = gz + grad_a
    gx = gz * tl.load(d_ptr + offs, mask=ok, other=0.0).to(grad_v.dtype)
    if SUBTRACT:
        gv = grad_v + gx
    else:
        gv = grad_v * (1.0 - z) + gx
    tl.store(gv_ptr + offs, gv, mask=ok)
    if ADAPTIVE:
        adapt = tl.load(scalars_ptr + 1)
        if SUBTRACT:
            through_theta = gx + grad_v * z
        else:
            through_theta = gx
        ga = -adapt * through_theta
        if HAS_GRAD_A:
            ga = grad_a + ga
        tl.store(ga_ptr + offs, ga, mask=ok)


def _grid(batch: int, n: int) -> tuple[int, int]:
    return triton.cdiv(batch, BLOCK_B), triton.cdiv(n, BLOCK_N)


def forward(current: Tensor, v: Tensor, a: Tensor | None, beta: Tensor, rho: Tensor | None, spec,
            saved_dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
    current, v, beta = current.contiguous(), v.contiguous(), beta.contiguous()
    adaptive = spec.adaptive
    batch, n = current.shape
    v_new = torch.empty_like(current)
    z = torch.empty_like(current)
    d = torch.empty(batch, n, dtype=saved_dtype, device=current.device)
    bits = torch.empty(batch, packed_row_bytes(n), dtype=torch.uint8, device=current.device)
    a_new = torch.empty_like(current) if adaptive else None
    if batch == 0 or n == 0:
        return v_new, a_new, z, d, bits
    # LIF passes the state pointers in the unused ALIF slots; ADAPTIVE=False
    # compiles their loads and stores away.
    a = a.contiguous() if adaptive else v
    rho = rho.contiguous() if adaptive else beta
    scalars = _scalars(float(spec.threshold), float(spec.adapt_strength), float(spec.scale), current.dtype,
                       current.device)
    saved_bf16 = saved_dtype == torch.bfloat16
    _forward_kernel[_grid(batch, n)](
        current, v, a, beta, rho, scalars, v_new, a_new if adaptive else v_new, z,
        d.view(torch.int16) if saved_bf16 else d, bits, batch, n, bits.shape[1],
        ADAPTIVE=adaptive, SUBTRACT=spec.reset == "subtract", SURROGATE=spec.surrogate_code,
        SAVED_BF16=saved_bf16, BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N)
    return v_new, a_new, z, d, bits


def backward(grad_z: Tensor, grad_v: Tensor, grad_a: Tensor | None, zbits: Tensor, d: Tensor,
             spec) -> tuple[Tensor, Tensor | None]:
    grad_z, grad_v, zbits, d = (t.contiguous() for t in (grad_z, grad_v, zbits, d))
    adaptive = spec.adaptive
    has_grad_a = adaptive and grad_a is not None
    batch, n = grad_v.shape
    gv = torch.empty_like(grad_v)
    ga = torch.empty_like(grad_v) if adaptive else None
    if batch == 0 or n == 0:
        return gv, ga
    scalars = _scalars(0.0, float(spec.adapt_strength), 1.0, grad_v.dtype, grad_v.device)
    _backward_kernel[_grid(batch, n)](
        grad_z, grad_v, grad_a.contiguous() if has_grad_a else grad_v, zbits, d, scalars,
        gv, ga if adaptive else gv, batch, n, zbits.shape[1],
        ADAPTIVE=adaptive, HAS_GRAD_A=has_grad_a, SUBTRACT=spec.reset == "subtract",
        BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N)
    return gv, ga
