"""Check ipu_snn.metrics against the neurobench package on the same network, weights and inputs.

Two steps, in two environments (neurobench pulls numba, tonic and more, so it stays out of ours):

    .venv/bin/python scripts/check_neurobench.py ours /tmp/nb_case.pt
    /tmp/venv_nb/bin/python scripts/check_neurobench.py neurobench /tmp/nb_case.pt

``ours`` builds a small recurrent network (some weights pruned to zero), evaluates it with
``ipu_snn.torch_driver.evaluate`` and a WorkloadTally, and saves weights, inputs and our metrics.
``neurobench`` rebuilds the same network in plain torch (one ``nn.Linear`` call per connection and step,
the spike nonlinearity registered as NeuroBench's activation module), runs NeuroBench's Benchmark with
its own metrics, and prints both side by side; it exits 1 if any differs. Its result is recorded in
docs/benchmarks/neurobench_check.md.
"""

from __future__ import annotations

import sys

import torch

STEPS, CHANNELS, HIDDEN, CLASSES = 40, 30, (24, 16), 5


def ours(path: str) -> None:
    from ipu_snn.config import validate_config
    from ipu_snn.metrics import WorkloadTally, static_metrics
    from ipu_snn.network import build_network
    from ipu_snn.torch_driver import evaluate

    layers = [{"type": "rlif", "size": HIDDEN[0], "beta": 0.9, "reset": "zero"},
              {"type": "lif", "size": HIDDEN[1], "beta": 0.85, "reset": "zero"}]
    cfg = validate_config({"model": {"layers": layers, "readout": {"beta": 0.9}}})
    torch.manual_seed(0)
    net = build_network(cfg.model, CHANNELS, CLASSES, 1e-3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net.layers[0].beta.uniform_(0.8, 0.95, generator=gen)
        net.layers[0].fc.weight.mul_(2.0)
        for w in (net.layers[0].fc.weight, net.layers[0].rec.weight, net.layers[1].fc.weight, net.readout.fc.weight):
            w[torch.rand(w.shape, generator=gen) < 0.2] = 0.0  # pruned connections count no operations
    x = (torch.rand(24, STEPS, CHANNELS, generator=gen) < 0.25).float()
    x[16:, 20:] *= torch.randint(1, 4, (8, STEPS - 20, CHANNELS), generator=gen).float()  # count steps: MACs
    y = torch.randint(0, CLASSES, (24,), generator=gen)
    dataset = list(zip(x, y))
    tally = WorkloadTally()
    evaluate(net, dataset, 8, torch.device("cpu"), tally=tally)
    with torch.no_grad():
        h, spikes = x.transpose(0, 1), []
        for layer in net.layers:
            h = layer(h)
            spikes.append(float(h.sum()))
    tensors = [(n, tuple(t.shape), True) for n, t in net.named_parameters()]
    tensors += [(n, tuple(t.shape), False) for n, t in net.named_buffers()]
    torch.save({"state": net.state_dict(), "x": x, "y": y, "metrics": tally.metrics(net.state_dict()),
                "static": static_metrics(net), "spikes": spikes, "tensors": tensors}, path)
    print(f"wrote {path}")


def neurobench(path: str) -> None:
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import Footprint, ParameterCount
    from neurobench.metrics.workload import ActivationSparsityByLayer, SynapticOperations
    from neurobench.models import TorchModel

    case = torch.load(path, weights_only=False)
    s = case["state"]

    def linear(key: str, bias: str | None) -> torch.nn.Linear:
        w = s[key].t()
        layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(w)
            if bias:
                layer.bias.copy_(s[bias])
        return layer

    class Fire(torch.nn.Module):
        """The spike nonlinearity, registered with NeuroBench as an activation module."""

        def forward(self, v):
            return (v > 1.0).float()

    class Net(torch.nn.Module):
        # the same network as plain torch, one nn.Linear call per connection and step, as NeuroBench's hooks
        # expect (snnTorch's RLeaky with reset to zero evaluates its recurrent weights twice per step)
        def __init__(self):
            super().__init__()
            self.fc0, self.rec0 = linear("layers.0.fc.weight", "layers.0.fc.bias"), linear("layers.0.rec.weight", None)
            self.fc1 = linear("layers.1.fc.weight", "layers.1.fc.bias")
            self.readout = linear("readout.fc.weight", "readout.fc.bias")
            self.fire0, self.fire1 = Fire(), Fire()

        def forward(self, x):
            batch = x.shape[0]
            v0, z0 = torch.zeros(batch, HIDDEN[0]), torch.zeros(batch, HIDDEN[0])
            v1, vr = torch.zeros(batch, HIDDEN[1]), torch.zeros(batch, CLASSES)
            trace = []
            for t in range(x.shape[1]):
                v0 = s["layers.0.beta"] * v0 + self.fc0(x[:, t]) + self.rec0(z0)
                z0 = self.fire0(v0)
                v0 = v0 * (1 - z0)
                v1 = s["layers.1.beta"] * v1 + self.fc1(z0)
                z1 = self.fire1(v1)
                v1 = v1 * (1 - z1)
                vr = s["readout.beta"] * vr + self.readout(z1)
                trace.append(vr)
            return torch.stack(trace).amax(0)

    net = Net()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(case["x"], case["y"]), batch_size=8)
    model = TorchModel(net)
    model.add_activation_module(Fire)
    bench = Benchmark(model, loader, [], [], [[], [SynapticOperations, ActivationSparsityByLayer]])
    result = bench.run(quiet=True)
    by_layer = result["ActivationSparsityByLayer"]

    # the static metrics' definitions, on a module holding exactly our parameters and buffers
    holder = torch.nn.Module()
    for i, (name, shape, is_param) in enumerate(case["tensors"]):
        value = torch.zeros(shape)
        holder.register_parameter(f"t{i}", torch.nn.Parameter(value)) if is_param else holder.register_buffer(f"t{i}", value)
    static = {"parameter_count": ParameterCount()(TorchModel(holder)), "footprint_bytes": Footprint()(TorchModel(holder))}

    ops = result["SynapticOperations"]
    sizes = [HIDDEN[0] * STEPS * len(case["x"]), HIDDEN[1] * STEPS * len(case["x"])]
    layer_sparsity = list(by_layer.values())
    rows = [
        ("synops_effective_acs", case["metrics"]["synops_effective_acs"], ops["Effective_ACs"]),
        ("synops_effective_macs", case["metrics"]["synops_effective_macs"], ops["Effective_MACs"]),
        ("synops_dense", case["metrics"]["synops_dense"], ops["Dense"]),
        ("activation_sparsity_layer0", case["metrics"]["activation_sparsity_layer0"], layer_sparsity[0]),
        ("activation_sparsity_layer1", case["metrics"]["activation_sparsity_layer1"], layer_sparsity[1]),
        ("activation_sparsity (spiking layers)", case["metrics"]["activation_sparsity"],
         sum(v * n for v, n in zip(layer_sparsity, sizes)) / sum(sizes)),
        ("parameter_count", case["static"]["parameter_count"], static["parameter_count"]),
        ("footprint_bytes", case["static"]["footprint_bytes"], static["footprint_bytes"]),
    ]
    print(f"{'metric':40s} {'ipu_snn':>16s} {'neurobench':>16s}  match")
    worst = 0.0
    for name, a, b in rows:
        rel = abs(a - b) / max(abs(b), 1e-300)
        worst = max(worst, rel)
        print(f"{name:40s} {a:16.6f} {b:16.6f}  {'yes' if rel < 1e-9 else f'NO (rel {rel:.2e})'}")
    print(f"NeuroBench's activation layers: {list(by_layer)}")
    print(f"largest relative difference: {worst:.2e}")
    sys.exit(0 if worst < 1e-9 else 1)


if __name__ == "__main__":
    {"ours": ours, "neurobench": neurobench}[sys.argv[1]](sys.argv[2])
