"""SparseSpikes: a batch of spike lists with a fixed capacity.

Following Finkbeiner et al. (arXiv 2311.04386), a batch of binary spike vectors
over n neurons is stored as ``ids: int32[B, K]`` and ``counts: int32[B]``:
sample b fired neurons ``ids[b, :counts[b]]``. K is a fixed capacity, so shapes
stay static for IPUs, CUDA graphs and torch.compile.

With a second threshold, neurons whose membrane potential came close to the
threshold without spiking are listed right after the spikes
(``ids[b, counts[b] : counts[b] + near_counts[b]]``). They add nothing to the
forward sum; they only give the sparse backward somewhere to send surrogate
gradients.

Overflow, more than K spikes in a sample, is never silent: it either raises or
is counted in ``dropped`` for training to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ipu_snn.errors import UserError
from ipu_snn.ops import reference
from ipu_snn.ops.library import compact_spikes
from ipu_snn.ops.registry import resolve_backend

OverflowPolicy = Literal["error", "drop_and_count"]
OVERFLOW_POLICIES: tuple[str, ...] = ("error", "drop_and_count")

# How many overflowing samples an overflow error names before summarising.
_SAMPLES_NAMED_IN_ERRORS = 8


# eq=False: field-wise == on tensors has no single truth value.
@dataclass(frozen=True, eq=False)
class SparseSpikes:
    """Spike lists of a batch. See the module docstring for the layout.

    Attributes:
        ids: int32 [B, K]; slots past a sample's listed entries hold 0.
        counts: int32 [B], spikes listed per sample (at most K).
        n: number of neurons (the dense width).
        near_counts: int32 [B], near-threshold neurons listed after the spikes
            (zeros without a second threshold).
        dropped: int32 [B], spikes that did not fit in K and were left out
            (only nonzero under overflow="drop_and_count").
        near_dropped: int32 [B], near-threshold neurons that did not fit. Spikes
            take precedence for the capacity; a short near list only narrows
            the sparse backward, so it is counted but never an error.
    """

    ids: Tensor
    counts: Tensor
    n: int
    near_counts: Tensor | None = None
    dropped: Tensor | None = None
    near_dropped: Tensor | None = None
    check: bool = field(default=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Optional per-sample counts default to zeros (frozen, hence __setattr__).
        for name in ("near_counts", "dropped", "near_dropped"):
            if getattr(self, name) is None and isinstance(self.counts, Tensor):
                object.__setattr__(self, name, torch.zeros_like(self.counts))
        if self.check:
            self.validate()

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @property
    def capacity(self) -> int:
        return self.ids.shape[1]

    @property
    def device(self) -> torch.device:
        return self.ids.device

    @property
    def listed_counts(self) -> Tensor:
        """Entries listed per sample: spikes plus near-threshold neurons."""
        return self.counts + self.near_counts

    def total_dropped(self) -> int:
        """Spikes lost to overflow in the whole batch (synchronises with the device)."""
        return int(self.dropped.sum())

    def validate(self) -> None:
        """Check shapes, dtypes and values (synchronises with the device)."""
        ids, counts = self.ids, self.counts
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.int32:
            raise ValueError(f"SparseSpikes.ids must be an int32 [B, K] tensor, got {_describe(ids)}")
        per_sample = {"counts": counts, "near_counts": self.near_counts, "dropped": self.dropped,
                      "near_dropped": self.near_dropped}
        for name, t in per_sample.items():
            if not isinstance(t, Tensor) or t.dtype != torch.int32 or tuple(t.shape) != (ids.shape[0],):
                raise ValueError(
                    f"SparseSpikes.{name} must be an int32 [{ids.shape[0]}] tensor, got {_describe(t)}"
                )
            if t.device != ids.device:
                raise ValueError(f"SparseSpikes.{name} is on {t.device} but ids are on {ids.device}")
            if bool((t < 0).any()):
                raise ValueError(f"SparseSpikes.{name} must be >= 0, got {t.tolist()}")
        if not isinstance(self.n, int) or self.n < 0:
            raise ValueError(f"SparseSpikes.n must be a non-negative int, got {self.n!r}")
        listed = self.listed_counts
        if bool((listed > self.capacity).any()):
            raise ValueError(
                f"SparseSpikes: counts + near_counts exceed the capacity K = {self.capacity}: "
                f"{listed.tolist()}"
            )
        live = reference.listed_mask(listed, self.capacity)
        live_ids = ids[live]
        if live_ids.numel() and (int(live_ids.min()) < 0 or int(live_ids.max()) >= self.n):
            raise ValueError(
                f"SparseSpikes: listed ids must lie in [0, n = {self.n}), "
                f"got range [{int(live_ids.min())}, {int(live_ids.max())}]"
            )
        # A neuron listed twice would be added twice by the gather kernels but
        # once by to_dense(); the two must agree.
        masked = torch.where(live, ids.long(), self.n + torch.arange(self.capacity, device=ids.device))
        sorted_ids = masked.sort(dim=1).values
        if bool((sorted_ids[:, 1:] == sorted_ids[:, :-1]).any()):
            raise ValueError("SparseSpikes: a sample lists the same neuron twice")

    @classmethod
    def from_dense(
        cls,
        z: Tensor,
        capacity: int,
        overflow: OverflowPolicy = "error",
        v: Tensor | None = None,
        threshold: float | Tensor | None = None,
        second_threshold: float | None = None,
        backend: str | None = None,
    ) -> "SparseSpikes":
        """Compact dense spikes ``z`` [B, n] (nonzero entries are spikes).

        Args:
            capacity: K, the list length per sample.
            overflow: "error" raises if a sample has more than K spikes (this
                checks on the host, so it synchronises with the device);
                "drop_and_count" keeps each sample's first K spikes (lowest ids)
                and records the rest in ``dropped``.
            v, threshold, second_threshold: with all three, neurons with
                ``v >= second_threshold * threshold`` that did not spike are
                listed after the spikes for the sparse backward. threshold may
                be a float or a tensor broadcastable to v (per-neuron or
                adaptive thresholds).
            backend: compaction kernel (default: from z's device).
        """
        if z.dim() != 2:
            raise ValueError(f"SparseSpikes.from_dense: z must be [B, n], got shape {tuple(z.shape)}")
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"SparseSpikes.from_dense: capacity must be an int >= 0, got {capacity!r}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(
                f"SparseSpikes.from_dense: overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}"
            )
        near = near_threshold_mask(z, v, threshold, second_threshold)
        backend = resolve_backend(backend, z.device)
        ids, counts, near_counts, dropped, near_dropped = compact_spikes(z, near, capacity, backend)
        if overflow == "error":
            raise_on_overflow(counts, dropped, capacity)
        return cls(ids, counts, z.shape[1], near_counts, dropped, near_dropped, check=False)

    def to_dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The [B, n] 0/1 spike matrix. Near-threshold entries are not spikes: they stay 0."""
        return reference.dense_spikes(self.ids, self.counts, self.n, dtype)

    def listed_mask_dense(self) -> Tensor:
        """[B, n] bool: True at every listed neuron, spikes and near-threshold ones."""
        return reference.dense_spikes(self.ids, self.listed_counts, self.n, torch.bool)


def near_threshold_mask(
    z: Tensor, v: Tensor | None, threshold: float | Tensor | None, second_threshold: float | None
) -> Tensor | None:
    """Neurons at or above ``second_threshold * threshold`` that did not spike, or None."""
    given = {"v": v is not None, "threshold": threshold is not None,
             "second_threshold": second_threshold is not None}
    if not any(given.values()):
        return None
    if not all(given.values()):
        missing = [name for name, present in given.items() if not present]
        raise ValueError(
            "A second threshold needs v, threshold and second_threshold together; "
            f"missing: {', '.join(missing)}"
        )
    if v.shape != z.shape:
        raise ValueError(f"v must have the spikes' shape {tuple(z.shape)}, got {tuple(v.shape)}")
    if not 0.0 < float(second_threshold) <= 1.0:
        raise ValueError(
            f"second_threshold is a fraction of the threshold in (0, 1], got {second_threshold}"
        )
    return (v >= second_threshold * threshold) & (z == 0)


class SpikeOverflowError(UserError):
    """A sample fired more neurons than its spike list holds (overflow policy "error")."""


def raise_on_overflow(counts: Tensor, dropped: Tensor, capacity: int, where: str | None = None) -> None:
    """Raise a SpikeOverflowError naming the rows (samples) whose spikes did not fit, if any.

    ``where``: which product, in words a user can map to the config (e.g. "layer 0's recurrent spikes");
    with it the message names the config fields that decide the capacity."""
    overflowing = (dropped > 0).nonzero().flatten()
    if overflowing.numel() == 0:
        return
    totals = (counts + dropped)[overflowing]
    named = ", ".join(
        f"row {int(b)}: {int(t)} spikes"
        for b, t in zip(overflowing[:_SAMPLES_NAMED_IN_ERRORS], totals[:_SAMPLES_NAMED_IN_ERRORS])
    )
    more = overflowing.numel() - _SAMPLES_NAMED_IN_ERRORS
    fix = ("Raise model.sparse_capacity (the list length as a fraction of the presynaptic neurons) or set "
           "model.sparse_overflow=drop_and_count to keep the first K spikes and count the rest."
           if where else
           "Raise the capacity, or use overflow='drop_and_count' to keep the first K and count the rest.")
    raise SpikeOverflowError(
        f"Spike overflow{f' in {where}' if where else ''}: {overflowing.numel()} of {counts.numel()} rows have "
        f"more spikes than the capacity K = {capacity} (largest: {int(totals.max())}); {named}"
        + (f", and {more} more" if more > 0 else "") + f". {fix}"
    )


def _describe(t: object) -> str:
    if isinstance(t, Tensor):
        return f"{t.dtype} {tuple(t.shape)}"
    return repr(t)
