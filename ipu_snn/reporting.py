"""What a run leaves behind for the researcher: metrics.csv, summary.json, curves.png, spikes.png, rates.png."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rich.progress import ProgressColumn
from rich.text import Text

from .files import replace_atomically


def rate_text(rate: float) -> str:
    """A throughput with three significant digits below 100 (0.456, 12.3), whole numbers above."""
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def percent(value: float | None) -> str:
    """An accuracy as a percentage; "n/a" where there is none (no validation split)."""
    return "n/a" if value is None else f"{value:.1%}"


class RateColumn(ProgressColumn):
    """samples/s of a progress task (its ``rate`` field), as ``rate_text`` writes it."""

    def render(self, task) -> Text:
        return Text(f"{rate_text(task.fields.get('rate', 0.0))} samples/s")


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    replace_atomically(path, buf.getvalue().encode())


def read_metrics_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(f)]


def write_summary(path: Path, summary: dict) -> None:
    replace_atomically(path, (json.dumps(summary, indent=2) + "\n").encode())


def metrics_lines(metrics: dict) -> list[str]:
    """The NeuroBench-style metrics (ipu_snn.metrics) as lines for a terminal."""
    lines = [f"{metrics['parameter_count']:,} parameters, footprint {metrics['footprint_bytes']:,} bytes"]
    if "activation_sparsity" in metrics:
        layers = sorted(k for k in metrics if k.startswith("activation_sparsity_layer"))
        per_layer = ", ".join(f"layer {k.removeprefix('activation_sparsity_layer')} {metrics[k]:.3f}" for k in layers)
        lines.append(f"activation sparsity {metrics['activation_sparsity']:.3f} ({per_layer})")
        lines.append(f"synaptic operations per sample: dense {metrics['synops_dense']:,.0f}, effective ACs "
                     f"{metrics['synops_effective_acs']:,.0f}, effective MACs {metrics['synops_effective_macs']:,.0f}")
    return lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # runs headless on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    replace_atomically(path, buf.getvalue())


def plot_curves(path: Path, rows: list[dict]) -> None:
    """Loss and accuracy against epoch, train and validation side by side."""
    plt = _pyplot()

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "--s")):
        if any(r.get(f"{split}_loss") is not None for r in rows):
            ax_loss.plot(epochs, [r.get(f"{split}_loss") for r in rows], style, label=split)
            ax_acc.plot(epochs, [r.get(f"{split}_accuracy") for r in rows], style, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


#: Test samples drawn in spikes.png, and the most whose spikes make the rates of rates.png.
RASTER_SAMPLES = 3
RATE_SAMPLES = 64


def record_activity(model, dataset, samples: int = RASTER_SAMPLES, rate_samples: int = RATE_SAMPLES,
                    batch: int = 16) -> tuple[list, list, list]:
    """Run ``model`` (a SpikingNetwork) on the first samples of ``dataset`` without gradients: the spikes
    of each layer on the first ``samples`` ([samples, T, n] bool arrays), their labels, and each layer's
    per-neuron spikes per step over the first ``rate_samples`` ([n] arrays)."""
    import torch

    frames = dataset.as_dense() if hasattr(dataset, "as_dense") else dataset
    device = next(model.parameters()).device
    n = min(len(frames), rate_samples)
    rasters, labels, totals, steps = None, [], None, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch):
            items = [frames[i] for i in range(start, min(n, start + batch))]
            x = torch.stack([item[0] for item in items]).to(device, torch.float32).transpose(0, 1)
            h, spikes = x, []
            for layer in model.layers:
                h = layer(h)
                spikes.append(h)
            sums = [z.sum((0, 1)).double().cpu().numpy() for z in spikes]
            totals = sums if totals is None else [a + b for a, b in zip(totals, sums)]
            steps += x.shape[0] * x.shape[1]
            if rasters is None:
                keep = min(samples, x.shape[1])
                rasters = [z[:, :keep].transpose(0, 1).cpu().numpy() > 0 for z in spikes]
                labels = [int(item[1]) for item in items[:keep]]
    model.train(was_training)
    return rasters, labels, [t / max(steps, 1) for t in totals]


def plot_spikes(path: Path, rasters: list, labels: list, dt: float) -> None:
    """A raster per layer (rows) and test sample (columns): a dot per spike, time against neuron."""
    plt = _pyplot()
    n_layers, n_samples = len(rasters), rasters[0].shape[0]
    fig, axes = plt.subplots(n_layers, n_samples, figsize=(3.6 * n_samples, 2.4 * n_layers + 0.6), squeeze=False,
                             sharex=True)
    for i, layer in enumerate(rasters):
        for j in range(n_samples):
            ax = axes[i][j]
            t, neuron = layer[j].nonzero()
            ax.scatter(t * dt * 1e3, neuron, s=1.5, marker="|" if len(t) < 5000 else ".", color="k", linewidths=0.6)
            ax.set(ylim=(-0.5, layer.shape[2] - 0.5), xlim=(0, layer.shape[1] * dt * 1e3))
            if i == 0:
                ax.set_title(f"test sample {j} (class {labels[j]})", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"layer {i}\nneuron", fontsize=9)
            if i == n_layers - 1:
                ax.set_xlabel("time (ms)", fontsize=9)
            ax.text(0.99, 0.98, f"{layer[j].mean():.3f} spikes/step", transform=ax.transAxes, ha="right", va="top",
                    fontsize=7, color="tab:blue", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_rates(path: Path, rates: list, dt: float, samples: int) -> None:
    """A histogram per layer of its neurons' firing rates (Hz) over ``samples`` test samples."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(rates), figsize=(max(4.5, 3.8 * len(rates)), 3.4), squeeze=False)
    for i, layer in enumerate(rates):
        ax = axes[0][i]
        hz = np.asarray(layer) / dt
        silent = int((hz == 0).sum())
        ax.hist(hz, bins=min(40, max(5, len(hz) // 4)), color="tab:blue", alpha=0.8)
        ax.axvline(hz.mean(), color="k", linestyle="--", linewidth=1, label=f"mean {hz.mean():.1f} Hz")
        ax.set(xlabel="firing rate (Hz)", ylabel="neurons" if i == 0 else None,
               title=f"layer {i}: {len(hz)} neurons, {silent} silent")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"firing rates over {samples} test samples", fontsize=10)
    fig.tight_layout()
    _save_figure(fig, path)


def write_activity_plots(out_dir: Path, model, dataset, dt: float) -> list[Path]:
    """spikes.png and rates.png of ``model`` on the first test samples of ``dataset``, into ``out_dir``."""
    rasters, labels, rates = record_activity(model, dataset)
    written = [out_dir / "spikes.png", out_dir / "rates.png"]
    plot_spikes(written[0], rasters, labels, dt)
    plot_rates(written[1], rates, dt, min(len(dataset), RATE_SAMPLES))
    return written


def plan_table(plan):
    """A rich table of a BPTT plan: one row per schedule, the choice marked."""
    from rich.table import Table

    table = Table(title=f"BPTT plan on {plan.device}: T={plan.T}, batch {plan.batch}, "
                        f"budget {plan.budget_bytes / 2**30:.2f} GiB; time {plan.costs_source}")
    columns = ("", "strategy", "schedule", "window", "kept MiB", "peak MiB", "off-chip MiB", "predicted ms", "fits")
    for column in columns:
        # names fold onto a second line in a narrow terminal rather than lose their ends
        table.add_column(column, justify="left" if column in ("strategy", "schedule") else "right",
                         overflow="fold")
    for s in plan.strategies:
        table.add_row("*" if s.name == plan.choice else "", s.name, s.schedule, f"{s.windows} x {s.window}",
                      f"{s.local_bytes / 2**20:,.1f}", f"{s.peak_bytes / 2**20:,.0f}",
                      f"{s.offchip_bytes / 2**20:,.1f}", f"{s.predicted_s * 1e3:,.1f}",
                      "yes" if s.fits else "[red]no[/]")
    if plan.choice is None:
        table.caption = (f"the configured schedule does not fit; the fastest that does is {plan.fastest}"
                         if plan.fastest else "nothing fits: a smaller batch or a shorter T would")
    return table


def place_labels(ax, points: list[tuple[float, float, str]], fontsize: int = 8) -> list:
    """Label points without overlap: points at the same place share one label (names joined by " = "),
    and a label that would cover an earlier one moves up until it does not, with a line to its point."""
    groups: dict[tuple[str, str], list] = {}
    for x, y, name in points:
        groups.setdefault((f"{x:.4g}", f"{y:.4g}"), []).append((x, y, name))
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()  # the axes' limits and scales as they will be drawn
    renderer = fig.canvas.get_renderer()
    placed, labels = [], []
    inside = ax.get_window_extent(renderer)
    for members in sorted(groups.values(), key=lambda m: (m[0][0], m[0][1])):
        x, y = members[0][0], members[0][1]
        text = " = ".join(name for _, _, name in members)
        for step in range(60):
            side = (1, -1, 0)[step % 3]  # right of the point, left of it, or centred above it
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(6 * side, 5 + 11 * (step // 3)),
                                ha=("center", "left", "right")[side], fontsize=fontsize,
                                arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6} if step > 2 else None)
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)  # the text alone, not its line to the point
            if box.x0 >= inside.x0 and box.x1 <= inside.x1 and not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        else:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=fontsize)
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)
        placed.append(box)
        labels.append(label)
    return labels


def plot_plan(path: Path, plan) -> None:
    """Predicted local memory against predicted time, one point per schedule; schedules predicted alike
    share a label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in plan.strategies:
        ax.scatter(s.predicted_s, s.peak_bytes / 2**20, marker="o" if s.fits else "x",
                   s=80 if s.name == plan.choice else 30)
    ax.axhline(plan.budget_bytes / 2**20, color="grey", linestyle="--", label="budget")
    ax.set(xlabel="predicted time per iteration (s)", ylabel="predicted local memory (MiB)", yscale="log",
           title=f"{plan.device}: T={plan.T}, batch {plan.batch}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    place_labels(ax, [(s.predicted_s, s.peak_bytes / 2**20, s.name + (" *" if s.name == plan.choice else ""))
                      for s in plan.strategies])
    _save_figure(fig, path)


class TensorBoardLog:
    """Optional scalars for TensorBoard; the package is an extra, checked at start-up."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, row: dict, epoch: int) -> None:
        for key, value in row.items():
            if key != "epoch" and value is not None:
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
