"""The neuron update's one home: its spec, the surrogate table, the reference steps, the kernels
and the fused window loop.

* `models`: the neuron-model registry (`MODELS`: lif, rlif, alif, cuba), a file per model; `model`: `NeuronModel`;
* `spec`: `NeuronSpec` and the math contract, written once;
* `params`: the compiled kernels' one parameter struct, by field name;
* `surrogates`: the surrogate table (name, kernel code, derivative, primitive);
* `reference`: the autograd step (each model's own, the ground truth) and the reference kernels;
* `bits`: spikes as packed bits, shared by every kernel and `ipu_snn.bptt.fwdad`;
* `kernels`: the kernel table (reference, cpu, triton); `triton_kernels`: the Triton step;
* `ops`: the fused step as ``ipu_snn::`` custom ops (visible to torch.compile);
* `window`: one layer's fused time loop over a window of steps, and the readout's.
"""

from .bits import count_spikes, pack_spikes, packed_row_bytes, unpack_spikes
from .spec import NeuronSpec
from .surrogates import SURROGATES, spike, straight_through_spike, surrogate

__all__ = ["NeuronSpec", "SURROGATES", "count_spikes", "pack_spikes", "packed_row_bytes", "spike",
           "straight_through_spike", "surrogate", "unpack_spikes"]
