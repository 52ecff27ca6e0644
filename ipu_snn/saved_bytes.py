"""How many bytes autograd keeps for backward: the measure of a training loop's memory per step."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor


def saved_bytes(run: Callable[[], object], owned: Iterable[Tensor] = ()) -> int:
    """Bytes of every tensor autograd saves while ``run()`` records its graph.

    Tensors sharing storage with ``owned`` (parameters, the input batch: memory
    the caller holds anyway) are not counted; a view of the input batch kept by
    a product counts nothing, a copy of it counts in full.
    """
    skip = {t.untyped_storage().data_ptr() for t in owned}
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        if t.untyped_storage().data_ptr() not in skip:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total
