"""The neuron update's one home: its spec, the surrogate table, the reference steps, the kernels
and the fused window loop.

* `models`: the neuron-model registry (`MODELS`: lif, rlif, alif, cuba), a file per model; `model`: `NeuronModel`;
* `spec`: `NeuronSpec` and the math contract, written once;
* `params`: the compiled kernels' one parameter struct, by field name;
* `surrogates`: the surrogate table (name, kernel code, derivative);
* `reference`: the autograd step (each model's own, the ground truth) and the reference kernels;
* `kernels`: the kernel table (reference, cpu, triton); `triton_kernels`: the Triton step;
* `ops`: the fused step as ``ipu_snn::`` custom ops (visible to torch.compile);
* `window`: one layer's fused time loop over a window of steps, and the readout's.
"""

from .spec import NeuronSpec
from .surrogates import SURROGATES, spike, surrogate

__all__ = ["NeuronSpec", "SURROGATES", "spike", "surrogate"]
