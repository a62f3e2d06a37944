"""Training records of a run folder: the loss terms of Eq. 8, ETHT's tau and xi, SAU's weights.

Read through :mod:`cdkd.engine.recorder` (``steps.csv`` per logged step, ``epochs.jsonl`` per
epoch): :func:`plot_training_curves` (notebooks 02, 03), :func:`plot_temperature` (Eq. 9-12),
:func:`plot_sau_weights` (Eq. 3-4, notebook 05).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cdkd.engine.recorder import read_epochs, read_steps
from cdkd.viz._style import STUDENT_COLOR, TEACHER_COLOR, NotebookFigure, finish_figure, note_axis


def _runs(run_dirs: Sequence[str | Path] | Mapping[str, str | Path] | str | Path) -> dict[str, Path]:
    """Normalise run folders to {label: path}; labels default to the folder names."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if isinstance(run_dirs, Mapping):
        return {str(label): Path(p) for label, p in run_dirs.items()}
    return {Path(p).name or str(p): Path(p) for p in run_dirs}


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (NaN-free input)."""
    if window <= 1 or values.size < 2:
        return values
    window = min(window, values.size)
    csum = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(values.size):
        lo = max(0, i + 1 - window)
        out[i] = (csum[i + 1] - csum[lo]) / (i + 1 - lo)
    return out


def _series(steps: dict[str, np.ndarray], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray] | None:
    """(x, y) of a column with NaN rows dropped, or None when the column is absent or empty."""
    if key not in steps:
        return None
    y = steps[key]
    xs = steps[x] if x in steps else np.arange(y.size, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(xs)
    if not ok.any():
        return None
    return xs[ok], y[ok]


CURVE_TITLES = {"task": "task loss L_ori", "feature": "feature loss L_fea (Eq. 5)",
                "logit": "logit loss L_logit (Eq. 7)", "loss": "total loss (Eq. 8)"}


def plot_training_curves(
    run_dirs: Sequence[str | Path] | Mapping[str, str | Path] | str | Path,
    keys: Sequence[str] = ("task", "feature", "logit"),
    smooth: int = 1,
    logy: bool = False,
    val_metric: str | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Loss terms of Eq. 8 over training steps, one panel per term, one line per run.

    ``task`` is L_ori, ``feature`` is alpha * L_fea (SAPE, Eq. 5), ``logit`` beta * L_logit (CCA,
    Eq. 7), as the engine records them; any other ``steps.csv`` column (``loss``, ``lr``) works too.
    A term a run did not record is skipped for that run, and a panel no run has says so.

    Args:
        run_dirs: run folders, or {label: folder}.
        keys: columns to plot.
        smooth: trailing moving-average window in logged steps (1 = raw).
        logy: logarithmic y axis.
        val_metric: a validation metric of ``epochs.jsonl`` (e.g. 'Mean' for PCKh, 'AP'): adds a last
            panel with its value after each validated epoch.
        save: optional output path.

    Returns:
        Figure with one axis per key (plus one for ``val_metric``).
    """
    runs = _runs(run_dirs)
    records = {label: read_steps(path) for label, path in runs.items()}
    panels = len(keys) + (val_metric is not None)
    fig = NotebookFigure(figsize=(4.2 * panels, 3.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, key in zip(axes, keys):
        plotted = 0
        for label, steps in records.items():
            series = _series(steps, key)
            if series is None:
                continue
            xs, ys = series
            ax.plot(xs, _smooth(ys, smooth), label=label, linewidth=1.2)
            plotted += 1
        ax.set_title(CURVE_TITLES.get(key, key), fontsize=10)
        ax.set_xlabel("step")
        if plotted:
            if logy:
                ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            note_axis(ax, f"'{key}' not recorded\nin {', '.join(records)}")
    if val_metric is not None:
        ax = axes[-1]
        ax.set_title(f"validation {val_metric}", fontsize=10)
        ax.set_xlabel("epoch")
        plotted = 0
        for label, path in runs.items():
            rows = [r for r in read_epochs(path) if val_metric in r.get("val", {})]
            if rows:
                metric = rows[-1]["val"].get("protocol", {}).get("metric", val_metric)
                ax.set_title(f"validation {metric if val_metric == 'main' else val_metric}", fontsize=10)
                ax.plot([r["epoch"] + 1 for r in rows], [r["val"][val_metric] for r in rows], marker="o", label=label)
                plotted += 1
        if plotted:
            ax.legend(fontsize=8)
        else:
            note_axis(ax, f"no validated epoch with '{val_metric}'\nin {', '.join(runs)}")
    return finish_figure(fig, save)


def plot_temperature(run_dir: str | Path, save: str | Path | None = None) -> Figure:
    """ETHT (Sec. III-B2, Eq. 9-12): the learned temperature tau and the reversal weight xi.

    Args:
        run_dir: a run folder with ``steps.csv`` (columns 'tau' and 'xi'; either may be absent).
        save: optional output path.

    Returns:
        Figure with 2 axes (tau, xi); a missing column leaves a note in its axis.
    """
    steps = read_steps(run_dir)
    fig = NotebookFigure(figsize=(9, 3.2), layout="constrained")
    axes = fig.subplots(1, 2)
    labels = {"tau": "temperature tau (Eq. 7, learned by ETHT)", "xi": "reversal weight xi (Eq. 12)"}
    for ax, key in zip(axes, ("tau", "xi")):
        series = _series(steps, key)
        ax.set_title(labels[key], fontsize=10)
        ax.set_xlabel("step")
        if series is None:
            note_axis(ax, f"'{key}' not recorded in {Path(run_dir).name}")
            continue
        ax.plot(*series, color=TEACHER_COLOR if key == "tau" else STUDENT_COLOR, linewidth=1.4)
    return finish_figure(fig, save)


def sau_columns(steps: Mapping[str, np.ndarray]) -> list[str]:
    """The ``sau_w<k>`` columns of a training record, in projector order."""
    found = [c for c in steps if c.startswith("sau_w") and c[5:].isdigit()]
    return sorted(found, key=lambda c: int(c[5:]))


def plot_sau_weights(run_dir: str | Path, save: str | Path | None = None) -> Figure:
    """SAU projector weights w_k (Eq. 3-4) over training, as a stacked area (they sum to one).

    Args:
        run_dir: a run folder with ``steps.csv`` holding ``sau_w0``, ``sau_w1``, ... (batch means of
            the softmax weights); a run without them gets a note instead.
        save: optional output path.

    Returns:
        Figure with one axis.
    """
    steps = read_steps(run_dir)
    columns = sau_columns(steps)
    fig = NotebookFigure(figsize=(6, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("SAU weights w_k over the projectors (Eq. 3-4)", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("weight")
    if not columns:
        note_axis(ax, f"no sau_w* columns in {Path(run_dir).name}/steps.csv\n(columns: {', '.join(steps)})")
        return finish_figure(fig, save)
    values = np.stack([steps[c] for c in columns])  # [K, N]
    xs = steps["step"] if "step" in steps else np.arange(values.shape[1], dtype=np.float64)
    ok = np.isfinite(values).all(axis=0) & np.isfinite(xs)
    ax.stackplot(xs[ok], values[:, ok], labels=[f"w{c[5:]}" for c in columns], alpha=0.85)
    ax.set_ylim(0, max(1.0, float(values[:, ok].sum(0).max(initial=1.0))))
    ax.legend(fontsize=8, loc="upper right")
    return finish_figure(fig, save)
