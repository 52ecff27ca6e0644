"""Sparse spike ops: the spike format, the ``ipu_snn::`` custom ops and their backends.

Public API:
  * ``SparseSpikes`` (spikes.py): capacity-K spike lists, ``from_dense`` / ``to_dense``.
  * ``spike_matmul``, ``sparse_linear`` (spike_matmul.py): differentiable gather-add matmul.
  * ``prefer_sparse`` (policy.py): the explicit dense-or-sparse choice for a layer.
  * ``backend_names``, ``resolve_backend``, ``register_backend`` (registry.py).
  * ``neuron_step_fwd``, ``neuron_step_bwd``, ``neuron_step_kernels``, ``pack_spikes``,
    ``unpack_spikes`` (neuron_ops.py): the fused LIF/ALIF step and its packed spike bits.
"""

from ipu_snn.ops.neuron_ops import (
    neuron_step_bwd,
    neuron_step_fwd,
    neuron_step_kernels,
    pack_spikes,
    unpack_spikes,
)
from ipu_snn.ops.policy import prefer_sparse
from ipu_snn.ops.registry import backend_names, register_backend, resolve_backend
from ipu_snn.ops.spike_matmul import SparseLinearResult, sparse_linear, spike_matmul
from ipu_snn.ops.spikes import SparseSpikes

__all__ = [
    "SparseLinearResult",
    "SparseSpikes",
    "backend_names",
    "neuron_step_bwd",
    "neuron_step_fwd",
    "neuron_step_kernels",
    "pack_spikes",
    "prefer_sparse",
    "register_backend",
    "resolve_backend",
    "sparse_linear",
    "spike_matmul",
    "unpack_spikes",
]
