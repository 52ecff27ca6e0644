"""`NeuronModel`: what one neuron model declares, the one record config, network, planner, tile plan
and NIR read (the registry is `ipu_snn.neuron.models`; docs/architecture.md says how to add one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Decay:
    """A per-neuron decay per step, a parameter [N] of the layer (learned with ``learn_decay``).

    The config gives it per step (``name``, in (0, 1]) or as a time constant in seconds (``tau``)."""

    name: str  # the config field and the layer's parameter (state_dict key ``layers.<i>.<name>``)
    tau: str  # the config field of its time constant
    default: float  # per step, when the config gives neither


@dataclass(frozen=True)
class Param:
    """A scalar parameter of the model, a config field of its layers (``minimum`` inclusive)."""

    name: str
    default: float
    minimum: float = 0.0


@dataclass(frozen=True)
class NirMapping:
    """How a layer of the model is written to NIR: the node type and which NIR parameter holds what.

    ``node`` None: NIR cannot hold the model, for the reason ``refusal`` gives."""

    node: str | None
    params: tuple[tuple[str, str], ...] = ()  # (NIR parameter, what it holds)
    refusal: str = ""


@dataclass(frozen=True)
class NeuronModel:
    """One neuron model: a registry entry of `ipu_snn.neuron.models`.

    * ``name``: the layer ``type`` in the config;
    * ``kernel``, ``kernel_code``: the compiled kernel it runs and that kernel's integer, the
      ``NeuronKind`` enum of custom_ops/include/neuron_core.h, the ``KERNELS`` of the Triton kernels
      and the PopART op's ``kind`` (a test reads each against this registry). Models that differ in
      connectivity only (lif, rlif) share a kernel;
    * ``state``: the state per neuron a step carries to the next, besides the last spikes (``v`` first);
    * ``decays``: the per-neuron decays after ``beta`` (which every model has), one per extra state;
    * ``params``: the scalar parameters after ``threshold`` (which every model has);
    * ``recurrent``: True or False for every layer of the model, None for a config choice
      (``recurrent``, default ``recurrent_default``);
    * ``current_into``: the state the input current enters: 0 for ``v`` (lif, alif), 1 for the second
      state (cuba's synaptic current), whose gradient is then the current's;
    * ``step``: the reference step, a pure function (`ipu_snn.neuron.reference.step`'s signature);
    * ``kernel_forward``, ``kernel_backward``: its kernel in Python, the fused update with its derivative
      (`ipu_snn.neuron.reference.kernel_forward` / ``kernel_backward``'s signatures), the `reference`
      backend of the kernel table and the contract the compiled kernels are held to;
    * ``nir``: its NIR mapping.
    """

    name: str
    kernel: str
    kernel_code: int
    state: tuple[str, ...]
    decays: tuple[Decay, ...]
    params: tuple[Param, ...]
    recurrent: bool | None
    step: Callable
    kernel_forward: Callable
    kernel_backward: Callable
    nir: NirMapping
    doc: str = ""
    recurrent_default: bool = True
    current_into: int = 0

    @property
    def n_state(self) -> int:
        return len(self.state)

    def saved_bytes_per_neuron_step(self, d_bytes: int, learn_decay: bool) -> int:
        """Bytes one neuron-step keeps for the fused backward besides its spike (one bit, packed per row):
        the surrogate derivative in ``d_bytes`` and, for a learned decay, the pre-step state in the same
        type (d state / d decay)."""
        return d_bytes * (1 + (self.n_state if learn_decay else 0))
