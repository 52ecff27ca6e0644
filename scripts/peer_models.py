"""The peer frameworks' versions of the reference networks, for the benchmarks: snnTorch (W1's
recurrent LIF and W1-FF) and SpikingJelly (W1-FF, its multi-step LIF). Each takes float frames
[B, T, inputs] and returns logits [B, classes]; a framework that is not installed raises `Skip`
(``pip install 'ipu_snn[peers]'``)."""

from __future__ import annotations

import torch
from torch import nn

BETA = 0.95  # the leak the ipu_snn contenders use too


class Skip(Exception):
    """A contender that cannot run here, with the reason."""


def snntorch_model(recurrent: bool, n_inputs: int, hidden: int, n_classes: int, depth: int | None = None) -> nn.Module:
    """``depth`` hidden layers (default: 1 recurrent, as W1 and W2-small; 2 feed-forward, as W1-FF)."""
    try:
        import snntorch as snn
        from snntorch import surrogate
    except ImportError as error:
        raise Skip(f"snntorch not installed ({error})") from None
    grad = surrogate.fast_sigmoid(slope=10)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            sizes = [n_inputs] + [hidden] * (depth or (1 if recurrent else 2))
            self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
            if recurrent:
                self.lifs = nn.ModuleList(snn.RLeaky(beta=BETA, linear_features=hidden, spike_grad=grad)
                                          for _ in sizes[1:])
            else:
                self.lifs = nn.ModuleList(snn.Leaky(beta=BETA, spike_grad=grad) for _ in sizes[1:])
            self.readout = nn.Linear(hidden, n_classes)
            self.li = snn.Leaky(beta=BETA, reset_mechanism="none")

        def forward(self, x):  # x: [B, T, inputs]
            states = [lif.reset_mem() for lif in self.lifs]
            mem_out = self.li.reset_mem()
            trace = []
            for x_t in x.unbind(1):
                h = x_t
                for i, (fc, lif) in enumerate(zip(self.fcs, self.lifs)):
                    if recurrent:
                        spk, mem = lif(fc(h), *states[i])
                        states[i] = (spk, mem)
                    else:
                        spk, mem = lif(fc(h), states[i])
                        states[i] = mem
                    h = spk
                _, mem_out = self.li(self.readout(h), mem_out)
                trace.append(mem_out)
            return torch.stack(trace).amax(0)

    return Net()


def spikingjelly_model(n_inputs: int, hidden: int, n_classes: int) -> nn.Module:
    """W1-FF in SpikingJelly: two multi-step LIF layers (its fused kernels where it has them)."""
    try:
        from spikingjelly.activation_based import functional, layer, neuron, surrogate
    except ImportError as error:
        raise Skip(f"spikingjelly not installed ({error})") from None
    tau = 1.0 / (1.0 - BETA)  # decay_input=False: v <- v - v / tau + x, i.e. beta = 1 - 1 / tau

    def lif():
        return neuron.LIFNode(tau=tau, decay_input=False, v_reset=None, detach_reset=True,
                              surrogate_function=surrogate.Sigmoid(), step_mode="m")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(layer.Linear(n_inputs, hidden, step_mode="m"), lif(),
                                      layer.Linear(hidden, hidden, step_mode="m"), lif(),
                                      layer.Linear(hidden, n_classes, step_mode="m"))

        def forward(self, x):
            functional.reset_net(self)
            return self.body(x.transpose(0, 1)).amax(0)  # readout without leak: a close stand-in

    return Net()
