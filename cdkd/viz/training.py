"""Training records of a run folder: the loss terms of Eq. 8, ETHT's tau and xi, SAU's weights.

Read through :mod:`cdkd.engine.recorder` (``steps.csv`` per logged step, ``epochs.jsonl`` per
epoch): :func:`plot_training_curves` (notebooks 02, 03), :func:`plot_temperature` (Eq. 9-12),
:func:`plot_sau_weights` (Eq. 3-4, notebook 05).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

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
CURVE_UNITS = {"task": "L_ori", "feature": "L_fea (before alpha)", "logit": "L_logit (before beta)",
               "feature_weighted": "alpha * L_fea", "logit_weighted": "beta * L_logit", "loss": "L_total (Eq. 8)",
               "lr": "learning rate", "tau": "tau", "xi": "xi"}


def _validation_panel(ax: Axes, runs: dict[str, Path], val_metric: str, colors: dict[str, str]) -> dict[str, float]:
    """The validation metric after each validated epoch, on an axis of the runs' whole epochs, in
    each run's colour; returns {label: last value} for the shared legend."""
    ax.set_xlabel("epoch")
    ax.set_ylabel(val_metric)
    last: dict[str, float] = {}
    validated: set[int] = set()
    last_epoch = 1
    name = val_metric
    for label, path in runs.items():
        epochs = read_epochs(path)
        last_epoch = max([last_epoch, *(int(r["epoch"]) + 1 for r in epochs if "epoch" in r)])
        rows = [r for r in epochs if val_metric in r.get("val", {})]
        if not rows:
            continue
        metric = rows[-1]["val"].get("protocol", {}).get("metric", val_metric)
        name = metric if val_metric == "main" else val_metric
        xs, ys = [r["epoch"] + 1 for r in rows], [float(r["val"][val_metric]) for r in rows]
        ax.plot(xs, ys, marker="o", color=colors[label], linewidth=1.2)
        validated.update(xs)
        last[label] = ys[-1]
    ax.set_ylabel(name)
    when = f" (validated at epoch {min(validated)} only)" if len(validated) == 1 else ""
    ax.set_title(f"validation {name}{when}", fontsize=10)
    ax.set_xlim(0.5, last_epoch + 0.5)  # whole epochs 1..E: a single validation is a point at its epoch
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not last:
        note_axis(ax, f"no validated epoch with '{val_metric}'\nin {', '.join(runs)}")
    return last


def plot_training_curves(
    run_dirs: Sequence[str | Path] | Mapping[str, str | Path] | str | Path,
    keys: Sequence[str] = ("task", "feature", "logit"),
    smooth: int = 1,
    logy: bool = False,
    val_metric: str | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Loss terms of Eq. 8 over training steps, one panel per term, one line per run.

    ``task`` is L_ori, ``feature`` L_fea (SAPE, Eq. 5) and ``logit`` L_logit (CCA, Eq. 7) before their
    weights alpha and beta, as the engine records them (``feature_weighted`` / ``logit_weighted`` are
    alpha * L_fea and beta * L_logit); any other ``steps.csv`` column (``loss``, ``lr``) works too.
    A term a run did not record is skipped for that run, and a panel no run has says so.

    Args:
        run_dirs: run folders, or {label: folder}.
        keys: columns to plot.
        smooth: trailing moving-average window in logged steps (1 = raw).
        logy: logarithmic y axis.
        val_metric: a validation metric of ``epochs.jsonl`` (e.g. 'Mean' for PCKh, 'AP', or 'main' for
            the protocol's main metric): adds a last panel with its value after each validated epoch,
            on an axis of the runs' whole epochs (1..E), each run's last value in the shared legend
            below the panels (one colour per run in every panel).
        save: optional output path.

    Returns:
        Figure with one axis per key (plus one for ``val_metric``).
    """
    runs = _runs(run_dirs)
    records = {label: read_steps(path) for label, path in runs.items()}
    colors = {label: f"C{i % 10}" for i, label in enumerate(runs)}  # one colour per run in every panel
    panels = len(keys) + (val_metric is not None)
    fig = NotebookFigure(figsize=(4.2 * panels, 3.6 + 0.25 * ((len(runs) + 3) // 4)), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, key in zip(axes, keys):
        plotted = 0
        for label, steps in records.items():
            series = _series(steps, key)
            if series is None:
                continue
            xs, ys = series
            ax.plot(xs, _smooth(ys, smooth), color=colors[label], linewidth=1.2)
            plotted += 1
        ax.set_title(CURVE_TITLES.get(key, key), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(CURVE_UNITS.get(key, key) + (f", mean of {smooth} logged steps" if smooth > 1 else ""))
        if plotted and logy:
            ax.set_yscale("log")
        if not plotted:
            note_axis(ax, f"'{key}' not recorded\nin {', '.join(records)}")
    last = _validation_panel(axes[-1], runs, val_metric, colors) if val_metric is not None else {}
    handles = [Line2D([], [], color=colors[label], linewidth=2) for label in runs]
    labels = [f"{label}: {last[label]:.2f}" if label in last else label for label in runs]
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(runs), 4), fontsize=8, frameon=False,
               title="run" + (" (last validation value)" if last else ""), title_fontsize=8)  # below the panels: no curve hidden
    return finish_figure(fig, save)


def tau_bounds(run_dir: str | Path) -> tuple[float, float] | None:
    """The range ETHT's tau can take in a run, [tau_min, tau_min + tau_range] (Eq. 9: tau = tau_min +
    tau_range * sigmoid(theta)), read from the run's ``config.yaml``; None without one."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        distill = (yaml.safe_load(path.read_text()) or {}).get("distill") or {}
        low, width = float(distill.get("tau_min", 1.0)), float(distill.get("tau_range", 20.0))
    except (yaml.YAMLError, AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: cannot read distill.tau_min / tau_range ({err})") from None
    return low, low + width


def plot_temperature(run_dir: str | Path, save: str | Path | None = None,
                     bounds: tuple[float, float] | None = None) -> Figure:
    """ETHT (Sec. III-B2, Eq. 9-12): the temperature tau and the reversal weight xi over training.

    tau is drawn against the whole range it can take, [tau_min, tau_min + tau_range] (from the run's
    ``config.yaml``, or ``bounds``), so a change of 0.02 looks like one; the first and last values and
    their difference are written in the panel and the title, which says whether tau moved by more than
    1% of its range. xi is drawn on [0, 1].

    Args:
        run_dir: a run folder with ``steps.csv`` (columns 'tau' and 'xi'; either may be absent).
        save: optional output path.
        bounds: (low, high) of tau's axis; None reads the run's range, or pads the values without one.

    Returns:
        Figure with 2 axes (tau, xi); a missing column leaves a note in its axis.
    """
    steps = read_steps(run_dir)
    bounds = bounds or tau_bounds(run_dir)
    fig = NotebookFigure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    name = Path(run_dir).name
    for ax, key in zip(axes, ("tau", "xi")):
        series = _series(steps, key)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title("temperature tau (Eq. 7, ETHT Eq. 9-11)" if key == "tau" else "reversal weight xi (Eq. 12)",
                     fontsize=10)
        if series is None:
            note_axis(ax, f"'{key}' not recorded in {name}")
            continue
        xs, ys = series
        ax.plot(xs, ys, color=TEACHER_COLOR if key == "tau" else STUDENT_COLOR, linewidth=1.4, marker=".")
        first, last = float(ys[0]), float(ys[-1])
        if key == "xi":
            ax.set_ylim(-0.05, 1.05)
            continue
        if bounds is not None:
            low, high = bounds
            range_text = f"range [{low:g}, {high:g}]"
        else:
            pad = max(1.0, 10 * float(ys.max() - ys.min()))
            low, high = float(ys.min()) - pad, float(ys.max()) + pad
            range_text = f"axis padded by {pad:.2g}"
        ax.set_ylim(low, high)
        for x, y, where in ((xs[0], first, "start"), (xs[-1], last, "end")):
            ax.annotate(f"{where} {y:.3f}", (x, y), textcoords="offset points", xytext=(0, 8 if where == "start" else -12),
                        ha="left" if where == "start" else "right", fontsize=8)
        delta = last - first
        share = abs(delta) / (high - low)
        verb = "moved" if share >= 0.01 else "barely moved"
        ax.set_title(f"temperature tau (Eq. 7, ETHT): {verb}, {first:.3f} -> {last:.3f}\n"
                     f"change {delta:+.3f} = {share:.1%} of its {range_text}", fontsize=9)
        fig.stated = {"tau_first": f"{first:.3f}", "tau_last": f"{last:.3f}", "tau_change": f"{delta:+.3f}"}
    fig.suptitle(f"ETHT in {name}", fontsize=10)
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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="projector", title_fontsize=8)
    return finish_figure(fig, save)
