"""One training iteration of W1 and W1-FF, side by side: the plain loop, torch.compile, snnTorch,
SpikingJelly and ipu_snn's fused loop and BPTT engine.

    python scripts/bench_training_step.py --device cpu     # reduced sizes, about a minute on 2 cores
    python scripts/bench_training_step.py --device cuda    # W1 (docs/workloads.md): B=128, 1024 neurons, T=1000

One iteration is forward + backward + Adam step. Reported per contender: median ms per iteration,
peak memory (CUDA: the allocator's peak above the model and batch; CPU: not measured) and the
bytes kept for backward per neuron-step (every tensor autograd saves, less the parameters and
the input batch; for the BPTT engine, its peak of checkpoints and taped steps). Peers that are not installed (`pip install 'ipu_snn[peers]'`) are listed as
skipped. Results go to docs/benchmarks/training_step_<device>.json; the markdown doc
(docs/benchmarks/training_step.md) and its plot are rebuilt from every device's JSON present.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchlib import machine, time_ms, write_json
from ipu_snn.bptt import revolve
from ipu_snn.config import ModelConfig
from ipu_snn.network import build_network
from ipu_snn.saved_bytes import saved_bytes

DOCS = Path("docs/benchmarks")
N_INPUTS, N_CLASSES, DENSITY = 700, 20, 0.05


class Skip(Exception):
    """A contender that cannot run here, with the reason."""


def model_config(workload: str, hidden: int, **extra) -> ModelConfig:
    if workload == "W1":
        layers = [{"type": "rlif", "size": hidden, "beta": 0.95}]
    else:  # W1-FF
        layers = [{"type": "lif", "size": hidden, "beta": 0.95}, {"type": "lif", "size": hidden, "beta": 0.95}]
    return ModelConfig.model_validate({"layers": layers, "readout": {"beta": 0.95}, **extra})


def ipu_snn_model(workload, hidden, steps, **extra) -> nn.Module:
    net = build_network(model_config(workload, hidden, **extra), N_INPUTS, N_CLASSES, dt=1e-3)
    return _Logits(net)


class _Logits(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).logits


def plain(workload, hidden, steps):
    return ipu_snn_model(workload, hidden, steps, fused=False)


def plain_compiled(workload, hidden, steps):
    # Compiling the whole model would unroll all T steps into one graph; compiling each layer's
    # step fuses its element-wise update and keeps the Python loop, which is how it is used.
    model = plain(workload, hidden, steps)
    for layer in [*model.net.layers, model.net.readout]:
        layer.step = torch.compile(layer.step, dynamic=False)
    return model


def fused(workload, hidden, steps):
    return ipu_snn_model(workload, hidden, steps)


def fused_fp16(workload, hidden, steps):
    return ipu_snn_model(workload, hidden, steps, fused_saved_dtype="float16")


def engine_revolve(workload, hidden, steps):
    # The engine's binomial checkpointing with sqrt(T) slots: memory no longer grows with T.
    slots = math.ceil(math.sqrt(steps))
    net = build_network(model_config(workload, hidden, fused=False), N_INPUTS, N_CLASSES, dt=1e-3,
                        schedule=lambda t: revolve(t, slots))
    return _Logits(net)


def snntorch_model(workload, hidden, steps):
    try:
        import snntorch as snn
        from snntorch import surrogate
    except ImportError as error:
        raise Skip(f"snntorch not installed ({error})") from None
    grad = surrogate.fast_sigmoid(slope=10)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            sizes = [N_INPUTS] + [hidden] * (1 if workload == "W1" else 2)
            self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
            if workload == "W1":
                self.lifs = nn.ModuleList([snn.RLeaky(beta=0.95, linear_features=hidden, spike_grad=grad)])
            else:
                self.lifs = nn.ModuleList(snn.Leaky(beta=0.95, spike_grad=grad) for _ in sizes[1:])
            self.readout = nn.Linear(hidden, N_CLASSES)
            self.li = snn.Leaky(beta=0.95, reset_mechanism="none")

        def forward(self, x):  # x: [B, T, inputs]
            states = [lif.reset_mem() for lif in self.lifs]
            mem_out = self.li.reset_mem()
            trace = []
            for x_t in x.unbind(1):
                h = x_t
                for i, (fc, lif) in enumerate(zip(self.fcs, self.lifs)):
                    if workload == "W1":
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


def spikingjelly_model(workload, hidden, steps):
    if workload != "W1-FF":
        raise Skip("SpikingJelly has no fused recurrent LIF; measured on W1-FF only")
    try:
        from spikingjelly.activation_based import layer, neuron, surrogate
    except ImportError as error:
        raise Skip(f"spikingjelly not installed ({error})") from None
    tau = 1.0 / (1.0 - 0.95)  # decay_input=False: v <- v - v / tau + x, i.e. beta = 1 - 1 / tau

    def lif():
        return neuron.LIFNode(tau=tau, decay_input=False, v_reset=None, detach_reset=True,
                              surrogate_function=surrogate.Sigmoid(), step_mode="m")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(layer.Linear(N_INPUTS, hidden, step_mode="m"), lif(),
                                      layer.Linear(hidden, hidden, step_mode="m"), lif(),
                                      layer.Linear(hidden, N_CLASSES, step_mode="m"))

        def forward(self, x):
            from spikingjelly.activation_based import functional

            functional.reset_net(self)
            return self.body(x.transpose(0, 1)).amax(0)  # readout without leak: a close stand-in

    return Net()


CONTENDERS: dict[str, Callable] = {
    "plain loop": plain,
    "plain loop, torch.compile per step": plain_compiled,
    "snnTorch 1.0": snntorch_model,
    "SpikingJelly 2.0 (multi-step)": spikingjelly_model,
    "ipu_snn fused (float32 saved)": fused,
    "ipu_snn fused (float16 saved)": fused_fp16,
    "ipu_snn engine, revolve sqrt(T) slots": engine_revolve,
}


def measure(name, build, workload, args, device) -> dict:
    torch.manual_seed(0)
    try:
        model = build(workload, args.hidden, args.steps).to(device)
    except Skip as reason:
        return {"contender": name, "workload": workload, "skipped": str(reason)}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = (torch.rand(args.batch, args.steps, N_INPUTS, device=device) < DENSITY).float()
    y = torch.randint(0, N_CLASSES, (args.batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def iteration():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    iteration()  # first call: kernels built, compiled, autotuned
    first_s = time.perf_counter() - start
    peak_mib = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        iteration()
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    timing = time_ms(iteration, warmup=1, repeats=args.repeats, sync=sync)
    neuron_steps = args.batch * args.steps * args.hidden * (1 if workload == "W1" else 2)
    scan = getattr(getattr(model, "net", None), "last_scan", None)
    if scan is not None:  # the engine holds checkpoints and taped steps itself, not as autograd's saved tensors
        per_step = scan.peak_local_bytes / neuron_steps
    else:
        per_step = saved_bytes(lambda: model(x), [*model.parameters(), x]) / neuron_steps
    row = {"contender": name, "workload": workload, "ms_per_iter": timing["median_ms"], "min_ms": timing["min_ms"],
           "first_call_s": first_s, "peak_mib": peak_mib, "saved_bytes_per_neuron_step": per_step}
    print(f"  {workload:6} {name:40} {timing['median_ms']:9.1f} ms  {per_step:6.2f} B/neuron-step"
          + (f"  {peak_mib:8.0f} MiB" if peak_mib is not None else ""), flush=True)
    return row


def render(out: Path) -> str:
    """The markdown doc from every training_step_<device>.json present, and its plot."""
    lines = ["# Training step: fused time loop against the plain loop and peers", "",
             "One iteration = forward + backward + Adam step. `B/neuron-step`: bytes kept for backward per neuron "
             "and time step (what autograd saves, parameters and the input batch excluded; for the BPTT engine its "
             "peak of checkpoints and taped steps). Made by "
             "`scripts/bench_training_step.py`; each section says the command, device and date.", ""]
    results = sorted(out.glob("training_step_*.json"))
    for path in results:
        data = json.loads(path.read_text())
        w = data["workload"]
        lines += [f"## {data['device'].upper()}: B={w['batch']}, hidden {w['hidden']}, T={w['steps']}", "",
                  *machine_lines_from(data), "",
                  "| workload | contender | ms/iter | vs plain loop | peak MiB | B/neuron-step |",
                  "|---|---|---|---|---|---|"]
        for workload in ("W1", "W1-FF"):
            rows = [r for r in data["rows"] if r["workload"] == workload]
            base = next((r["ms_per_iter"] for r in rows if r["contender"] == "plain loop" and "skipped" not in r), None)
            for r in rows:
                if "skipped" in r:
                    lines.append(f"| {workload} | {r['contender']} | skipped: {r['skipped']} | | | |")
                    continue
                speed = f"{base / r['ms_per_iter']:.2f}x" if base else ""
                peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "n/a"
                lines.append(f"| {workload} | {r['contender']} | {r['ms_per_iter']:.1f} | {speed} | {peak} | "
                             f"{r['saved_bytes_per_neuron_step']:.2f} |")
        lines.append("")
    plot(out, results)
    lines += ["![ms per iteration and saved bytes](training_step.png)", ""]
    notes = out / "training_step_notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    return "\n".join(lines)


def machine_lines_from(data: dict) -> list[str]:
    info = data["machine"]
    device = info.get("gpu") or f"{info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads)"
    return [f"- Command: `{data['command']}`", f"- Device: {device}", f"- torch {info['torch']}",
            f"- Date: {info['date']}"]


def plot(out: Path, results: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 3.2 * max(1, len(results))), squeeze=False)
    for (ax_t, ax_m), path in zip(axes, results):
        data = json.loads(path.read_text())
        rows = [r for r in data["rows"] if "skipped" not in r]
        labels = [f"{r['workload']}: {r['contender']}" for r in rows]
        ax_t.barh(labels, [r["ms_per_iter"] for r in rows], color="tab:blue")
        ax_t.set_xscale("log")
        ax_t.set_xlabel("ms per iteration (log)")
        ax_t.set_title(f"{data['device']}: time")
        ax_m.barh(labels, [r["saved_bytes_per_neuron_step"] for r in rows], color="tab:orange")
        ax_m.set_xlabel("bytes kept per neuron-step")
        ax_m.set_title(f"{data['device']}: saved state")
        ax_m.set_yticklabels([])
        for ax in (ax_t, ax_m):
            ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "training_step.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--only", nargs="*", help="contender names to run (substring match)")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    full = args.device == "cuda"
    args.batch = args.batch or (128 if full else 32)
    args.hidden = args.hidden or (1024 if full else 256)
    args.steps = args.steps or (1000 if full else 200)
    args.repeats = args.repeats or (10 if full else 5)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU here")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32, as the baselines of docs/workloads.md
        torch.backends.cudnn.allow_tf32 = False

    print(f"B={args.batch}, hidden {args.hidden}, T={args.steps}, {args.device}")
    rows = []
    for workload in ("W1", "W1-FF"):
        for name, build in CONTENDERS.items():
            if args.only and not any(s in name for s in args.only):
                continue
            rows.append(measure(name, build, workload, args, device))
    payload = {"device": args.device, "command": " ".join(["python"] + sys.argv), "machine": machine(),
               "workload": {"batch": args.batch, "hidden": args.hidden, "steps": args.steps, "inputs": N_INPUTS,
                            "density": DENSITY, "classes": N_CLASSES, "repeats": args.repeats},
               "rows": rows}
    write_json(args.out / f"training_step_{args.device}.json", payload)
    doc = render(args.out)
    (args.out / "training_step.md").write_text(doc)
    print()
    print(doc)


if __name__ == "__main__":
    main()
