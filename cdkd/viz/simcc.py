"""SimCC class distributions and the CCA merge (Sec. III-B1, Eq. 6-7; notebooks 05 and 07).

:func:`simcc_probabilities` is softmax(z / tau), optionally merged every m classes (Eq. 6), with the
package's own :func:`cdkd.distill.cca.merge_probs`; :func:`plot_simcc_distributions` draws the
teacher's distribution, its merge and the student's, with the value of Eq. 7 from
:func:`cdkd.distill.cca.cca_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from cdkd.distill.cca import cca_loss, merge_probs
from cdkd.viz._style import STUDENT_COLOR, TEACHER_COLOR, NotebookFigure, _numpy, finish_figure


def simcc_probabilities(logits: Any, tau: float = 1.0, merge_to: int | None = None) -> np.ndarray:
    """SimCC class probabilities softmax(z / tau) for plotting, optionally merged by CCA (Eq. 6).

    The softmax is torch's and the merge :func:`cdkd.distill.cca.merge_probs`, in float64; only the
    result becomes a numpy array.

    Args:
        logits: [..., C] logits (tensor, array or list).
        tau: temperature (Eq. 7); must be positive.
        merge_to: C_s: merge the C = m * C_s probabilities into C_s classes; None keeps all C.

    Returns:
        [..., C] or [..., C_s] float64 probabilities.
    """
    if tau <= 0:
        raise ValueError(f"temperature tau must be positive, got {tau}")
    z = torch.from_numpy(np.ascontiguousarray(_numpy(logits, "logits")))  # [..., C] float64
    probs = torch.softmax(z / tau, dim=-1)  # [..., C]
    if merge_to is not None:
        probs = merge_probs(probs, merge_to)  # [..., C_s]
    return probs.numpy()


def mass_window(probs: Sequence[tuple[np.ndarray, np.ndarray]], pad: float) -> tuple[float, float]:
    """Axis window holding all but 0.1% of each distribution's mass, padded (zoom on the peaks).

    Args:
        probs: (bin centres [C], probabilities [C]) pairs.
        pad: added on both sides, in the centres' unit.

    Returns:
        (low, high).
    """
    lo, hi = math.inf, -math.inf
    for centers, p in probs:
        cdf = np.cumsum(p) / max(p.sum(), 1e-12)
        first = int(np.searchsorted(cdf, 0.0005))
        last = int(np.searchsorted(cdf, 0.9995))
        lo = min(lo, centers[min(first, len(centers) - 1)])
        hi = max(hi, centers[min(last, len(centers) - 1)])
    return lo - pad, hi + pad


def plot_simcc_distributions(
    teacher_x_logits: Any,
    student_x_logits: Any,
    m: int,
    tau: float = 1.0,
    joint_name: str = "",
    teacher_y_logits: Any | None = None,
    student_y_logits: Any | None = None,
    split_ratio: float | None = None,
    xlim: str | tuple[float, float] | None = None,
    save: str | Path | None = None,
) -> Figure:
    """CCA (Sec. III-B1): teacher probabilities, their m-bin merge (Eq. 6) and the student's.

    Left panel: p^t = softmax(z^t / tau) over the teacher's C_t = 256*k classes. Right panel: the
    merged teacher p~t_j = sum of p^t over classes j*m .. j*m+m-1 (Eq. 6, bars) and the student's
    p^s = softmax(z^s / tau) over C_s = C_t / m classes (steps), the pair whose KL Eq. 7 takes
    (its value tau^2 * KL(p~t || p^s) is in the title).

    All panels share one axis in teacher-frame input pixels: SimCC class c of a k-split sits at
    pixel c / k, so teacher class i covers [(i - 0.5)/k, (i + 0.5)/k), student class j sits at
    j*m/k and covers m/k teacher pixels, and the merged bin j covers teacher classes j*m .. j*m+m-1,
    i.e. it is centred (m - 1) / (2k) teacher pixels right of student class j (visible as an offset
    between bars and steps). Without ``split_ratio`` the axis is in teacher classes (k taken as 1).

    Args:
        teacher_x_logits: [C_t] teacher x logits of one joint.
        student_x_logits: [C_s] student x logits of the same joint; C_t must equal m * C_s.
        m: merge factor (teacher size / student size, 8 for 32 -> 256, 4 for 64 -> 256).
        tau: temperature of both softmaxes (Eq. 7).
        joint_name: shown in the title.
        teacher_y_logits, student_y_logits: optional y logits; adds a second row.
        split_ratio: SimCC k, to label the axis in pixels.
        xlim: None zooms on the distributions' mass, 'full' shows the whole axis, or (lo, hi) pixels.
        save: optional output path.

    Returns:
        Figure with 2 axes per SimCC axis (2 for x only, 4 with y). The right panel's first bar
        container holds the merged teacher probabilities.
    """
    rows = [("x", teacher_x_logits, student_x_logits)]
    if (teacher_y_logits is None) != (student_y_logits is None):
        raise ValueError("give both teacher_y_logits and student_y_logits, or neither")
    if teacher_y_logits is not None:
        rows.append(("y", teacher_y_logits, student_y_logits))
    m = int(m)
    k = float(split_ratio) if split_ratio else 1.0
    unit = "input pixel (teacher frame)" if split_ratio else "teacher class index"

    fig = NotebookFigure(figsize=(11, 3.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False, sharex="row")
    for r, (axis, t_logits, s_logits) in enumerate(rows):
        zt = _numpy(t_logits, f"teacher_{axis}_logits").reshape(-1)  # [C_t]
        zs = _numpy(s_logits, f"student_{axis}_logits").reshape(-1)  # [C_s]
        if zt.size != m * zs.size:
            raise ValueError(f"CCA on the {axis} axis needs C_t = m * C_s; got C_t={zt.size}, m={m}, C_s={zs.size}")
        pt = simcc_probabilities(zt, tau)  # [C_t]
        ps = simcc_probabilities(zs, tau)  # [C_s]
        merged = simcc_probabilities(zt, tau, merge_to=zs.size)  # [C_s]
        s, te = torch.from_numpy(zs).view(1, 1, -1), torch.from_numpy(zt).view(1, 1, -1)  # [1, 1, C]
        kl = float(cca_loss(s, s, te, te, tau)["x"])  # Eq. 7 of one joint (the x term; y is the same)

        t_edges = (np.arange(zt.size + 1) - 0.5) / k  # teacher class i: [(i-0.5)/k, (i+0.5)/k)
        s_edges = (np.arange(zs.size + 1) - 0.5) * m / k  # student class j centred at j*m/k
        merged_left = (np.arange(zs.size) * m - 0.5) / k  # merged bin j: teacher classes j*m..j*m+m-1

        ax_t, ax_m = axes[r]
        ax_t.stairs(pt, t_edges, fill=True, color=TEACHER_COLOR, alpha=0.8, label=f"teacher p^t ({zt.size} classes)")
        ax_t.set_title(f"{axis}: teacher softmax(z/tau), C_t = {zt.size}, tau = {tau:g}", fontsize=10)
        ax_m.bar(merged_left, merged, width=m / k, align="edge", color=TEACHER_COLOR, alpha=0.45,
                 edgecolor=TEACHER_COLOR, linewidth=0.5, label=f"merged teacher p~t (Eq. 6, m={m})")
        ax_m.stairs(ps, s_edges, color=STUDENT_COLOR, linewidth=2, label=f"student p^s ({zs.size} classes)")
        ax_m.set_title(f"{axis}: CCA merge vs student, tau^2 KL(p~t||p^s) = {kl:.4f}", fontsize=10)
        for ax in (ax_t, ax_m):
            ax.set_xlabel(unit)
            ax.set_ylabel("probability")
            ax.legend(fontsize=8, loc="upper right")
        if xlim == "full":
            ax_t.set_xlim(t_edges[0], t_edges[-1])
        elif xlim is None:
            centers_t = np.arange(zt.size) / k
            centers_s = np.arange(zs.size) * m / k
            ax_t.set_xlim(*mass_window([(centers_t, pt), (centers_s, ps), (centers_s, merged)], pad=2 * m / k))
        else:
            ax_t.set_xlim(*xlim)
    title = "SimCC distributions" + (f" of '{joint_name}'" if joint_name else "")
    fig.suptitle(f"{title}: cross-class alignment, {m} teacher classes per student class")
    return finish_figure(fig, save)
