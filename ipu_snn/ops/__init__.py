"""Sparse spike ops: the spike format, the ``ipu_snn::`` custom ops and their backends.

Public API:
  * ``SparseSpikes`` (spikes.py): capacity-K spike lists, ``from_dense`` / ``to_dense``.
  * ``spike_matmul``, ``sparse_linear`` (spike_matmul.py): differentiable gather-add matmul.
  * ``spike_product`` (spike_product.py): a window's product of packed spikes, dense or sparse.
  * ``SparsePolicy``, ``crossover_density`` (policy.py): how a product runs, from a measured crossover.
  * ``backend_names``, ``resolve_backend``, ``register_backend`` (registry.py).
"""

from ipu_snn.ops.policy import SparsePolicy, crossover_density
from ipu_snn.ops.registry import backend_names, register_backend, resolve_backend
from ipu_snn.ops.spike_matmul import SparseLinearResult, sparse_linear, spike_matmul
from ipu_snn.ops.spike_product import spike_product
from ipu_snn.ops.spikes import SparseSpikes, SpikeOverflowError

__all__ = [
    "SparseLinearResult",
    "SparsePolicy",
    "SparseSpikes",
    "SpikeOverflowError",
    "backend_names",
    "crossover_density",
    "register_backend",
    "resolve_backend",
    "sparse_linear",
    "spike_matmul",
    "spike_product",
]
