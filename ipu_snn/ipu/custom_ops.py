"""The IPU spike ops: the PopART op library, loaded with ctypes, called through ``poptorch.custom_op``.

``make -C custom_ops ipu`` builds ``custom_ops/build/libspike_matmul_op.so``
(``custom_ops/poplar/spike_matmul_op.cpp``); ``IPU_SNN_IPU_OPS`` may name
another copy. Loading it registers the ops of domain ``ipu_snn``, version 1,
with PopART, and from then on ``poptorch.custom_op`` reaches them while a
model is traced:

    SpikeMatmul           (ids, counts, weight) -> out [B, N_out]
    SpikeMatmulGradInput  (ids, listed counts, weight, grad_out) -> values [B, K]
    SpikeSelect           (membrane) -> ids [B, K], counts [B, 4]
    SpikeLinear           (z, ids, counts, weight) -> out [B, N_out]

PopTorch only traces the forward pass: PopART differentiates the graph,
through the ops' PopART grad ops, which cannot be called from Python.
``SpikeMatmul``'s grad op reaches only the weight. ``SpikeLinear`` also takes the
dense spikes z the list was made from, and its grad ops give PopART both
gradients: the weight's, and z's (``grad_out @ weight.T``, or with
``dense_grad=False`` only at the listed neurons), which is what BPTT through a
sparse layer needs; ``spike_linear`` (after ``compact``) is what the traced
network's products call (ipu_snn.ipu.model).
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from ..errors import DeviceError

DOMAIN = "ipu_snn"
DOMAIN_VERSION = 1
LIBRARY_ENV = "IPU_SNN_IPU_OPS"
DEFAULT_LIBRARY = Path(__file__).resolve().parents[2] / "custom_ops" / "build" / "libspike_matmul_op.so"


def library_path() -> Path:
    return Path(os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY)


@functools.cache
def _load(path: Path) -> ctypes.CDLL:
    if not path.is_file():
        raise DeviceError(
            f"the IPU spike-op library {path} does not exist. Build it where the Graphcore Poplar SDK 3.x is "
            f"enabled (`source <sdk>/enable`, then `make -C custom_ops ipu`), or set {LIBRARY_ENV} to a built copy")
    try:
        return ctypes.cdll.LoadLibrary(str(path))
    except OSError as exc:
        raise DeviceError(f"cannot load the IPU spike-op library {path}: {exc}. It links against PopART and "
                          "Poplar: enable the same Poplar SDK it was built with (`source <sdk>/enable`)") from None


def load_op_library() -> ctypes.CDLL:
    """Load (once per path) the PopART ops, so that ``poptorch.custom_op`` can reach them."""
    return _load(library_path())


@dataclass(frozen=True)
class TileRange:
    """The tiles an op's work is spread over; ``end <= 0`` means up to the last tile."""

    begin: int = 0
    end: int = 0

    def attributes(self) -> dict[str, int]:
        return {"tile_begin": int(self.begin), "tile_end": int(self.end)}


ALL_TILES = TileRange()


def spike_matmul(poptorch: ModuleType, ids: Tensor, counts: Tensor, weight: Tensor,
                 tiles: TileRange = ALL_TILES) -> Tensor:
    """out[b] = the sum of the weight rows ids[b, :counts[b]]: ``spikes @ weight``, [B, N_out]."""
    (out,) = poptorch.custom_op([ids, counts, weight], "SpikeMatmul", DOMAIN, DOMAIN_VERSION,
                                example_outputs=[weight.new_empty(ids.shape[0], weight.shape[1])],
                                attributes=tiles.attributes())
    return out


def spike_matmul_grad_input(poptorch: ModuleType, ids: Tensor, listed_counts: Tensor, weight: Tensor,
                            grad_out: Tensor, tiles: TileRange = ALL_TILES) -> Tensor:
    """values[b, k] = <weight[ids[b, k]], grad_out[b]> for the listed k, 0 elsewhere ([B, K])."""
    (values,) = poptorch.custom_op([ids, listed_counts, weight, grad_out], "SpikeMatmulGradInput", DOMAIN,
                                   DOMAIN_VERSION, example_outputs=[weight.new_empty(ids.shape)],
                                   attributes=tiles.attributes())
    return values


def spike_select(poptorch: ModuleType, membrane: Tensor, capacity: int, threshold: float,
                 near_threshold: float | None = None, tiles: TileRange = ALL_TILES) -> tuple[Tensor, Tensor]:
    """Neurons with membrane > threshold, then (with a lower ``near_threshold``) those above it that
    did not spike, listed per sample: ids int32 [B, K] and counts int32 [B, 4] =
    {spikes, near, dropped, near_dropped}."""
    batch = membrane.shape[0]
    near = threshold if near_threshold is None else near_threshold  # >= threshold: second threshold off
    ids, counts = poptorch.custom_op(
        [membrane], "SpikeSelect", DOMAIN, DOMAIN_VERSION,
        example_outputs=[membrane.new_empty(batch, capacity, dtype=torch.int32),
                         membrane.new_empty(batch, 4, dtype=torch.int32)],
        attributes={"capacity": int(capacity), "threshold": float(threshold), "near_threshold": float(near),
                    **tiles.attributes()})
    return ids, counts


def spike_linear(poptorch: ModuleType, z: Tensor, ids: Tensor, counts: Tensor, weight: Tensor, *,
                 dense_grad: bool = True, tiles: TileRange = ALL_TILES) -> Tensor:
    """``z @ weight`` [B, N_out] for dense 0/1 spikes z [B, N_in] listed as ``ids``/``counts`` (the first
    counts[b] entries of ids[b], as ``compact`` makes them), computed as a gather-add over the list.

    Differentiable on the IPU with respect to ``weight`` and ``z``: PopART builds the backward pass
    from the grad ops of SpikeLinear, the exact ``grad_out @ weight.T`` for z, or with
    ``dense_grad=False`` that product at the listed neurons only and 0 elsewhere.
    """
    (out,) = poptorch.custom_op([z, ids, counts, weight], "SpikeLinear", DOMAIN, DOMAIN_VERSION,
                                example_outputs=[weight.new_empty(z.shape[0], weight.shape[1])],
                                attributes={"dense_grad": int(bool(dense_grad)), **tiles.attributes()})
    return out


# Spikes and near-threshold flags coded as one membrane for SpikeSelect: a spike
# is 1 (plus 0.5 if also flagged near), a near-threshold neuron 0.5, the rest 0.
_SPIKE_LEVEL, _NEAR_LEVEL = 0.75, 0.25


def compact(poptorch: ModuleType, z: Tensor, near: Tensor | None, capacity: int,
            tiles: TileRange = ALL_TILES) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The registry's ``compact`` (dense spikes to a spike list) through SpikeSelect."""
    membrane = (z != 0).to(torch.float32)
    if near is not None:
        membrane = membrane + 0.5 * near.to(torch.float32)
    ids, counts = spike_select(poptorch, membrane, capacity, _SPIKE_LEVEL,
                               _NEAR_LEVEL if near is not None else None, tiles)
    return ids, counts[:, 0], counts[:, 1], counts[:, 2], counts[:, 3]
