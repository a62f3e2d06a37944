"""Shared pieces of the figures: colours, the inline-displaying figure, saving, joint names.

Every plotting function of :mod:`cdkd.viz` builds a :class:`NotebookFigure` without pyplot, returns
it and saves it through :func:`finish_figure` when given a path. Joint names and limbs come from
:mod:`cdkd.joints` (the one place for the datasets' metadata).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cdkd.joints import JOINTS_META

LEFT_COLOR = "#1f77b4"
RIGHT_COLOR = "#d62728"
CENTER_COLOR = "#2ca02c"
PRED_COLOR = "#ff7f0e"
GT_COLOR = "#17becf"
TEACHER_COLOR = "#9467bd"
STUDENT_COLOR = "#ff7f0e"


class NotebookFigure(Figure):
    """A matplotlib Figure that displays itself inline as ``image/png`` in Jupyter.

    IPython shows a pyplot-free Figure as the text ``<Figure size 900x700 with 4 Axes>`` unless an
    inline backend registered a formatter for it; ``_repr_png_`` makes the image the default.
    """

    #: the values the figure was drawn with, as shown in it ({'tau': '1.26', ...}); written into the
    #: PNG as its ``Description`` text, so a reader of the image (a browser check) can compare them
    stated: dict[str, str]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stated = {}

    def png_metadata(self) -> dict[str, str]:
        """PNG text chunks: ``Description`` = the stated values as ``key=value; ...``."""
        return {"Description": stated_text(self.stated)} if self.stated else {}

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata=self.png_metadata())
        return buffer.getvalue()


def stated_text(stated: dict[str, str]) -> str:
    """``{'sample': '1', 'tau': '1.26'}`` -> ``'sample=1; tau=1.26'`` (the PNG ``Description``)."""
    return "; ".join(f"{key}={value}" for key, value in stated.items())


def png_description(png: bytes) -> dict[str, str]:
    """The stated values a PNG of :class:`NotebookFigure` carries (its ``Description`` tEXt chunk).

    Args:
        png: the PNG file's bytes.

    Returns:
        {key: value}; empty when the PNG has no ``Description``.
    """
    import struct
    import zlib

    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("png_description: not a PNG file")
    pos, text = 8, ""
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunk = png[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt" and chunk.startswith(b"Description\0"):
            text = chunk.split(b"\0", 1)[1].decode("latin-1")
        elif kind == b"iTXt" and chunk.startswith(b"Description\0"):
            _, rest = chunk.split(b"\0", 1)
            compressed, rest = rest[0], rest[2:]
            rest = rest.split(b"\0", 2)[2]  # language tag, translated keyword
            text = (zlib.decompress(rest) if compressed else rest).decode("utf-8")
    return dict(part.split("=", 1) for part in text.split("; ") if "=" in part)


def _numpy(x: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a tensor / array / list; raises naming ``name`` on failure."""
    if x is None:
        raise ValueError(f"{name} is None")
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} cannot be converted to an array: {err}") from None


def finish_figure(fig: Figure, save: str | Path | None, dpi: int = 120) -> Figure:
    """Save ``fig`` to ``save`` (creating its folder) when given; return the figure."""
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {"metadata": fig.png_metadata()} if isinstance(fig, NotebookFigure) and path.suffix == ".png" else {}
        fig.savefig(path, dpi=dpi, bbox_inches="tight", **extra)
    return fig



def note_axis(ax: Axes, text: str) -> None:
    """Write a centred note into an axis that has nothing to plot."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4", wrap=True)


def joint_names(dataset_name: str, num_joints: int | None = None) -> tuple[str, ...]:
    """Joint names of a dataset (:mod:`cdkd.joints`), or ``joint0..`` for an unknown layout.

    Args:
        dataset_name: 'coco' or 'mpii' (any other name gives generic names).
        num_joints: J; when it differs from the dataset's count, generic names are returned.

    Returns:
        Tuple of J names.
    """
    meta = JOINTS_META.get(dataset_name.lower())
    if meta is not None and num_joints in (None, meta.num_joints):
        return meta.joint_names
    return tuple(f"joint{j}" for j in range(num_joints or 0))


def skeleton_for(dataset_name: str, num_joints: int) -> tuple[tuple[int, int], ...]:
    """The dataset's limbs when its joint count matches ``num_joints``, else no limbs."""
    meta = JOINTS_META.get(dataset_name.lower())
    return meta.skeleton if meta is not None and meta.num_joints == num_joints else ()


def joint_index(joint: int | str, names: Sequence[str]) -> int:
    """Resolve a joint given by index or name; raises naming the valid choices."""
    if isinstance(joint, str):
        if joint not in names:
            raise ValueError(f"unknown joint name {joint!r}; joints: {', '.join(names)}")
        return list(names).index(joint)
    j = int(joint)
    if not 0 <= j < len(names):
        raise ValueError(f"joint index {j} out of range for {len(names)} joints")
    return j


def _side_color(name: str) -> str:
    if name.startswith(("left", "l_")):
        return LEFT_COLOR
    if name.startswith(("right", "r_")):
        return RIGHT_COLOR
    return CENTER_COLOR

