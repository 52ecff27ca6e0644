"""A loss of one's own, with differentiable firing rates, in one's own training loop.

The network still runs its windows under the configured BPTT schedule (here
``double``: off-chip checkpoints, windows recomputed in backward) with sparse
spike products where they pay (``model.sparse: auto``).

    python examples/custom_rate_loss.py [--batches N] [--target RATE]
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import ipu_snn

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="optimizer steps (default 40)")
    parser.add_argument("--target", type=float, default=0.02, help="target spikes per step of layer 0")
    args = parser.parse_args(argv)

    cfg = ipu_snn.load_config(ROOT / "configs" / "tiny.yaml", [
        "bptt.schedule=double", "bptt.window=10", "model.sparse=auto",
        "data.synthetic.n_train=512", "data.synthetic.n_test=64"])
    net = ipu_snn.build(cfg)
    data = ipu_snn.load_data(cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.training.lr)
    taps = ipu_snn.Taps(grad=True, neuron_layers=(0,))  # per-neuron rates of layer 0, with gradients

    step, epoch = 0, 0
    while step < args.batches:
        for x, y in ipu_snn.batches(data.train, cfg.data.batch_size, epoch=epoch):
            out = net(x, taps=taps)
            rates = out.neuron_rates[0]  # [B, N]: spikes per step of each neuron
            rate_loss = ((rates.mean(1) - args.target) ** 2).mean()
            loss = F.cross_entropy(out.logits, y) + 100.0 * rate_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 10 == 0 or step == args.batches - 1:
                print(f"step {step}: loss {loss.item():.4f}, layer 0 rate {rates.mean().item():.4f} "
                      f"(target {args.target}), schedule {net.last_scan.schedule}")
            step += 1
            if step == args.batches:
                break
        epoch += 1


if __name__ == "__main__":
    main()
