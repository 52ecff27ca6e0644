"""When a layer should use the sparse spike matmul rather than a dense matmul.

Kept apart from the op on purpose: ``sparse_linear`` always runs sparse, and a
layer asks ``prefer_sparse`` once (shapes and capacity are static) and picks.
The crossovers are measured by scripts/bench_spike_matmul.py; the numbers and
the commands that produced them are in docs/benchmarks/spike_matmul.md.
"""

from __future__ import annotations

import torch

#: CPU (C++ backend vs fp32 torch matmul, forward + backward, W3 grid): the
#: sparse path won at every measured density up to this one, for every batch
#: and width measured, and lost at the next (30%) for B >= 128, N = 1024. The
#: density is the capacity over the input width, since the capacity is what a
#: layer fixes in advance.
CPU_MAX_SPARSE_DENSITY = 0.2

#: CUDA: DESIGN.md's H100 measurement of a gather-sum (embedding_bag) against
#: bf16 cuBLAS: it won only at batch 16, N = 4096, density <= 2%.
CUDA_MAX_SPARSE_DENSITY = 0.02
CUDA_MAX_SPARSE_BATCH = 16


def prefer_sparse(device: torch.device | str, batch: int, n_in: int, capacity: int) -> bool:
    """True if the sparse spike matmul is expected to beat a dense matmul here."""
    device_type = torch.device(device).type
    density = capacity / max(n_in, 1)
    if device_type == "cpu":
        return density <= CPU_MAX_SPARSE_DENSITY
    if device_type == "cuda":
        return batch <= CUDA_MAX_SPARSE_BATCH and density <= CUDA_MAX_SPARSE_DENSITY
    return False
