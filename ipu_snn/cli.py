"""``ipu-snn``: train, validate, evaluate and export from YAML configs.

User errors (a bad field, a missing file, an absent device: ipu_snn.errors.UserError)
print one clear message and exit with status 2; anything else is a bug in ipu_snn,
which prints its traceback and exits with status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
import warnings
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .errors import STORAGE_ERRNOS, UserError

EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
BUG_MESSAGE = ("[bold red]internal error[/]: the traceback above is a bug in ipu_snn, not a problem with the "
               "config or the data; please report it with the traceback")


def _number(low: float, high: float = math.inf, *, low_open: bool = False, what: str = "a number"):
    """An argparse type: a finite float in [low, high] (``low_open``: above low); argparse exits 2 naming the
    option otherwise."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    return parse


def output_file(path: str, option: str) -> Path:
    """The file an option names for writing: a UserError unless its folder exists and it is not a folder."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise UserError(f"{option} {out} is a folder; name the file to write")
    if not out.parent.is_dir():
        raise UserError(f"{option} {out}: the folder {out.parent} does not exist; create it or choose another path")
    return out


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

    p = sub.add_parser("plan", help="predict memory and time of each BPTT schedule and pick one")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--device", help="h100, h200, a100, cpu, ipu-mk2 (default: the config's device)")
    p.add_argument("--budget-gib", type=_number(0, low_open=True, what="a positive number of GiB"), help="local memory budget (default: the device's memory)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--plot", help="write a plot of memory against time per schedule to this file")
    p.add_argument("--density", type=_number(0, 1, what="a density between 0 and 1"), default=0.05,
                   help="input spike density of the inputs the CPU timing runs on (default 0.05)")
    p.add_argument("--no-measure", action="store_true",
                   help="cost the CPU from its spec instead of timing windows here (arithmetic only)")

    p = sub.add_parser("eval", help="evaluate a run's last checkpoint on its test split")
    p.add_argument("run_dir", help="a folder written by ipu-snn train")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    p.add_argument("--device", choices=("cpu", "cuda", "ipu-emulator"),
                   help="where to evaluate (default: the run's device; the host CPU for IPU runs)")
    p.add_argument("--plots", action="store_true", help="also (re)write the run folder's spikes.png (a raster of a "
                   "few test samples per layer) and rates.png (a firing-rate histogram per layer)")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="best: the best validation epoch's checkpoint, kept with training.keep_best")

    p = sub.add_parser("export", help="write a run's trained network in an exchange format (NIR)")
    p.add_argument("run_dir", help="a folder written by ipu-snn train")
    p.add_argument("--format", choices=("nir",), default="nir", help="nir: the Neuromorphic Intermediate "
                   "Representation (pip install 'ipu_snn[nir]'; docs/nir.md)")
    p.add_argument("--out", help="file to write (default: RUN_DIR/model.nir)")
    p.add_argument("--for", dest="peer", choices=("generic", "snntorch", "norse"), default="generic",
                   help="who reads the graph: generic (NIR as specified), snntorch (snnTorch 1.0's import_from_nir: "
                   "dt 1e-4, the readout a LIF that never spikes) or norse (Norse 1.1's from_nir: r folded into "
                   "the weights, dt 1e-3 unless --dt); docs/nir.md")
    p.add_argument("--dt", type=_number(0, low_open=True, what="a positive number of seconds"),
                   help="seconds per step the graph's time constants are written for (default: the peer's step, "
                   "else the run's data step)")
    p.add_argument("--keep-subtract-reset", action="store_true", help="write reset-by-subtraction layers as NIR LIF "
                   "(which resets to zero elsewhere), keeping the subtraction in metadata that ipu_snn reads back")
    return parser


def _export(args, console: Console) -> None:
    from .interop.nir import export_run

    out = export_run(Path(args.run_dir), output_file(args.out, "--out") if args.out else None, args.dt,
                     args.keep_subtract_reset, args.peer)
    console.print(f"wrote {out}")


def _train(args, console: Console) -> None:
    from .config import load_config
    from .training import train

    cfg = load_config(args.config, args.overrides)
    out = args.out if args.out is not None else cfg.out_dir or str(Path("runs") / Path(args.config).stem)
    train(cfg, out, resume=args.resume, console=console)


def _validate(args, console: Console) -> None:
    from .config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    header = ""
    if cfg.model.from_nir is not None:  # the layers and readout are the graph's: show them
        from .interop.nir import resolve_from_nir

        header = (f"# model.layers and model.readout read from {cfg.model.from_nir} (model.from_nir); this is the "
                  "config the run writes to config.yaml\n")
        cfg, _ = resolve_from_nir(cfg)
    console.print(header + dump_config(cfg), markup=False, highlight=False)


def _plan(args, console: Console) -> None:
    import json

    from .config import load_config
    from .data import input_shape
    from .devices import GiB, device_spec
    from .planner import check_fits, plan
    from .reporting import plan_table, plot_plan

    cfg = load_config(args.config, args.overrides)
    plot = output_file(args.plot, "--plot") if args.plot else None
    n_inputs, n_classes = input_shape(cfg.data)
    budget = int(args.budget_gib * GiB) if args.budget_gib else None
    device = args.device or cfg.device
    spec = device_spec(device)
    if spec.tiles:
        import ipu_snn.ipu  # noqa: F401  registers the IPU's tile planner with the planner
    # the bytes are arithmetic on shapes, checked before anything is measured or allocated
    check_fits(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, budget_bytes=budget)
    # the time is measured when the device is this machine's CPU (the calibration step, cached)
    calibration = None
    if spec.name == "cpu" and not args.no_measure:
        from .calibration import calibrate

        first = plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, budget_bytes=budget, compare_all=True)
        if first.fastest is not None:  # nothing is measured for a network that fits no schedule
            calibration = calibrate(cfg, n_inputs, n_classes, cfg.data.batch_size, args.density)
    result = plan(cfg, spec, n_inputs=n_inputs, n_classes=n_classes, budget_bytes=budget, compare_all=True,
                  costs=calibration.costs if calibration else None,
                  crossovers=calibration.crossovers if calibration else None)
    if plot is not None:
        plot_plan(plot, result)
    payload = result.to_json()
    payload["calibration"] = calibration.describe() if calibration else "none: costs from the device's spec"
    if result.chosen is not None:
        payload["run_plan"] = result.run_plan().to_json()
    if spec.tiles:
        from .ipu.options import micro_batch_size
        from .ipu.tile_planning import largest_steps_table, plan_for_config

        # the network op's graph of one replica (its micro-batch, as the IPU trainer plans it) under the chosen
        # schedule and window (the configured schedule's leanest where nothing fits), and how long a
        # sequence each schedule fits on one IPU
        micro = micro_batch_size(cfg, cfg.ipu.replication)
        micro_plan = result if micro == result.batch else None
        tile_plan = plan_for_config(cfg, n_inputs, n_classes, micro, spec, micro_plan, args.density)
        payload["tiles"] = graph_tiles(tile_plan, largest_steps_table(cfg, n_inputs, n_classes, micro))
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        console.print(plan_table(result))
        console.print(f"calibration: {payload['calibration']}", highlight=False)
        if result.chosen is not None:
            console.print(f"run plan: {result.run_plan().describe()}", highlight=False)
        if "tiles" in payload:
            console.print(tiles_lines(payload["tiles"]), highlight=False)


def graph_tiles(tile_plan, largest: dict) -> dict:
    """``plan``'s ``tiles`` section: the network op's graph count of the chosen time loop (every byte and
    time it reports is the graph's; ipu_snn.ipu.graph_plan) and ``largest_T`` from the graph's model."""
    graph = tile_plan.tiles
    loop = {"T": tile_plan.steps, "window": tile_plan.window, "windows": tile_plan.windows,
            "schedule": tile_plan.schedule}
    return {"source": "graph", "device": "ipu-mk2", "tiles_total": graph["tiles_total"],
            "used": graph["tiles_used"], "max_tile_bytes": graph["max_tile_bytes"],
            "tile_capacity_bytes": graph["tile_capacity_bytes"], "fits": graph["fits"],
            "fullest_tile": graph["fullest_tile"], "time_loop": loop,
            "streaming_memory": {"bytes": graph["streaming_bytes"], "capacity_bytes": graph["streaming_capacity_bytes"],
                                 "transfer_bytes": graph["graph"]["remote_bytes_moved"]},
            "time": graph["time"], "graph": dict(graph["graph"], optimizer_slots=graph["optimizer_slots"],
                                                 op_max_tile_bytes=graph["op_max_tile_bytes"]),
            "model_check": graph["model_check"], "refusal": tile_plan.refusal() or None, "largest_T": largest}


def tiles_lines(t: dict) -> str:
    """The tile plan of ``ipu-snn plan --device ipu-*`` in a few lines."""
    loop, memory = t["time_loop"], t["streaming_memory"]
    g = t["graph"]
    terms = ", ".join(f"{k[:-2]} {v * 1e3:,.2f}" for k, v in t["time"].items() if k != "total_s")
    lines = [f"tiles (the network op's graph): {loop['schedule']} over {loop['windows']} windows of "
             f"{loop['window']} steps; {t['used']} of {t['tiles_total']} tiles used, fullest "
             f"{t['max_tile_bytes'] / 1024:,.0f} KiB of {t['tile_capacity_bytes'] / 1024:.0f} KiB "
             f"({', '.join(x['name'] for x in t['fullest_tile']['largest'][:3])}); "
             f"{g['samples_per_pass']} samples per input-gradient pass",
             f"streaming memory: {memory['bytes'] / 2**20:,.1f} MiB of checkpoints, "
             f"{memory['transfer_bytes'] / 2**20:,.1f} MiB moved per iteration",
             f"predicted {t['time']['total_s'] * 1e3:,.1f} ms per iteration ({terms} ms), at a spike rate "
             f"of {g['spike_rate']}; a model, never run on an IPU"]
    if not t["fits"]:
        lines.append(t["refusal"])
    largest = t["largest_T"]
    lines.append(f"largest T on one {t['device']} (batch {largest['batch']}, by the graph's model): " + ", ".join(
        f"{name} {row['T']:,}{'+' if row['at_cap'] else ''}" + (f" ({row['vs_store_all']}x)" if row['vs_store_all']
                                                                 and name != "store_all" else "")
        for name, row in largest["schedules"].items()))
    return "\n".join(lines)


def _eval(args, console: Console) -> None:
    from .evaluate import evaluate_run

    from .reporting import metrics_lines

    loss, accuracy, metrics = evaluate_run(Path(args.run_dir).expanduser(), args.split, args.device,
                                           with_metrics=True, say=console.out, plots=args.plots,
                                           checkpoint=args.checkpoint)
    console.print(f"{args.split}: loss {loss:.4f}  accuracy {accuracy:.2%}")
    for line in metrics_lines(metrics):
        console.print(line, highlight=False)


COMMANDS = {"train": _train, "validate": _validate, "plan": _plan, "eval": _eval, "export": _export}


#: Line width when the output is not a terminal: logs are read in files and CI consoles, where a line
#: broken at 80 columns (rich's default there) only gets in the way.
LOG_WIDTH = 1000


def make_console(stderr: bool = False) -> Console:
    """A terminal's width on a terminal; elsewhere, whole lines (up to LOG_WIDTH)."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=LOG_WIDTH)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # overrides may come after options too (train c.yaml --out runs/x training.lr=1e-3)
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    console, errors = make_console(), make_console(stderr=True)
    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        # this package's warnings (a NIR graph read with a guess, ...) are for the user: one line, no source
        if category.__module__.startswith("ipu_snn"):
            errors.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
        else:
            default_show(message, category, filename, lineno, file, line)

    try:
        warnings.showwarning = show
        COMMANDS[args.command](args, console)
    except UserError as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            traceback.print_exc(file=sys.stderr)
            errors.print(BUG_MESSAGE, highlight=False, soft_wrap=True)
            return EXIT_BUG
        where = f"{exc.filename}: " if exc.filename else ""
        errors.print(f"[bold red]error:[/] {escape(where)}{escape(exc.strerror or str(exc))} (a storage fault, not "
                     "a bug: free space, raise the limit, or write elsewhere)", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted[/]: the last complete checkpoint is kept; continue with --resume")
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 (a broken internal contract: its traceback is the bug report)
        traceback.print_exc(file=sys.stderr)
        errors.print(BUG_MESSAGE, highlight=False, soft_wrap=True)
        return EXIT_BUG
    finally:
        warnings.showwarning = default_show
    return 0


if __name__ == "__main__":
    sys.exit(main())
