"""``ipu-snn``: train, validate and evaluate from YAML configs.

User errors (a bad field, a missing file, an absent device) print one clear
message and exit with status 2; only real bugs show a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipu-snn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="field overrides such as training.lr=3e-3 model.layers.0.size=256")
    p.add_argument("--out", help="run folder (default: the config's out_dir, else runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")

    p = sub.add_parser("validate", help="check a config and print it with every default filled in")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")

    p = sub.add_parser("eval", help="evaluate a run's last checkpoint on its test split")
    p.add_argument("run_dir", help="a folder written by ipu-snn train")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    return parser


def _train(args, console: Console) -> None:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.overrides)
    out = args.out or cfg.out_dir or str(Path("runs") / Path(args.config).stem)
    train(cfg, out, resume=args.resume, console=console)


def _validate(args, console: Console) -> None:
    from .config import dump_config, load_config

    console.print(dump_config(load_config(args.config, args.overrides)), markup=False, highlight=False)


def _eval(args, console: Console) -> None:
    from .evaluate import evaluate_run

    loss, accuracy = evaluate_run(Path(args.run_dir), args.split)
    console.print(f"{args.split}: loss {loss:.4f}  accuracy {accuracy:.2%}")


COMMANDS = {"train": _train, "validate": _validate, "eval": _eval}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    errors = Console(stderr=True)
    try:
        COMMANDS[args.command](args, console)
    except UserError as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted[/]: the last complete checkpoint is kept; continue with --resume")
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
