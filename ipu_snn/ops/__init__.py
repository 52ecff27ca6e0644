"""Sparse spike ops: the spike format, the ``ipu_snn::`` custom ops and their backends.

Public API:
  * ``spike_product`` (product.py): the spike product over packed bits, dense or sparse.
  * ``SparseSpikes`` (spikes.py): capacity-K spike lists, the format of the list kernels and the IPU emulator.
  * ``SparsePolicy``, ``crossover_density`` (policy.py): how a product runs, from a measured crossover.
  * ``backend_names``, ``resolve_backend``, ``register_backend`` (registry.py).
"""

import importlib

# Exported lazily: the spike ops register torch.library custom ops (torch >= 2.4), and a module that
# only needs, say, SparsePolicy (the IPU path, whose PopTorch 3.4 runs on torch 2.0.1) must not pay that.
_EXPORTS = {
    "SparsePolicy": "policy", "crossover_density": "policy",
    "backend_names": "registry", "register_backend": "registry", "resolve_backend": "registry",
    "spike_product": "product",
    "SparseSpikes": "spikes", "SpikeOverflowError": "spikes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ipu_snn.ops' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ipu_snn.ops.{_EXPORTS[name]}"), name)
