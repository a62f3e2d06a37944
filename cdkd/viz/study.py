"""The study's results as figures: the main metric per arm (notebook 04) and the weight sweep (06).

Numbers come from :mod:`cdkd.report` (``bar_table``, ``paper_table``, ``share_sweep``); these
functions only draw them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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


def _mean_std(value: Any, where: str) -> tuple[float, float]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return float(value[0]), float(value[1])
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value), math.nan
    raise ValueError(f"{where}: expected a number or (mean, std), got {value!r}")


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
) -> Figure:
    """Grouped bars of our results (mean +- std over seeds) with the paper's numbers as markers.

    One group per column (a metric, e.g. PCKh Mean or AP), one bar per row label (a method or
    setting, e.g. 'SimCC 64x64', 'CDKD 64x64'); a black diamond marks the paper's value for the
    same (label, column) where ``reference`` has one (Tables I-X), with the value written beside it
    in italics. Our means are written inside the bars, so a number never sits above a paper marker
    and reads as the paper's (a bar too short to hold its number gets it above, in its own
    colour, upright). The caption under the axis says what the error bars are and what the
    markers are. Reference entries without a bar are not drawn.

    Args:
        table: {label: {column: (mean, std) or mean}}; a missing column leaves a gap.
        columns: columns to show, in order (default: all, in first-seen order).
        reference: {label: {column: paper value}}.
        ylabel: y axis label.
        zoom: start the y axis near the smallest value instead of 0 (the default 0 keeps bar
            heights proportional to the values).
        annotate: write each mean inside its bar and each paper value beside its marker.
        reference_label: legend label of the markers.
        spread_label: the caption's explanation of the error bars.
        save: optional output path.

    Returns:
        Figure with one axis; one BarContainer per label; the reference markers are one
        PathCollection labelled ``reference_label``.
    """
    if not table:
        raise ValueError("plot_metric_bars needs a non-empty table")
    if columns is None:
        columns = list(dict.fromkeys(c for row in table.values() for c in row))
    labels = list(table)
    width = 0.8 / len(labels)
    fig = NotebookFigure(figsize=(max(5.5, 1.3 * len(columns) * max(1, len(labels)) ** 0.5 + 2.5), 4.2),
                         layout="constrained")
    ax = fig.add_subplot()
    shown: list[float] = []
    ref_x, ref_y = [], []
    bars: list[tuple] = []  # (x, means, errors, colour) per label, annotated once the axis range is known
    positions = np.arange(len(columns))
    for i, label in enumerate(labels):
        means, stds = [], []
        for col in columns:
            if col in table[label]:
                mean, std = _mean_std(table[label][col], f"table['{label}']['{col}']")
            else:
                mean, std = math.nan, math.nan
            means.append(mean)
            stds.append(std)
        xs = positions - 0.4 + width * (i + 0.5)
        errs = np.nan_to_num(np.asarray(stds), nan=0.0)
        ax.bar(xs, means, width=width * 0.92, yerr=errs, capsize=3, label=label, error_kw={"linewidth": 1})
        shown += [v + e for v, e in zip(means, errs) if np.isfinite(v)]
        if annotate:
            bars.append((xs, means, errs, ax.containers[-1].patches[0].get_facecolor()))
        if reference and label in reference:
            for x, col, mean in zip(xs, columns, means):
                if col in reference[label] and np.isfinite(mean):
                    ref_x.append(x)
                    ref_y.append(float(reference[label][col]))
    if ref_x:
        ax.scatter(ref_x, ref_y, marker="D", s=30, color="black", zorder=4, label=reference_label)
        if annotate:
            for x, y in zip(ref_x, ref_y):
                ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(5, 0), ha="left", va="center",
                            fontsize=7, fontstyle="italic")
        shown += ref_y
    ax.set_xticks(positions, list(columns))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    caption = "bars: our mean (written in the bar); " + spread_label
    if ref_x:
        caption += f"; \u25c6 {reference_label}, value in italics"
    ax.set_xlabel(caption, fontsize=8)
    if shown:
        hi = max(shown)
        if zoom:
            lo = min(shown)
            pad = max(0.15 * (hi - lo), 0.5)
            ax.set_ylim(max(0.0, lo - 2 * pad), hi + 1.5 * pad)
        else:
            ax.set_ylim(0, hi * 1.08)
    lo, hi = ax.get_ylim()
    for xs, means, errs, colour in bars:
        for x, mean, err in zip(xs, means, errs):
            if not np.isfinite(mean):
                continue
            if mean - lo > 0.2 * (hi - lo):  # inside a tall bar, at its base (clear of the error bar), white
                ax.annotate(f"{mean:.2f}", (x, lo + 0.03 * (hi - lo)), ha="center", va="bottom", fontsize=8,
                            color="white", fontweight="bold", rotation=90)
            else:  # a short bar: above its error bar, in the bar's colour
                ax.annotate(f"{mean:.2f}", (x, mean + err), textcoords="offset points", xytext=(0, 3), ha="center",
                            va="bottom", fontsize=7, color=colour, fontweight="bold", rotation=90)
    return finish_figure(fig, save)
