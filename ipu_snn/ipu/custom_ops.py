"""The IPU network op: the PopART op library, loaded with ctypes, called once per model through ``poptorch.custom_op``.

``make -C custom_ops ipu`` builds ``custom_ops/build/libipu_snn_ops.so``
(``custom_ops/poplar/network_op.cpp`` over ``network_graph.cpp``); ``IPU_SNN_IPU_OPS``
may name another copy. Loading it registers the op ``Network`` of domain ``ipu_snn``,
version 1, with PopART, and from then on ``poptorch.custom_op`` reaches it while a
model is traced:

    Network  (bits uint8 [B, T, ceil(n_in / 8)], per spiking layer weight_in, bias, beta,
              [weight_rec], [threshold (learned)], [rho (ALIF, CUBA)], then the readout's weight, bias, beta)
             -> output [T, B, n_out] (the leaky-integrator readout's membrane trace), spike
                counts [B, n] per spiking layer, the carried state (what the backward reads)

The op runs every spiking layer and the readout over all T steps, and its grad op the BPTT
schedule's backward, in Poplar programs (``program::Repeat`` over steps): one op in the
traced graph whatever T. PopTorch traces the forward only; PopART differentiates through the
grad op ``NetworkGrad``, which takes the carried state back and returns one gradient per
weight and bias, the readout's decay gradient, and the spiking layers' decay and threshold gradients
where they learn them.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Sequence

import torch
from torch import Tensor

from ..bptt.schedules import Schedule, store_all
from ..errors import DeviceError
from ..executor import window_bounds
from .interpreter import LayerSpec, carried_shapes, step_actions, tape_slots

DOMAIN = "ipu_snn"
DOMAIN_VERSION = 1
LIBRARY_ENV = "IPU_SNN_IPU_OPS"
DEFAULT_LIBRARY = Path(__file__).resolve().parents[2] / "custom_ops" / "build" / "libipu_snn_ops.so"


def library_path() -> Path:
    return Path(os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY)


@functools.cache
def _load(path: Path) -> ctypes.CDLL:
    if not path.is_file():
        raise DeviceError(
            f"the IPU op library {path} does not exist. Build it where the Graphcore Poplar SDK 3.x is "
            f"enabled (`source <sdk>/enable`, then `make -C custom_ops ipu`), or set {LIBRARY_ENV} to a built copy")
    try:
        return ctypes.cdll.LoadLibrary(str(path))
    except OSError as exc:
        raise DeviceError(f"cannot load the IPU op library {path}: {exc}. It links against PopART and "
                          "Poplar: enable the same Poplar SDK it was built with (`source <sdk>/enable`)") from None


def load_op_library() -> ctypes.CDLL:
    """Load (once per path) the PopART network op, so that ``poptorch.custom_op`` can reach it."""
    return _load(library_path())


@dataclass(frozen=True)
class NetworkOpSpec:
    """The network op's spec, as its attributes carry it (``network_graph.hpp``'s ``NetworkSpec``)."""

    layers: tuple[LayerSpec, ...]
    readout: int  # the readout's neurons, n_out
    actions: tuple[tuple[int, ...], ...]  # step actions, as interpreter.step_actions writes them
    tape_slots: int
    local_slots: int
    offchip_slots: int
    samples_per_pass: int = 0  # samples per input-gradient pass (0: the whole micro-batch)

    def attributes(self) -> dict[str, int | list]:
        return {"sizes": [l.size for l in self.layers], "recurrent": [int(l.recurrent) for l in self.layers],
                "thresholds": [float(l.threshold) for l in self.layers], "resets": [l.reset for l in self.layers],
                "surrogates": [l.surrogate for l in self.layers], "scales": [float(l.scale) for l in self.layers],
                "listed": [int(l.listed) for l in self.layers],
                "learn_decay": [int(l.learn_decay) for l in self.layers],
                "learn_threshold": [int(l.learn_threshold) for l in self.layers],
                "kinds": [l.kind for l in self.layers],
                "adapt_strengths": [float(l.adapt_strength) for l in self.layers],
                "readout": self.readout, "samples_per_pass": self.samples_per_pass, "tape_slots": self.tape_slots, "local_slots": self.local_slots, "offchip_slots": self.offchip_slots,
                "actions": [int(x) for action in self.actions for x in action]}

    def carried(self, batch: int, steps: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Shapes and types of the carried outputs, in their order: ``network::carriedShapes``
        (network_graph.cpp) itself, read through the host interpreter's C interface (packed bits: uint8)."""
        return [(shape, torch.uint8 if bits else torch.float32)
                for shape, bits in carried_shapes(batch, steps, self.layers, self.readout, self.tape_slots,
                                                  self.local_slots)]


def op_schedule(network, steps: int) -> tuple[list[tuple[int, int]], Schedule]:
    """The windows of a built `SpikingNetwork`'s time loop over ``steps`` and its BPTT schedule over them
    (store_all without one): what the network op runs."""
    bounds = window_bounds(steps, network.loop.window or steps)
    schedule = network.loop.schedule(len(bounds)) if network.loop.schedule is not None else store_all(len(bounds))
    return bounds, schedule


def network_spec(network, steps: int, samples_per_pass: int = 0) -> NetworkOpSpec:
    """The op spec of a built `SpikingNetwork` for sequences of ``steps``: its spiking layers and the BPTT
    schedule of its time loop over the loop's windows, as step actions (`op_schedule`), with
    ``samples_per_pass`` samples per input-gradient pass (0: the whole micro-batch; the IPU trainer passes the
    tile plan's, `trainer.plan_samples_per_pass`)."""
    bounds, schedule = op_schedule(network, steps)
    layers = tuple(LayerSpec(l.n_out, l.rec is not None, l.spec.threshold, l.spec.reset_code, l.spec.surrogate_code,
                             l.spec.scale, learn_decay=isinstance(l.beta, torch.nn.Parameter),
                             learn_threshold=l.threshold is not None, kind=l.spec.kernel_code,
                             adapt_strength=l.spec.adapt_strength) for l in network.layers)
    actions = step_actions(schedule, bounds)
    return NetworkOpSpec(layers, network.readout.n_out, tuple(actions), tape_slots(actions),
                         max(schedule.max_local_slots, 0), max(schedule.max_offchip_slots, 0), samples_per_pass)


def network_params(network) -> list[Tensor]:
    """The op's parameter inputs, in its order: per spiking layer weight_in [n_in, n], bias, beta (clamped),
    [weight_rec], [threshold (learned)], [rho (clamped; ALIF, CUBA)]; then the readout's weight [n_last, n_out],
    bias and beta (clamped)."""
    params: list[Tensor] = []
    for layer in network.layers:
        params += [layer.fc.weight, layer.fc.bias, layer.decays()[0]]
        if layer.rec is not None:
            params.append(layer.rec.weight)
        if layer.threshold is not None:
            params.append(layer.threshold)
        if layer.decays()[1] is not None:
            params.append(layer.decays()[1])
    readout = network.readout
    return params + [readout.fc.weight, readout.fc.bias, readout.beta.clamp(0.0, 1.0)]


def network(poptorch: ModuleType, bits: Tensor, params: Sequence[Tensor], spec: NetworkOpSpec
            ) -> tuple[Tensor, list[Tensor]]:
    """The readout's membrane trace [T, B, n_out] and each spiking layer's spike counts [B, n] of packed
    input bits uint8 [B, T, ceil(n_in / 8)]: one ``Network`` op."""
    batch, steps = bits.shape[0], bits.shape[1]
    like = params[0]
    examples = [like.new_empty(steps, batch, spec.readout),
                *(like.new_empty(batch, l.size) for l in spec.layers),
                *(like.new_empty(shape, dtype=dtype) for shape, dtype in spec.carried(batch, steps))]
    outputs = poptorch.custom_op([bits, *params], "Network", DOMAIN, DOMAIN_VERSION, example_outputs=examples,
                                 attributes=spec.attributes())
    return outputs[0], list(outputs[1:1 + len(spec.layers)])
