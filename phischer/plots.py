"""PNG plots for the fine-tuning workflow: tokens per example, and loss per training step.

matplotlib is the optional `plot` extra, so it is imported inside the functions. Figures are
drawn with matplotlib's object-oriented API on an Agg canvas and never through pyplot (the
way matplotlib's docs advise for servers): no GUI backend can be picked, no global figure
list grows in a long-running process, and there is no figure left open to close.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from phischer.printing import plural

INSTALL_HINT = "plots need matplotlib: pip install -e '.[plot]'"
# 800 x 450 pixels: readable in a terminal image viewer and in a README.
WIDTH_IN, HEIGHT_IN, DPI = 8.0, 4.5, 100
# When the per-example limit is this many times the longest example, a linear axis would
# squash every bar against zero (65,536 vs a few hundred tokens): use a log axis instead.
LOG_AXIS_RATIO = 4


class PlotError(ValueError):
    """A plot cannot be drawn or written; str() is one line saying why."""


class LossSeries(NamedTuple):
    """Loss per step; None where a step has no value (validation runs less often)."""

    steps: list[int]
    train_loss: list[float | None]
    valid_loss: list[float | None] | None


@dataclass(frozen=True)
class Plotted:
    """What a plot function drew: the file, each series as drawn, and the vertical lines."""

    path: Path
    series: dict[str, tuple[list[float], list[float]]]  # label -> (x, y) as drawn
    markers: dict[str, float] = field(default_factory=dict)  # label -> x of a vertical line
    legend: list[str] = field(default_factory=list)
    xscale: str = "linear"


def require_matplotlib() -> None:
    """Fail early, in one line, when the plot extra is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError(INSTALL_HINT) from None


def _axes() -> tuple[Any, Any]:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Any, path: Path) -> Path:
    from phischer.atomic import atomic_files

    path = Path(path)
    try:
        # Whole or not at all: a run stopped mid-save (Ctrl-C, `kill`) left a cut PNG.
        with atomic_files(path, mode="wb") as (fh,):
            # format="png" whatever the name: `--plot out` must not become a PDF or an error.
            fig.savefig(fh, format="png", dpi=DPI)
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _legend(ax: Any) -> list[str]:
    legend = ax.legend(loc="best", fontsize="small")
    return [text.get_text() for text in legend.get_texts()]


def token_histogram(
    tokens_per_example: Sequence[int], limit: int, path: Path, title: str
) -> Plotted:
    """Histogram of tokens per example with the model's limit, median and p95 marked."""
    from phischer.dataset_check import percentile, whole

    values = [int(v) for v in tokens_per_example]
    if not values:
        raise PlotError("no examples to plot")
    fig, ax = _axes()
    import numpy as np

    lo, hi = min(values), max(values)
    log = limit >= LOG_AXIS_RATIO * hi and lo > 0
    if log:
        # numpy's "auto" bin rule applied to log10(tokens): even bars on the log axis.
        logs = np.log10(values)
        edges = 10 ** np.histogram_bin_edges(logs, bins="auto" if hi > lo else 1)
        # 10 ** log10(129) can come back as 128.99999999999997, which would drop the
        # longest example from the last bin: pin the outer edges to the data.
        edges[0], edges[-1] = min(edges[0], lo), max(edges[-1], hi)
        ax.set_xscale("log")
    else:
        edges = np.histogram_bin_edges(values, bins="auto" if hi > lo else 1)
    n = len(values)
    counts, bin_edges, _ = ax.hist(values, bins=edges, color="#4C72B0", label=plural(n, "example"))
    median, p95 = statistics.median(values), percentile(values, 0.95)
    over = sum(v > limit for v in values)
    markers = {
        "median": float(median),
        "p95": float(p95),
        "limit": float(limit),
    }
    ax.axvline(median, color="#55A868", linestyle="--", label=f"median {whole(median):,}")
    ax.axvline(p95, color="#DD8452", linestyle=":", linewidth=2, label=f"p95 {whole(p95):,}")
    ax.axvline(
        limit,
        color="#C44E52",
        linewidth=2,
        label=f"limit {limit:,} tokens: {plural(over, 'example')} over",
    )
    if log:
        ax.set_xlim(lo / 1.5, max(limit, hi) * 1.5)
    else:
        ax.set_xlim(min(lo, limit) * 0.95, max(hi, limit) * 1.05)
    ax.set_xlabel("tokens per example" + (" (log scale)" if log else ""))
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    legend = _legend(ax)
    out = _save(fig, path)
    return Plotted(
        path=out,
        series={"examples": ([float(e) for e in bin_edges], [float(c) for c in counts])},
        markers=markers,
        legend=legend,
        xscale="log" if log else "linear",
    )


def _points(
    steps: Sequence[int], values: Sequence[float | None]
) -> tuple[list[float], list[float]]:
    pairs = [
        (float(s), float(v))
        for s, v in zip(steps, values, strict=True)
        if v is not None and math.isfinite(float(v))
    ]
    return [s for s, _ in pairs], [v for _, v in pairs]


def loss_curve(
    steps: Sequence[int],
    train_loss: Sequence[float | None],
    valid_loss: Sequence[float | None] | None,
    path: Path,
    title: str,
) -> Plotted:
    """Training (and validation, where given) loss against step; None values are skipped."""
    if len(train_loss) != len(steps) or (valid_loss is not None and len(valid_loss) != len(steps)):
        raise PlotError("loss values and steps differ in length")
    train = _points(steps, train_loss)
    valid = _points(steps, valid_loss) if valid_loss is not None else ([], [])
    if not train[0] and not valid[0]:
        raise PlotError("no loss values to plot")
    fig, ax = _axes()
    from matplotlib.ticker import MaxNLocator

    lines = []
    if train[0]:
        (line,) = ax.plot(*train, color="#4C72B0", linewidth=1.2, label="training loss")
        lines.append(line)
    if valid[0]:
        # Validation runs every few steps (OpenAI) or once at the end (local): mark each one.
        (line,) = ax.plot(
            *valid, color="#DD8452", marker="o", markersize=4, label="validation loss"
        )
        lines.append(line)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    legend = _legend(ax)
    out = _save(fig, path)
    series = {
        line.get_label(): (
            [float(x) for x in line.get_xdata()],
            [float(y) for y in line.get_ydata()],
        )
        for line in lines
    }
    return Plotted(path=out, series=series, legend=legend)
