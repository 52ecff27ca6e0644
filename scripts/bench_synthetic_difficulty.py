"""How hard is the built-in synthetic dataset? Linear baselines on the tiny config's binning.

A channel histogram (counts per input over the whole sample) throws timing away;
a linear model on the full [T, channels] frame keeps it. The gap between the two
is what the classes' sweep order adds.

    python scripts/bench_synthetic_difficulty.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from benchlib import machine, machine_lines, write_json
from ipu_snn.config import load_config
from ipu_snn.data import load_splits


def stack(dataset):
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.tensor(ys)


def linear_accuracy(train_x, train_y, test_x, test_y, classes: int, epochs: int = 300) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    layer = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(layer(train_x), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        return (layer(test_x).argmax(1) == test_y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    cfg = load_config(args.config)
    splits = load_splits(cfg.data, cfg.training.seed)
    train_x, train_y = stack(splits.train)
    test_x, test_y = stack(splits.test)
    results = {
        "chance": 1.0 / splits.n_classes,
        "linear_on_channel_histogram": linear_accuracy(train_x.sum(1), train_y, test_x.sum(1), test_y, splits.n_classes),
        "linear_on_full_frame": linear_accuracy(train_x.flatten(1), train_y, test_x.flatten(1), test_y, splits.n_classes),
    }
    info = machine()
    write_json(args.out / "synthetic_difficulty.json", {"config": args.config, "machine": info, "test_accuracy": results})
    lines = [
        "# Synthetic dataset: linear baselines",
        "",
        f"Test accuracy of linear classifiers on the data of `{args.config}` "
        f"({len(train_y)} training samples, {len(test_y)} test samples, T={cfg.data.num_steps}, "
        f"{splits.n_inputs} inputs). A histogram of counts per channel ignores timing; the full frame keeps it.",
        "",
        *machine_lines(info),
        "",
        "| classifier | test accuracy |",
        "|---|---|",
        *[f"| {name.replace('_', ' ')} | {value:.1%} |" for name, value in results.items()],
        "",
    ]
    (args.out / "synthetic_difficulty.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
