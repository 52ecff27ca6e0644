"""The compiled kernels' one parameter struct, built by field name from a `NeuronSpec` and a window's settings.

The CPU extension's ops take their scalars as one dict from field name to value, which
custom_ops/cpu/neuron_glue.h (``ParamReader``) reads into a struct by name: a field missing or
unknown is an error there, and no field depends on its position. Integer codes are the tables':
the model registry's kernel code, ``RESET_CODES``, the surrogate table's code and `PRODUCT_MODES`.
"""

from __future__ import annotations

from .spec import NeuronSpec

#: product mode name -> neuron_glue.h's ``ProductMode`` (a test reads the C++ enum against this dict)
PRODUCT_MODES = {"dense": 0, "sparse": 1, "auto": 2}


def neuron_params(spec: NeuronSpec) -> dict[str, float]:
    """The neuron's fields of the struct (every op takes them)."""
    return {"kernel": float(spec.kernel_code), "threshold": float(spec.threshold),
            "adapt_strength": float(spec.adapt_strength), "reset": float(spec.reset_code),
            "surrogate": float(spec.surrogate_code), "scale": float(spec.scale)}


def product_mode(mode: str) -> float:
    """The struct's code of a product mode, by name."""
    try:
        return float(PRODUCT_MODES[mode])
    except KeyError:
        raise ValueError(f"unknown product mode {mode!r}; known: {', '.join(PRODUCT_MODES)}") from None
