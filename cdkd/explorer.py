"""Interactive prediction explorer: keypoint overlays and 1-D SimCC distributions per joint.

Shows, for one person, one joint and one resolution, what CDKD (Gu et al., "Cross-Domain
Knowledge Distillation for Low-Resolution Human Pose Estimation") works with: the student's or
the teacher's keypoints on its own crop (Fig. 5), and the joint's SimCC x / y class distributions
(Sec. III-A). On the student view the teacher's distribution merged into the student's classes
(CCA, Eq. 6) is drawn on top, i.e. the target the logit loss of Eq. 7 pulls the student towards.

Data are plain prediction records (see :mod:`cdkd.viz.predictions`): for each person a dict mapping
'student' / 'teacher' to a view ``{'image', 'pred', 'gt', 'x_logits', 'y_logits', 'split_ratio'}``.
:meth:`PredictionExplorer.from_models` builds them by running the two models on a dataset
(:func:`cdkd.inference.predict_crops`, without the flip test).
:meth:`PredictionExplorer.render_static` draws a matplotlib figure (headless, papermill);
:meth:`PredictionExplorer.widget` / :func:`explore` give the ipywidgets version in a notebook.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cdkd import viz

VIEW_KEYS = ("image", "pred")
TAU_READOUT = ".3g"  # the tau slider's readout format (d3-format in the browser)
STATUS_CLASS = "cdkd-explorer-status"  # CSS class of the status line on the page
DEFER_S = 0.15  # seconds a render waits on the kernel's event loop for newer control changes


def format_tau(tau: float) -> str:
    """tau as the explorer's tau slider shows it: d3-format ``.3g``, which keeps trailing zeros
    (10 -> '10.0', 1 -> '1.00'), i.e. Python's ``#.3g`` without a trailing point."""
    return format(float(tau), "#" + TAU_READOUT).rstrip(".")


def _defer(callback: Callable[[int], None], generation: int) -> None:
    """Run ``callback(generation)`` after ``DEFER_S`` on the running event loop (a kernel's), where
    control changes that arrive in the meantime are handled first; at once without a running loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        callback(generation)
        return
    loop.call_later(DEFER_S, callback, generation)


def _check_records(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Validate records; return the resolutions every record has, student first."""
    if not records:
        raise ValueError("PredictionExplorer needs at least one record")
    common = None
    for i, record in enumerate(records):
        views = [k for k, v in record.items() if isinstance(v, Mapping)]
        for name in views:
            missing = [key for key in VIEW_KEYS if key not in record[name]]
            if missing:
                raise KeyError(f"record {i}, view '{name}' lacks {missing} (needs {VIEW_KEYS})")
        common = views if common is None else [v for v in common if v in views]
    if not common:
        raise ValueError("the records share no view (expected 'student' and/or 'teacher' dicts)")
    order = {"student": 0, "teacher": 1}
    return sorted(common, key=lambda v: order.get(v, 2))


class PredictionExplorer:
    """Browse predictions by sample, joint and resolution.

    Args:
        records: prediction records (module docstring of :mod:`cdkd.viz.predictions`).
        dataset_name: 'coco' or 'mpii' (joint names and skeleton).
        tau: temperature of the displayed softmaxes (Eq. 7; 1 shows the plain SimCC output).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], dataset_name: str, tau: float = 1.0):
        self.records = list(records)
        self.resolutions = _check_records(self.records)
        self.dataset_name = dataset_name
        self.tau = float(tau)
        first = self.records[0][self.resolutions[0]]
        self.num_joints = int(np.asarray(first["pred"]).shape[0])
        self.joint_names = viz.joint_names(dataset_name, self.num_joints)
        self.figure: Figure | None = None  # last figure the widget showed
        self.controls: dict[str, Any] = {}  # the widget's controls, by name
        self.output: Any = None  # the widget's ipywidgets.Output
        self.status: Any = None  # the widget's status line (ipywidgets.Label)
        self.renders = 0  # figures the latest widget has shown

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def from_models(
        cls,
        student: Any,
        teacher: Any | None,
        dataset: Any,
        n: int = 16,
        batch_size: int = 8,
        device: Any | None = None,
        tau: float = 1.0,
    ) -> PredictionExplorer:
        """Run the student (and the teacher on its own crops) on the first ``n`` samples.

        Args:
            student: SimCC model returning PoseOutput (``.x`` [B, J, W*k], ``.y`` [B, J, H*k]),
                with attribute ``split_ratio``.
            teacher: the same for the teacher, or None for a student-only explorer; needs the
                samples' 'teacher_image'.
            dataset: indexable TopDownDataset (samples with 'image', 'joints', optionally
                'teacher_image', 'image_id', 'index'); ``dataset_name`` names the joints.
            n: number of samples (the first n).
            batch_size: samples per forward pass.
            device: where to run; default the student's parameter device.
            tau: display temperature.

        Returns:
            A PredictionExplorer over n records.
        """
        import torch

        from cdkd.inference import predict_crops

        count = min(int(n), len(dataset))
        if count <= 0:
            raise ValueError("from_models: the dataset is empty or n <= 0")
        if device is None:
            device = next(iter(student.parameters()), torch.empty(0)).device
        models = {"student": student} if teacher is None else {"student": student, "teacher": teacher}
        inputs = {"student": "image", "teacher": "teacher_image"}
        modes = {name: model.training for name, model in models.items()}
        records: list[dict[str, Any]] = []
        try:
            for model in models.values():
                model.eval()
            for start in range(0, count, batch_size):
                samples = [dataset[i] for i in range(start, min(start + batch_size, count))]
                batch_views: dict[str, list[dict[str, Any]]] = {}
                for name, model in models.items():
                    key = inputs[name]
                    for i, s in enumerate(samples):
                        if key not in s:
                            raise KeyError(f"from_models: dataset sample {start + i} has no '{key}'")
                    images = torch.stack([torch.as_tensor(s[key]) for s in samples]).float().to(device)  # [B, 3, h, w]
                    coords, scores, x_logits, y_logits = predict_crops(model, images, (), flip=False,
                                                                       return_logits=True)
                    preds = torch.cat([coords, scores[..., None]], dim=-1).double().cpu().numpy()  # [B, J, 3]
                    xs, ys = x_logits.cpu().numpy(), y_logits.cpu().numpy()  # [B, J, W*k], [B, J, H*k]
                    k = float(model.split_ratio)
                    batch_views[name] = [
                        {"image": viz.denormalize(s[key]), "pred": preds[b], "x_logits": xs[b], "y_logits": ys[b],
                         "split_ratio": k}
                        for b, s in enumerate(samples)
                    ]
                for b, s in enumerate(samples):
                    record: dict[str, Any] = {"index": s.get("index", start + b)}
                    if "image_id" in s:
                        record["image_id"] = s["image_id"]
                    joints = np.asarray(s["joints"], dtype=np.float64) if "joints" in s else None
                    small = batch_views["student"][b]["image"].shape[:2]
                    for name, views in batch_views.items():
                        view = views[b]
                        if joints is not None:
                            h, w = view["image"].shape[:2]
                            gt = joints.copy()
                            gt[:, :2] = joints[:, :2] * np.array([w / small[1], h / small[0]])  # crop px of this view
                            view["gt"] = gt
                        record[name] = view
                    records.append(record)
        finally:
            for name, model in models.items():
                model.train(modes[name])
        name = getattr(dataset, "dataset_name", "")
        return cls(records, name, tau=tau)

    # ------------------------------------------------------------------------------------------

    def _distribution(self, ax: Axes, view: Mapping[str, Any], axis: str, j: int, teacher: Mapping[str, Any] | None,
                      scale: float, student: Mapping[str, Any] | None = None, tau: float = 1.0) -> None:
        """One axis' class probabilities of joint j in the view's pixels, with the CCA merge (Eq. 6).

        On the student view (``teacher`` given) the teacher's merged bins are drawn in student pixels:
        the target Eq. 7 pulls the student towards. On the teacher view (``student`` given) the
        teacher's own bins are merged for that student's class count, in teacher pixels, so the
        figure changes with the student's resolution (m = 4 at 32x32, 2 at 64x64 for a 128 teacher).
        """
        logits = view.get(f"{axis}_logits")
        ax.set_title(f"SimCC {axis} distribution", fontsize=10)
        if logits is None:
            viz.note_axis(ax, f"no {axis} logits in this record")
            return
        k = float(view.get("split_ratio", 1.0))
        z = np.asarray(logits, dtype=np.float64)[j]  # [C]
        p = viz.simcc_probabilities(z, tau)  # [C]
        edges = (np.arange(p.size + 1) - 0.5) / k
        ax.stairs(p, edges, fill=True, alpha=0.6, color=viz.STUDENT_COLOR if student is None else viz.TEACHER_COLOR,
                  label=f"softmax (C={p.size}, tau = {format_tau(tau)})")
        centres = [(np.arange(p.size) / k, p)]
        if teacher is not None and teacher.get(f"{axis}_logits") is not None:
            zt = np.asarray(teacher[f"{axis}_logits"], dtype=np.float64)[j]  # [C_t]
            if zt.size % p.size == 0:
                m = zt.size // p.size
                kt = float(teacher.get("split_ratio", 1.0))
                merged = viz.simcc_probabilities(zt, tau, merge_to=p.size)  # [C_s]
                left = (np.arange(p.size) * m - 0.5) / kt / scale  # teacher classes j*m.. in student px
                ax.bar(left, merged, width=m / kt / scale, align="edge", fill=False, edgecolor=viz.TEACHER_COLOR,
                       linewidth=1.2, label=f"teacher merged (Eq. 6, m={m})")
                centres.append(((np.arange(p.size) * m + (m - 1) / 2) / kt / scale, merged))
        if student is not None and student.get(f"{axis}_logits") is not None:
            classes = int(np.asarray(student[f"{axis}_logits"]).shape[-1])  # C_s
            if p.size % classes == 0:
                m = p.size // classes
                merged = viz.simcc_probabilities(z, tau, merge_to=classes)  # [C_s]
                ax.bar((np.arange(classes) * m - 0.5) / k, merged, width=m / k, align="edge", fill=False,
                       edgecolor=viz.STUDENT_COLOR, linewidth=1.2,
                       label=f"merged to the student's {classes} classes (Eq. 6, m={m})")
                centres.append(((np.arange(classes) * m + (m - 1) / 2) / k, merged))
        col = 0 if axis == "x" else 1
        pred = np.asarray(view["pred"], dtype=np.float64)[j]
        ax.axvline(pred[col], color="black", linestyle=":", linewidth=1.5, label=f"pred {pred[col]:.2f}")
        gt = view.get("gt")
        if gt is not None:
            g = np.asarray(gt, dtype=np.float64)[j]
            if g.size < 3 or g[2] > 0:
                ax.axvline(g[col], color="black", linestyle="--", linewidth=1.2, label=f"gt {g[col]:.2f}")
        ax.set_xlim(*viz.mass_window(centres, pad=2.0))
        top = max(float(np.max(q)) for _, q in centres)
        ax.set_ylim(0, top * 1.6)  # every bar in view, the top third left to the legend
        ax.set_xlabel(f"{axis} (crop px)")
        ax.set_ylabel("probability")
        ax.legend(fontsize=7, loc="upper center", framealpha=0.85)

    def render_static(self, index: int = 0, joint: int | str = 0, resolution: str = "student",
                      save: str | Path | None = None, tau: float | None = None) -> Figure:
        """Overlay and x / y SimCC distributions of one joint of one record (headless figure).

        The title states every value the figure is drawn with (sample, joint, resolution, tau, the
        latter as the explorer's tau slider shows it); ``figure.stated`` holds them, and the PNG the
        figure displays as carries them in its ``Description``.

        Args:
            index: record index (the explorer's ``sample`` slider; titles show it).
            joint: joint index or name.
            resolution: 'student' or 'teacher' (any view the records have).
            save: optional output path.
            tau: display temperature (Eq. 7); None uses the explorer's ``tau``.

        Returns:
            Figure with 3 axes: overlay, x distribution, y distribution.
        """
        tau = self.tau if tau is None else float(tau)
        if tau <= 0:
            raise ValueError(f"temperature tau must be positive, got {tau}")
        if not 0 <= index < len(self.records):
            raise IndexError(f"record index {index} out of range for {len(self.records)} records")
        if resolution not in self.resolutions:
            raise ValueError(f"resolution {resolution!r} not in the records; choose one of {self.resolutions}")
        j = viz.joint_index(joint, self.joint_names)
        record = self.records[index]
        view = record[resolution]
        teacher = record.get("teacher") if resolution == "student" else None
        student = record.get("student") if resolution == "teacher" else None
        scale = 1.0
        if teacher is not None:
            scale = viz.as_rgb(teacher["image"]).shape[1] / viz.as_rgb(view["image"]).shape[1]

        fig = viz.NotebookFigure(figsize=(12, 3.8), layout="constrained")
        axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": (1, 1.4, 1.4)})
        size = viz.as_rgb(view["image"]).shape
        viz.plot_predictions(view["image"], view["pred"], view.get("gt"), self.dataset_name, ax=axes[0], highlight=j,
                             title=f"sample {index}, {resolution} {size[1]}x{size[0]}")
        for ax, axis in zip(axes[1:], ("x", "y")):
            self._distribution(ax, view, axis, j, teacher, scale, student, tau)
        extra = f" (image id {record['image_id']})" if "image_id" in record else ""
        fig.stated = {"sample": str(index), "joint": self.joint_names[j], "resolution": resolution,
                      "tau": format_tau(tau)}
        fig.suptitle(f"sample {index}{extra}: '{self.joint_names[j]}' at the {resolution} resolution, "
                     f"tau = {format_tau(tau)}", fontsize=11)
        return viz.finish_figure(fig, save)

    def widget(self, index: int = 0, joint: int | str = 0, resolution: str | None = None) -> Any:
        """ipywidgets controls (sample, joint, resolution, tau) above the rendered figure.

        Each call starts from the explorer's defaults (``index``, ``joint``, ``resolution`` and the
        explorer's ``tau``): re-running a notebook cell never inherits a previous widget's tau. The
        figure always shows the controls' latest state:

        * a control change bumps a generation counter and asks for a render; in a running kernel the
          render is deferred by ``DEFER_S`` on the kernel's event loop, so changes arriving meanwhile
          (a slider dragged, a key held) supersede it and only the latest state is drawn;
        * a render reads the controls when it starts and is dropped, not shown, when a newer change
          arrived before it finished;
        * the costly sliders (sample, tau) update on release (``continuous_update=False``);
        * the figure's title and legend state the values it was drawn with, tau formatted as the tau
          slider's readout (:func:`format_tau`), and the status line under the controls says
          ``drawing ...`` until the figure of the latest state is shown, then ``shown: ...``.

        The figure is put into an ``ipywidgets.Output`` as PNG display data (its ``outputs`` trait),
        so it renders in JupyterLab and is readable from the kernel: ``self.output.outputs[0]['data']
        ['image/png']`` holds the image (base64 PNG, its ``Description`` the stated values, see
        :func:`cdkd.viz.png_description`) and ``self.figure`` the Figure.

        Args:
            index: the sample shown first.
            joint: the joint shown first (index or name), e.g. a notebook's ``joint`` parameter.
            resolution: the resolution shown first (default the student's).

        Returns:
            An ``ipywidgets.VBox``; display it in a notebook. ``self.controls`` maps 'sample', 'joint',
            'resolution', 'tau' to its widgets, ``self.status`` is the status line.
        """
        try:
            import ipywidgets as widgets
            from IPython.core.interactiveshell import InteractiveShell
        except ImportError as err:  # declared dependency; say what is missing
            raise ImportError(f"the interactive explorer needs ipywidgets and IPython ({err}); "
                              "use render_static() headless") from None
        first = resolution or self.resolutions[0]
        if first not in self.resolutions:
            raise ValueError(f"resolution {first!r} not in the records; choose one of {self.resolutions}")
        if not 0 <= index < len(self.records):
            raise IndexError(f"record index {index} out of range for {len(self.records)} records")
        controls = {
            "sample": widgets.IntSlider(value=index, min=0, max=len(self.records) - 1, description="sample",
                                        continuous_update=False),
            "joint": widgets.Dropdown(options=[(n, j) for j, n in enumerate(self.joint_names)],
                                      value=viz.joint_index(joint, self.joint_names), description="joint"),
            "resolution": widgets.ToggleButtons(options=list(self.resolutions), value=first, description="resolution"),
            "tau": widgets.FloatLogSlider(value=self.tau, base=10, min=-1, max=1.5, description="tau",
                                          readout_format=TAU_READOUT, continuous_update=False),
        }
        out = widgets.Output()
        status = widgets.Label(value="")
        status.add_class(STATUS_CLASS)  # found by benchmarks/browser_check.py
        formatter = InteractiveShell.instance().display_formatter
        generation = [0]  # bumped by every control change; a render of an older generation is dropped

        def state() -> dict[str, Any]:
            return {"index": controls["sample"].value, "joint": controls["joint"].value,
                    "resolution": controls["resolution"].value, "tau": float(controls["tau"].value)}

        def render(wanted: int) -> None:
            if wanted != generation[0]:
                return  # superseded before it started: a newer change has its own render queued
            try:
                fig = self.render_static(**state())
            except Exception as err:  # a deferred render's error would only reach the kernel's log
                status.value = f"could not draw: {type(err).__name__}: {err}"
                raise
            if wanted != generation[0]:
                return  # superseded while drawing: never show a picture of an older state
            data, metadata = formatter.format(fig, include=("image/png", "text/plain"))
            if isinstance(data.get("image/png"), bytes):  # as notebooks store it: base64 text
                data["image/png"] = base64.b64encode(data["image/png"]).decode("ascii")
            self.figure = fig
            out.outputs = ({"output_type": "display_data", "data": data, "metadata": metadata},)
            status.value = "shown: " + viz.stated_text(fig.stated)
            self.renders += 1

        def changed(_change: Any = None) -> None:
            generation[0] += 1
            status.value = "drawing ..."
            _defer(render, generation[0])

        for control in controls.values():
            control.observe(changed, names="value")
        self.controls, self.output, self.status, self.renders = controls, out, status, 0
        render(generation[0])  # the first view, at once (an executed notebook stores it)
        return widgets.VBox([widgets.HBox([controls["sample"], controls["joint"]]),
                             widgets.HBox([controls["resolution"], controls["tau"]]), status, out])


def explore(source: PredictionExplorer | Sequence[Mapping[str, Any]], dataset_name: str = "", tau: float = 1.0,
            joint: int | str = 0) -> Any:
    """The interactive explorer widget for a notebook cell.

    Args:
        source: a PredictionExplorer, or prediction records.
        dataset_name: 'coco' or 'mpii' when ``source`` is records.
        tau: display temperature when ``source`` is records.
        joint: the joint shown first.

    Returns:
        The ``ipywidgets.VBox`` of :meth:`PredictionExplorer.widget`.
    """
    explorer = source if isinstance(source, PredictionExplorer) else PredictionExplorer(source, dataset_name, tau=tau)
    return explorer.widget(joint=joint)
