"""The neuron-model registry: every layer ``type`` the project knows, one `NeuronModel` each, a file per model.

Config (the layer union), network (the layers), planner (bytes per neuron), the IPU tile plan and
NIR read it. Adding a model is one entry here plus one kernel function per language
(docs/architecture.md, "How to add a neuron model").
"""

from __future__ import annotations

from ..model import Decay, NeuronModel, NirMapping, Param
from .alif import ALIF
from .cuba import CUBA
from .lif import LIF
from .rlif import RLIF

MODELS: dict[str, NeuronModel] = {m.name: m for m in (LIF, RLIF, ALIF, CUBA)}

#: kernel name -> the integer every compiled kernel uses (neuron_core.h's NeuronKind)
KERNEL_CODES: dict[str, int] = {m.kernel: m.kernel_code for m in MODELS.values()}


def neuron_model(name: str) -> NeuronModel:
    """The registry entry of ``name``; a ValueError (a caller's bug: configs are validated) if unknown."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown neuron model {name!r}; known: {', '.join(MODELS)}") from None


def for_nir(node: str, recurrent: bool) -> NeuronModel:
    """The model a NIR ``node`` (its type name) with or without recurrent weights reads back as."""
    for model in MODELS.values():
        if model.nir.node == node and model.recurrent in (None, recurrent):
            return model
    raise ValueError(f"no neuron model maps to a NIR {node}{' with recurrent weights' if recurrent else ''}")


__all__ = ["Decay", "KERNEL_CODES", "MODELS", "NeuronModel", "NirMapping", "Param", "for_nir", "neuron_model"]
