"""CPU baseline: ms per training iteration of a small W1 network.

Small W1 (docs/workloads.md): 700 Bernoulli inputs at 5% density, one recurrent LIF layer,
LI readout of 20 classes, Adam; one iteration is forward + backward + optimizer step.

    python scripts/bench_cpu_baseline.py            # B=32, hidden 256, T=200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from benchlib import machine, machine_lines, time_ms, write_json
from ipu_snn.config import ModelConfig
from ipu_snn.network import build_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = ModelConfig.model_validate({"layers": [{"type": "rlif", "size": args.hidden, "tau": 0.02}],
                                      "readout": {"tau": 0.02}})
    model = build_network(cfg, n_inputs=700, n_classes=20, dt=1e-3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = (torch.rand(args.batch, args.steps, 700) < 0.05).float()
    y = torch.randint(0, 20, (args.batch,))

    def iteration():
        loss = F.cross_entropy(model(x).logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def forward_only():
        with torch.no_grad():
            model(x)

    info = machine()
    result = {"workload": {"batch": args.batch, "hidden": args.hidden, "steps": args.steps, "inputs": 700,
                           "density": 0.05, "classes": 20},
              "machine": info,
              "train_iteration": time_ms(iteration, repeats=args.repeats),
              "forward_no_grad": time_ms(forward_only, repeats=args.repeats)}
    write_json(args.out / "cpu_baseline.json", result)
    it, fw = result["train_iteration"], result["forward_no_grad"]
    per_step_us = it["median_ms"] * 1e3 / args.steps
    lines = [
        "# CPU baseline: small W1",
        "",
        f"Small W1: 700 inputs (Bernoulli, 5%), recurrent LIF {args.hidden}, LI readout 20, "
        f"B={args.batch}, T={args.steps}, fp32, Adam. Plain PyTorch loop over time (the `store_all` path).",
        "",
        *machine_lines(info),
        "",
        "| measurement | median ms | min ms | max ms |",
        "|---|---|---|---|",
        f"| train iteration (forward + backward + Adam) | {it['median_ms']:.1f} | {it['min_ms']:.1f} | {it['max_ms']:.1f} |",
        f"| forward only, no grad | {fw['median_ms']:.1f} | {fw['min_ms']:.1f} | {fw['max_ms']:.1f} |",
        "",
        f"That is {per_step_us:.0f} µs per time step of a training iteration, "
        f"median of {it['repeats']} iterations after 2 warm-up ones.",
        "",
    ]
    (args.out / "cpu_baseline.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
