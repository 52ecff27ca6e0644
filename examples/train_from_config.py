"""The project's training loop from Python: a config dict, a loss and rate bounds from the config, a summary back.

    python examples/train_from_config.py RUN_FOLDER [--epochs N]
"""

import argparse
import json

import ipu_snn

CONFIG = {
    "model": {"layers": [{"type": "rlif", "size": 60, "tau": 0.1, "learn_decay": True}],
              "readout": {"tau": 0.1, "reduce": "mean"}},
    "data": {"dataset": "synthetic", "steps": 40, "channel_pooling": 10, "batch_size": 64,
             "synthetic": {"n_train": 600, "n_test": 200}},
    "training": {"epochs": 3, "lr": 0.005, "loss": "count_ce", "keep_best": True,
                 "rate_regularization": [{"layer": 0, "lower": 0.005, "upper": 0.1, "upper_weight": 10.0}]},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the run folder to write")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = ipu_snn.load_config(CONFIG, [f"training.epochs={args.epochs}"])
    summary = ipu_snn.train(cfg, out=args.out)
    print(json.dumps({k: summary[k] for k in ("epochs", "val_accuracy", "test_accuracy", "test_loss")}))


if __name__ == "__main__":
    main()
