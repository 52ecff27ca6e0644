"""Triton kernels of the fused neuron step (lif and alif kernels) (the `triton` backend of the kernel table).

Forward: one pass reads current, v, a and writes v_new, a_new, z, the
surrogate derivative d (in the saved dtype) and the packed spike bits.
Backward: one pass reads the gradients, the bits and d, and writes gv and ga.
The math is ipu_snn/neuron/spec.py's; the surrogate codes are the table's in
ipu_snn/neuron/surrogates.py (one branch per surrogate in `_surrogate_grad`).

Like ipu_snn/ops/triton_kernels.py these run on CUDA and, under
TRITON_INTERPRET=1, on CPU tensors. Each program owns a [BLOCK_B, BLOCK_N] tile with BLOCK_N a multiple
of 8, so it packs whole bytes of every row it touches and no two programs
write the same byte.

A kernel takes its tensors as two tuples (inputs, outputs), its float
parameters as one struct, and the tables' codes as compile-time constants.
The struct is a small tensor of the state dtype with one slot per field
(`PARAMS`) rather than arguments: Triton passes Python floats as fp32, which
would round a float64 threshold. The tensor is cached per value, so a
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

#: The tables' integer codes as the kernels branch on them: the model registry's kernel codes
#: (`ipu_snn.neuron.models`) and the surrogate table's (a test checks both against the tables).
KERNELS = {"lif": 0, "alif": 1, "cuba": 2}
SURROGATE_CODES = {"fast_sigmoid": 0, "atan": 1, "triangle": 2, "boxcar": 3}
_ALIF: tl.constexpr = tl.constexpr(KERNELS["alif"])
_CUBA: tl.constexpr = tl.constexpr(KERNELS["cuba"])
_FAST_SIGMOID: tl.constexpr = tl.constexpr(SURROGATE_CODES["fast_sigmoid"])
_ATAN: tl.constexpr = tl.constexpr(SURROGATE_CODES["atan"])
_TRIANGLE: tl.constexpr = tl.constexpr(SURROGATE_CODES["triangle"])
_BOXCAR: tl.constexpr = tl.constexpr(SURROGATE_CODES["boxcar"])

#: The parameter struct: a small tensor of the state dtype, one slot per field, by name.
PARAMS = ("threshold", "adapt_strength", "scale", "half_scale", "atan_slope", "box_half_width")
_THRESHOLD: tl.constexpr = tl.constexpr(PARAMS.index("threshold"))
_ADAPT: tl.constexpr = tl.constexpr(PARAMS.index("adapt_strength"))
_SCALE: tl.constexpr = tl.constexpr(PARAMS.index("scale"))
_HALF_SCALE: tl.constexpr = tl.constexpr(PARAMS.index("half_scale"))
_ATAN_SLOPE: tl.constexpr = tl.constexpr(PARAMS.index("atan_slope"))
_BOX_HALF_WIDTH: tl.constexpr = tl.constexpr(PARAMS.index("box_half_width"))


@functools.lru_cache(maxsize=64)
def _params(threshold: float, adapt_strength: float, scale: float, dtype: torch.dtype,
            device: torch.device) -> Tensor:
    # Formed in Python (double) exactly as the reference forms them, then rounded
    # once to the state dtype, as torch rounds a Python scalar.
    fields = {"threshold": threshold, "adapt_strength": adapt_strength, "scale": scale, "half_scale": scale / 2.0,
              "atan_slope": math.pi / 2.0 * scale, "box_half_width": 0.5 / scale}
    return torch.tensor([fields[name] for name in PARAMS], dtype=dtype, device=device)


@triton.jit
def _surrogate_grad(x, params_ptr, SURROGATE: tl.constexpr):
    scale = tl.load(params_ptr + _SCALE)
    ax = tl.abs(x)
    # one branch per row of the surrogate table, by its code
    if SURROGATE == _FAST_SIGMOID:
        denom = scale * ax + 1.0
        g = 1.0 / (denom * denom)
    elif SURROGATE == _ATAN:
        u = tl.load(params_ptr + _ATAN_SLOPE) * x
        g = tl.load(params_ptr + _HALF_SCALE) / (1.0 + u * u)
    elif SURROGATE == _TRIANGLE:
        g = tl.maximum(1.0 - scale * ax, 0.0)
    elif SURROGATE == _BOXCAR:
        g = (ax < tl.load(params_ptr + _BOX_HALF_WIDTH)).to(x.dtype)
    else:
        tl.static_assert(False, "a surrogate code without a branch here (SURROGATE_CODES)")
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
def _forward_kernel(inputs, params_ptr, outputs, batch, n, row_bytes, KERNEL: tl.constexpr,
                    SUBTRACT: tl.constexpr, SURROGATE: tl.constexpr, SAVED_BF16: tl.constexpr,
                    PER_NEURON: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    # inputs: (current, v, a, beta, rho, threshold [N] if PER_NEURON); outputs: (v_new, a_new, z, d, bits)
    current_ptr, v_ptr, a_ptr, beta_ptr, rho_ptr, threshold_ptr = inputs
    v_new_ptr, a_new_ptr, z_ptr, d_ptr, bits_ptr = outputs
    rows, cols, row_ok, col_ok, ok, offs = _tile(batch, n, BLOCK_B, BLOCK_N)

    beta = tl.load(beta_ptr + cols, mask=col_ok, other=0.0)
    current = tl.load(current_ptr + offs, mask=ok, other=0.0)
    if KERNEL == _CUBA:  # the current charges the synaptic current a (i), which charges v
        alpha = tl.load(rho_ptr + cols, mask=col_ok, other=0.0)
        a = alpha[None, :] * tl.load(a_ptr + offs, mask=ok, other=0.0) + current
        current = a
    v = beta[None, :] * tl.load(v_ptr + offs, mask=ok, other=0.0) + current
    if PER_NEURON:  # a learned threshold, one per neuron
        theta = tl.load(threshold_ptr + cols, mask=col_ok, other=1.0)[None, :]
    else:
        theta = tl.load(params_ptr + _THRESHOLD)
    if KERNEL == _ALIF:
        rho = tl.load(rho_ptr + cols, mask=col_ok, other=0.0)
        a = rho[None, :] * tl.load(a_ptr + offs, mask=ok, other=0.0)
        theta = theta + tl.load(params_ptr + _ADAPT) * a
    x = v - theta
    fired = (x > 0) & ok
    z = fired.to(v.dtype)
    if SUBTRACT:
        v_new = v - z * theta
    else:
        v_new = v * (1.0 - z)
    tl.store(v_new_ptr + offs, v_new, mask=ok)
    tl.store(z_ptr + offs, z, mask=ok)
    d = _surrogate_grad(x, params_ptr, SURROGATE)
    tl.store(d_ptr + offs, _saved(d, d_ptr, SAVED_BF16), mask=ok)
    if KERNEL == _ALIF:
        tl.store(a_new_ptr + offs, a + z, mask=ok)
    elif KERNEL == _CUBA:
        tl.store(a_new_ptr + offs, a, mask=ok)

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
def _backward_kernel(inputs, params_ptr, outputs, batch, n, row_bytes, KERNEL: tl.constexpr,
                     HAS_GRAD_A: tl.constexpr, SUBTRACT: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    # inputs: (grad_z, grad_v, grad_a, bits, d); outputs: (gv, ga)
    grad_z_ptr, grad_v_ptr, grad_a_ptr, bits_ptr, d_ptr = inputs
    gv_ptr, ga_ptr = outputs
    rows, cols, row_ok, col_ok, ok, offs = _tile(batch, n, BLOCK_B, BLOCK_N)

    byte = tl.load(bits_ptr + rows.to(tl.int64)[:, None] * row_bytes + (cols // 8)[None, :], mask=ok, other=0)
    grad_v = tl.load(grad_v_ptr + offs, mask=ok, other=0.0)
    z = ((byte.to(tl.int32) >> (cols % 8)[None, :]) & 1).to(grad_v.dtype)
    gz = tl.load(grad_z_ptr + offs, mask=ok, other=0.0)
    if HAS_GRAD_A:
        grad_a = tl.load(grad_a_ptr + offs, mask=ok, other=0.0)
        if KERNEL == _ALIF:
            gz = gz + grad_a
    gx = gz * tl.load(d_ptr + offs, mask=ok, other=0.0).to(grad_v.dtype)
    if SUBTRACT:
        gv = grad_v + gx
    else:
        gv = grad_v * (1.0 - z) + gx
    tl.store(gv_ptr + offs, gv, mask=ok)
    if KERNEL == _ALIF:
        adapt = tl.load(params_ptr + _ADAPT)
        if SUBTRACT:
            through_theta = gx + grad_v * z
        else:
            through_theta = gx
        ga = -adapt * through_theta
        if HAS_GRAD_A:
            ga = grad_a + ga
        tl.store(ga_ptr + offs, ga, mask=ok)
    elif KERNEL == _CUBA:  # w.r.t. the synaptic current: the input current's gradient
        ga = gv
        if HAS_GRAD_A:
            ga = grad_a + ga
        tl.store(ga_ptr + offs, ga, mask=ok)


def _grid(batch: int, n: int) -> tuple[int, int]:
    return triton.cdiv(batch, BLOCK_B), triton.cdiv(n, BLOCK_N)


def _kernel_code(spec) -> int:
    try:
        return KERNELS[spec.neuron.kernel]
    except KeyError:
        raise ValueError(f"the triton neuron kernels have no {spec.neuron.kernel!r} kernel; "
                         f"they have {', '.join(KERNELS)}") from None


def forward(current: Tensor, v: Tensor, a: Tensor | None, beta: Tensor, rho: Tensor | None, spec,
            saved_dtype: torch.dtype, threshold: Tensor | None = None
            ) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
    current, v, beta = current.contiguous(), v.contiguous(), beta.contiguous()
    threshold = threshold.contiguous() if threshold is not None else None
    kernel = _kernel_code(spec)
    two_states = spec.neuron.n_state > 1
    batch, n = current.shape
    v_new = torch.empty_like(current)
    z = torch.empty_like(current)
    d = torch.empty(batch, n, dtype=saved_dtype, device=current.device)
    bits = torch.empty(batch, packed_row_bytes(n), dtype=torch.uint8, device=current.device)
    a_new = torch.empty_like(current) if two_states else None
    if batch == 0 or n == 0:
        return v_new, a_new, z, d, bits
    # a one-state model passes the state pointers in the unused slots; its kernel code
    # compiles their loads and stores away
    a = a.contiguous() if two_states else v
    rho = rho.contiguous() if two_states else beta
    params = _params(float(spec.threshold), float(spec.adapt_strength), float(spec.scale), current.dtype,
                     current.device)
    saved_bf16 = saved_dtype == torch.bfloat16
    _forward_kernel[_grid(batch, n)](
        (current, v, a, beta, rho, beta if threshold is None else threshold), params,
        (v_new, a_new if two_states else v_new, z, d.view(torch.int16) if saved_bf16 else d, bits),
        batch, n, bits.shape[1], KERNEL=kernel, SUBTRACT=spec.reset == "subtract",
        SURROGATE=SURROGATE_CODES[spec.surrogate], SAVED_BF16=saved_bf16, PER_NEURON=threshold is not None,
        BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N)
    return v_new, a_new, z, d, bits


def backward(grad_z: Tensor, grad_v: Tensor, grad_a: Tensor | None, zbits: Tensor, d: Tensor,
             spec) -> tuple[Tensor, Tensor | None]:
    grad_z, grad_v, zbits, d = (t.contiguous() for t in (grad_z, grad_v, zbits, d))
    kernel = _kernel_code(spec)
    two_states = spec.neuron.n_state > 1
    has_grad_a = two_states and grad_a is not None
    batch, n = grad_v.shape
    gv = torch.empty_like(grad_v)
    ga = torch.empty_like(grad_v) if two_states else None
    if batch == 0 or n == 0:
        return gv, ga
    params = _params(0.0, float(spec.adapt_strength), 1.0, grad_v.dtype, grad_v.device)
    _backward_kernel[_grid(batch, n)](
        (grad_z, grad_v, grad_a.contiguous() if has_grad_a else grad_v, zbits, d), params,
        (gv, ga if two_states else gv), batch, n, zbits.shape[1],
        KERNEL=kernel, HAS_GRAD_A=has_grad_a, SUBTRACT=spec.reset == "subtract",
        BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N)
    return gv, ga
