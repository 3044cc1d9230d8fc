"""`bertjax plot`: training and evaluation curves from a workdir's metrics.jsonl, in one image."""

import argparse
import io
import pathlib
from collections.abc import Sequence

from bertjax import outputs
from bertjax.errors import UserError
from bertjax.train import metrics_writer, workdir_io

# (title, y-axis label, train key, eval key or None, smooth); one panel each, in reading order.
PANELS = (
    ("Loss (MLM + NSP)", "loss", "loss", "eval_loss", True),
    ("MLM accuracy", "accuracy (masked tokens)", "mlm_accuracy", "eval_mlm_accuracy", True),
    ("NSP accuracy", "accuracy (sentence pairs)", "nsp_accuracy", "eval_nsp_accuracy", True),
    ("Learning rate", "learning rate", "learning_rate", None, False),  # exact: never smoothed
    ("Throughput", "tokens / s", "tokens_per_s", None, True),
    ("Gradient norm", "global L2 norm", "grad_norm", None, True),
)
_SMOOTH_FROM = 50  # with this many training points or more, draw a smoothed curve over the raw


def _series(records: Sequence[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    points = [
        (r["step"], r[key]) for r in records if r.get("split") == split and r.get(key) is not None
    ]
    return [s for s, _ in points], [v for _, v in points]


def smooth(values: Sequence[float]) -> list[float]:
    """Centred moving average over ~4% of the points: no lag (unlike an EMA), edges shrink."""
    import numpy as np

    half = max(1, len(values) // 50)
    kernel = np.ones(2 * half + 1)
    sums = np.convolve(np.asarray(values, dtype=float), kernel, mode="same")
    counts = np.convolve(np.ones(len(values)), kernel, mode="same")
    return (sums / counts).tolist()


def _format_value(key: str, value: float) -> str:
    return f"{value / 1e3:.1f}k" if key == "tokens_per_s" else f"{value:.4g}"


def _downstream_panel(ax, summary: dict) -> None:
    """finetune.downstream's comparison: a bar per starting point (its mean dev accuracy, a
    dot per seed) and a dashed line per baseline."""
    names = ("pretrained", "random_init")
    colors = ("tab:blue", "tab:gray")
    means = [summary["mean"][n] for n in names]
    ax.bar(range(2), means, color=colors, width=0.6)
    for x, name in enumerate(names):
        seeds = summary["accuracy"][name]
        ax.plot([x] * len(seeds), seeds, "o", color="black", markersize=5)
        ax.text(x, means[x] + 0.01, f"{means[x]:.3f}", ha="center", va="bottom", fontsize=11)
    for (name, value), style in zip(summary["baselines"].items(), ("--", ":"), strict=False):
        ax.axhline(value, color="tab:red", linestyle=style, linewidth=1.2,
                   label=f"{name.replace('_', ' ')} {value:.3f}")  # fmt: skip
    ax.set_xticks(range(2), ["pretrained", "random init"])
    ax.set_title("Downstream: word order", fontsize=13, fontweight="bold")
    ax.set_ylabel("dev accuracy (dots: seeds)")
    ax.set_ylim(0.4, 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)


def build_figure(records: Sequence[dict], title: str = "", downstream: dict | None = None):
    """Returns a matplotlib Figure (Agg canvas, no display) with one panel per PANELS entry,
    and one more for a `finetune.downstream` comparison when given.

    Training curves are lines (raw and faint, plus smoothed when long), evaluation results are
    dots joined by a line; each legend entry shows the last value. A panel without data says so.
    """
    from matplotlib import ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = 3 if downstream is None else 4
    fig = Figure(figsize=(5 * columns, 8.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, columns).ravel()
    if downstream is not None:
        _downstream_panel(axes[len(PANELS)], downstream)
        for ax in axes[len(PANELS) + 1 :]:
            ax.set_axis_off()
    for ax, (panel_title, ylabel, train_key, eval_key, smoothed) in zip(axes, PANELS):
        ax.set_title(panel_title, fontsize=13, fontweight="bold")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        drawn = False
        steps, values = _series(records, "train", train_key)
        if steps:
            last = f"last {_format_value(train_key, values[-1])}"
            if smoothed and len(values) >= _SMOOTH_FROM:
                ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
                ax.plot(
                    steps,
                    smooth(values),
                    color="tab:blue",
                    linewidth=1.8,
                    label=f"train (smoothed; {last})",
                )
            else:
                ax.plot(steps, values, color="tab:blue", linewidth=1.8, label=f"train ({last})")
            drawn = True
        if eval_key is not None:
            steps, values = _series(records, "eval", eval_key)
            if steps:
                ax.plot(
                    steps,
                    values,
                    "o-",
                    color="tab:orange",
                    linewidth=1.8,
                    markersize=5,
                    label=f"eval (last {_format_value(eval_key, values[-1])})",
                )
                drawn = True
        if not drawn:
            ax.text(
                0.5,
                0.5,
                "no data",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=12,
                color="gray",
            )
        else:
            ax.legend(loc="best", fontsize=10)
        if train_key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        if train_key == "tokens_per_s":
            ax.yaxis.set_major_formatter(ticker.EngFormatter())
            ax.set_ylim(bottom=0)  # a steady run looks flat, not like noise magnified
    if title:
        fig.suptitle(title, fontsize=14)
    return fig


def load_records(workdir: str | pathlib.Path) -> list[dict]:
    """Reads the workdir's metrics, turning a missing, empty or corrupt file into a UserError."""
    path = metrics_writer.metrics_path(workdir)
    try:
        records = metrics_writer.read_metrics(workdir)
    except FileNotFoundError:
        raise UserError(
            f"no metrics file at {path}: `bertjax train --workdir {workdir}` writes it"
        ) from None
    except ValueError as e:
        raise UserError(str(e)) from None
    if not records:
        raise UserError(f"{path} holds no metrics yet (the run has not logged a step)")
    return records


def plot_workdir(
    workdir: str | pathlib.Path, out: str | pathlib.Path, downstream: dict | None = None
):
    """Draws the workdir's curves (and a `finetune.downstream` comparison, when given) into
    `out` (format from the extension, e.g. .png); either may be local or a URL (gs://...).
    Returns the path written."""
    records = load_records(workdir)
    last = max(r["step"] for r in records)
    wd = workdir_io.path(workdir)
    name = wd.name if workdir_io.is_remote(workdir) else wd.resolve().name
    fig = build_figure(records, title=f"{name}: step {last}", downstream=downstream)
    out = workdir_io.path(out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in fig.canvas.get_supported_filetypes():
        raise UserError(f"--out {out} has an unsupported extension; use .png (or .svg, .pdf)")
    image = io.BytesIO()  # rendered here, written in one go: the same for a file and an object
    fig.savefig(image, format=fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if workdir_io.is_remote(out):
        out.write_bytes(image.getvalue())  # an object store writes an object whole anyway
    else:
        outputs.write_file(out, image.getvalue())
    return out


def register(subparsers) -> None:
    """Adds `bertjax plot`."""
    parser = subparsers.add_parser(
        "plot",
        help="draw loss, accuracy, learning-rate and throughput curves into a PNG",
        description=__doc__,
    )
    parser.add_argument("--workdir", required=True, help="training workdir with metrics.jsonl")
    parser.add_argument("--out", help="image to write (default: WORKDIR/metrics.png)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file (WORKDIR/metrics.png always is)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs `bertjax plot`."""
    if args.out and not workdir_io.is_remote(args.out):
        outputs.check_file(args.out, overwrite=args.overwrite)
    out = plot_workdir(args.workdir, args.out or workdir_io.path(args.workdir) / "metrics.png")
    print(f"wrote {out}")
    return 0
