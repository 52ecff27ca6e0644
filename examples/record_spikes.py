"""Per-step spikes and membranes of a layer, recorded from a forward pass.

    python examples/record_spikes.py [--samples N]
"""

import argparse
from pathlib import Path

import ipu_snn

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4, help="samples to record (default 4)")
    args = parser.parse_args(argv)

    cfg = ipu_snn.load_config(ROOT / "configs" / "tiny.yaml", ["data.synthetic.n_train=256", "data.synthetic.n_test=64"])
    net = ipu_snn.build(cfg)
    data = ipu_snn.load_data(cfg)
    x, y = next(ipu_snn.batches(data.test, args.samples, shuffle=False))
    out = net(x, record=["layer0"])
    rec = out.record["layer0"]
    spikes, membranes = rec.spikes, rec.membranes  # [T, B, N] each
    print(f"spikes {tuple(spikes.shape)}, membranes {tuple(membranes.shape)}")
    for b in range(args.samples):
        per_step = spikes[:, b].sum(1)
        print(f"sample {b} (class {int(y[b])}): {int(spikes[:, b].sum())} spikes, busiest step "
              f"{int(per_step.argmax())}, membrane range [{membranes[:, b].min():.2f}, {membranes[:, b].max():.2f}]")


if __name__ == "__main__":
    main()
