"""The study's results as figures: the main metric per arm and against training length (notebook
04) and the weight sweep (06).

Numbers come from :mod:`cdkd.report` (``bar_table``, ``paper_table``, ``curve_runs``, ``share_sweep``);
these functions only draw them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cdkd.viz._style import STUDENT_COLOR, NotebookFigure, finish_figure, note_axis


def plot_share_sweep(points: Sequence[Mapping[str, Any]], ylabel: str = "PCKh@0.5 Mean",
                     save: str | Path | None = None) -> Figure:
    """The distillation-weight sweep (beyond the paper): the main metric against the distillation
    terms' share of the student's update, from :func:`cdkd.report.share_sweep`.

    Args:
        points: dicts with 'target' (requested share per term; 0 = the baseline), 'measured' (the
            feature + logit share measured in the last epoch) and 'metric'.
        ylabel: the metric's name.
        save: optional output path.

    Returns:
        Figure with one axis: the metric at each measured total share, labelled with the requested
        per-term share.
    """
    fig = NotebookFigure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    if not points:
        note_axis(ax, "no sweep runs found")
        return finish_figure(fig, save)
    x = [100.0 * float(p["measured"]) for p in points]
    y = [float(p["metric"]) for p in points]
    ax.plot(x, y, "o-", color=STUDENT_COLOR, linewidth=1.4)
    for xi, yi, p in zip(x, y, points):
        ax.annotate(f"S={float(p['target']):g}", (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.axhline(y[0] if float(points[0]["target"]) == 0 else np.nan, color="0.5", linestyle=":", linewidth=1,
               label="baseline (no distillation)")
    ax.set_xlabel("distillation share of the update, measured (%)")
    ax.set_ylabel(ylabel)
    ax.set_title("CDKD (paper form): distillation weight sweep, one seed", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return finish_figure(fig, save)


def _mean_std_n(value: Any, where: str) -> tuple[float, float, int | None]:
    """(mean, std, number of seeds or None) of a table cell: a number, (mean, std) or (mean, std, n)."""
    if isinstance(value, (tuple, list)) and len(value) in (2, 3):
        n = int(value[2]) if len(value) == 3 else None
        return float(value[0]), float(value[1]), n
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value), math.nan, None
    raise ValueError(f"{where}: expected a number, (mean, std) or (mean, std, n), got {value!r}")


def _bar_text(mean: float, n: int | None) -> str:
    return f"{mean:.2f}" + (f" (n={n})" if n is not None else "")


def _paper_panel(ax: Axes, points: list[tuple[float, float, Any]], columns: Sequence[str], title: str,
                 ylabel: str, xlabel: str, annotate: bool) -> None:
    """The paper's numbers on their own axis: one diamond per (arm, column), in the arm's colour."""
    xs, ys, colours = zip(*points)
    ax.scatter(xs, ys, marker="D", s=36, c=list(colours), edgecolors="black", linewidths=0.6, zorder=3,
               label=title)
    if annotate:  # two values of a column: outwards to the left and right, else staggered upwards
        columns_of = [int(round(x)) for x in xs]
        for x, y, col in zip(xs, ys, columns_of):
            mates = sorted(xx for xx, c in zip(xs, columns_of) if c == col)
            j = mates.index(x)
            if len(mates) == 2:
                offset, ha = ((-4, 5), "right") if j == 0 else ((4, 5), "left")
            else:
                offset, ha = (0, 7 + 9 * (j % 2)), "center"
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=offset, ha=ha, va="bottom",
                        fontsize=7, fontstyle="italic")
    ax.set_xticks(np.arange(len(columns)), list(columns))
    ax.set_xlim(-0.6, len(columns) - 0.4)
    ax.set_ylim(0, max(ys) * 1.15)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)


def plot_metric_bars(
    table: Mapping[str, Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    reference: Mapping[str, Mapping[str, float]] | None = None,
    ylabel: str = "",
    zoom: bool = False,
    annotate: bool = True,
    reference_label: str = "paper (its own data)",
    spread_label: str = "error bars: sample std over seeds",
    save: str | Path | None = None,
    title: str | None = None,
    baseline: str = "SimCC (baseline)",
    xlabel: str | None = None,
) -> Figure:
    """Grouped bars of our results (mean +- std over seeds), the paper's numbers in a panel of their own.

    One group per column (a resolution such as '64x64', or a metric such as 'Mean'), one bar per row
    label (an arm, e.g. 'SimCC (baseline)', 'CDKD (paper)'), the ``baseline`` row first. Each bar has
    its mean and its number of seeds written in it (``11.13 (n=6)``; above it when the bar is too short).
    The paper's numbers (Tables I-X) are on their own axis to the right, as diamonds in the colour of
    the arm they belong to: they are an order of magnitude away from ours on other data, and on one
    axis they would squash our bars. Reference entries without a bar are not drawn.

    Args:
        table: {label: {column: (mean, std, n), (mean, std) or mean}}; a missing column leaves a gap.
        columns: columns to show, in order (default: all, in first-seen order).
        reference: {label: {column: paper value}}.
        ylabel: y axis label (the metric).
        zoom: start our y axis near the smallest value instead of 0 (the default 0 keeps bar
            heights proportional to the values).
        annotate: write each mean (and n) in its bar and each paper value beside its marker.
        reference_label: title of the paper's panel.
        spread_label: the explanation of the error bars.
        save: optional output path.
        title: the figure's title (default: the metric by arm and column).
        baseline: the row drawn first when the table has it.
        xlabel: x axis label (default: 'student input resolution' for 'NxN' columns, else 'metric').

    Returns:
        Figure whose first axis holds our bars (one BarContainer per label, in drawing order); with
        reference values a second axis holds one PathCollection of diamonds labelled ``reference_label``.
    """
    if not table:
        raise ValueError("plot_metric_bars needs a non-empty table")
    if columns is None:
        columns = list(dict.fromkeys(c for row in table.values() for c in row))
    labels = sorted(table, key=lambda label: label != baseline)  # stable: the baseline first, then as given
    cells = {(label, col): _mean_std_n(table[label][col], f"table['{label}']['{col}']")
             for label in labels for col in columns if col in table[label]}
    width = 0.8 / len(labels)
    positions = np.arange(len(columns))
    paper = [(label, col) for label in labels for col in columns
             if reference and col in reference.get(label, {}) and (label, col) in cells]
    fig = NotebookFigure(figsize=(max(6.0, 1.3 * len(columns) * max(1, len(labels)) ** 0.5 + 3.5), 4.8),
                         layout="constrained")
    if paper:
        ax, ax_ref = fig.subplots(1, 2, gridspec_kw={"width_ratios": (2.4, 1)})
    else:
        ax, ax_ref = fig.add_subplot(), None
    shown: list[float] = []
    bars: list[tuple] = []  # (x, mean, err, n, colour), annotated once the axis range is known
    ref_points: list[tuple[float, float, Any]] = []
    for i, label in enumerate(labels):
        values = [cells.get((label, col), (math.nan, math.nan, None)) for col in columns]
        means = [v[0] for v in values]
        errs = np.nan_to_num(np.asarray([v[1] for v in values]), nan=0.0)
        xs = positions - 0.4 + width * (i + 0.5)
        container = ax.bar(xs, means, width=width * 0.92, yerr=errs, capsize=3, label=label, error_kw={"linewidth": 1})
        colour = container.patches[0].get_facecolor()
        shown += [m + e for m, e in zip(means, errs) if np.isfinite(m)]
        bars += [(x, m, e, v[2], colour) for x, m, e, v in zip(xs, means, errs, values) if np.isfinite(m)]
        ref_points += [(x, float(reference[label][col]), colour) for x, col in zip(xs, columns)
                       if (label, col) in paper]
    ax.set_xticks(positions, list(columns))
    is_res = all(str(c).count("x") == 1 and str(c).replace("x", "").isdigit() for c in columns)
    xlabel = xlabel if xlabel is not None else "student input resolution" if is_res else "metric"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    seeds = sorted({n for *_, n, _ in bars if n is not None})
    ax.set_title("ours: bar = mean over seeds" + (" (n = seeds)" if seeds else "") + f"\n{spread_label}", fontsize=9)
    if shown:
        hi = max(shown)
        if zoom:
            lo = min(shown)
            pad = max(0.15 * (hi - lo), 0.5)
            ax.set_ylim(max(0.0, lo - 2 * pad), hi + 1.5 * pad)
        else:
            ax.set_ylim(0, hi * 1.15)
    lo, hi = ax.get_ylim()
    if annotate:
        for x, mean, err, n, colour in bars:
            text = _bar_text(mean, n)
            if mean - lo > (0.1 + 0.035 * len(text)) * (hi - lo):  # fits inside: at its base, white
                ax.annotate(text, (x, lo + 0.02 * (hi - lo)), ha="center", va="bottom", fontsize=8, color="white",
                            fontweight="bold", rotation=90)
            else:  # a short bar: above its error bar, in the bar's colour
                ax.annotate(text, (x, mean + err), textcoords="offset points", xytext=(0, 3), ha="center",
                            va="bottom", fontsize=7, color=colour, fontweight="bold", rotation=90)
                ax.set_ylim(lo, max(hi, (mean + err) * 1.35))
    if ax_ref is not None:
        _paper_panel(ax_ref, ref_points, columns, reference_label, ylabel, xlabel, annotate)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(labels), 2), fontsize=8)
    span = "" if not seeds else f" ({seeds[0]} seeds per bar)" if len(seeds) == 1 else \
        f" ({seeds[0]}-{seeds[-1]} seeds per bar)"
    fig.suptitle(title if title is not None else f"{ylabel or 'main metric'} by arm, our runs{span}", fontsize=11)
    return finish_figure(fig, save)


def plot_length_curve(runs: Sequence[Mapping[str, Any]], column: str = "Mean", ylabel: str = "PCKh@0.5 Mean",
                      arms: Sequence[str] = ("SimCC (baseline)", "CDKD (paper)"),
                      save: str | Path | None = None) -> Figure:
    """The main metric against training length, one panel per student resolution: each arm's mean
    over seeds at each number of epochs, error bars the sample std over seeds, the number of seeds
    under each length's tick (``n=5``; ``n=5/3`` when the arms differ, in legend order), and a dotted
    line at the length the study's own runs trained (records marked ``in_study``). ``runs``: the run
    records of :func:`cdkd.report.curve_runs` (``label``, ``resolution``, ``config.train.epochs``,
    ``metrics``)."""
    by_res: dict[int, dict[str, dict[int, list[float]]]] = {}
    study: dict[int, set[int]] = {}
    for r in runs:
        if r["label"] in arms and column in r["metrics"]:
            epochs = int(r["config"]["train"]["epochs"])
            by_res.setdefault(int(r["resolution"]), {}).setdefault(r["label"], {}).setdefault(epochs, []).append(
                float(r["metrics"][column]))
            if r.get("in_study"):
                study.setdefault(int(r["resolution"]), set()).add(epochs)
    panels = max(len(by_res), 1)
    fig = NotebookFigure(figsize=(4.6 * panels, 3.9), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if not by_res:
        note_axis(axes[0], "no curve runs (reproduce --curve-epochs)")
        return finish_figure(fig, save)
    for ax, (res, curves) in zip(axes, sorted(by_res.items())):
        lengths = sorted({e for points in curves.values() for e in points})
        drawn = [a for a in arms if a in curves]
        for i, arm in enumerate(drawn):
            points = curves[arm]
            xs = sorted(points)
            means = [float(np.mean(points[e])) for e in xs]
            stds = [float(np.std(points[e], ddof=1)) if len(points[e]) > 1 else 0.0 for e in xs]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=f"C{i}", label=arm)
        for e in sorted(study.get(res, ())):
            ax.axvline(e, color="0.5", linestyle=":", linewidth=1, zorder=0,
                       label=f"the study's length ({e} epochs)")
        ticks = []
        for e in lengths:
            counts = [len(curves[a].get(e, ())) for a in drawn]
            ticks.append(f"{e}\nn={counts[0]}" if len(set(counts)) == 1 else f"{e}\nn=" + "/".join(map(str, counts)))
        ax.set_xticks(lengths, ticks)
        ax.set_xlabel("training epochs (n = seeds)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{res}x{res} students", fontsize=10)
        handles, labels = ax.get_legend_handles_labels()  # the arms first, the study's length last
        order = sorted(range(len(labels)), key=lambda k: labels[k].startswith("the study's"))
        ax.legend([handles[k] for k in order], [labels[k] for k in order], fontsize=8, loc="upper left")
    fig.suptitle(f"{ylabel} against training length (mean ± sample std over seeds)", fontsize=10)
    return finish_figure(fig, save)
