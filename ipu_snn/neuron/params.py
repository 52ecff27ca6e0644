"""The compiled kernels' one parameter struct, built by field name from a `NeuronSpec` and a window's settings.

The CPU extension's ops take their scalars as one dict from field name to value, which
custom_ops/cpu/neuron_glue.h (``ParamReader``) reads into a struct by name: a field missing or
unknown is an error there, and no field depends on its position. Integer codes are the tables':
the model registry's kernel code, ``RESET_CODES``, the surrogate table's code and
`ipu_snn.ops.policy.PRODUCT_MODE_CODES` (the window's ``recurrent_product``).
"""

from __future__ import annotations

from .spec import NeuronSpec

def neuron_params(spec: NeuronSpec) -> dict[str, float]:
    """The neuron's fields of the struct (every op takes them)."""
    return {"kernel": float(spec.kernel_code), "threshold": float(spec.threshold),
            "adapt_strength": float(spec.adapt_strength), "reset": float(spec.reset_code),
            "surrogate": float(spec.surrogate_code), "scale": float(spec.scale)}
