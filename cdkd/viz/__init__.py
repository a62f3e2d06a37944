"""Figures for the CDKD reproduction, one module per subject of the notebooks.

Illustrates "Cross-Domain Knowledge Distillation for Low-Resolution Human Pose Estimation" (CDKD,
Gu et al.) and the SimCC representation it builds on (Li et al., ECCV 2022):

* :mod:`cdkd.viz.data` - network inputs: :func:`plot_paired_crops`, the teacher crop (256x256) and
  the student crop (32x32 / 64x64) of one person with one joint's SimCC targets (Sec. III, Fig. 3 a,
  Sec. III-A); the keypoint overlay :func:`draw_keypoints`. Notebook 01.
* :mod:`cdkd.viz.simcc` - cross-class alignment (CCA, Sec. III-B1): :func:`plot_simcc_distributions`,
  the teacher's 256*k class probabilities merged every m classes (Eq. 6) next to the student's res*k
  probabilities that Eq. 7 pulls towards them. Notebooks 05, 07.
* :mod:`cdkd.viz.predictions` - keypoint overlays at the student and the teacher resolution (the
  paper's Fig. 5) and on whole images: :func:`plot_predictions`, :func:`plot_resolution_grid`,
  :func:`plot_image_predictions`. Notebook 05.
* :mod:`cdkd.viz.training` - a run's records: the loss terms of Eq. 8, the ETHT temperature tau and
  the reversal weight xi (Eq. 9-12), the SAU projector weights w_k (Eq. 3-4):
  :func:`plot_training_curves`, :func:`plot_temperature`, :func:`plot_sau_weights`. Notebooks 02, 03, 05.
* :mod:`cdkd.viz.study` - the study's results: :func:`plot_metric_bars` (our arms, the paper's numbers
  in their own panel), :func:`plot_length_curve` (the metric against training length) and
  :func:`plot_share_sweep`. Notebooks 04, 06.

Every plotting function builds a :class:`NotebookFigure` (a :class:`matplotlib.figure.Figure`)
without pyplot (so nothing is kept in pyplot's global figure list), returns it, and saves it when
``save=path`` is given. In a notebook the returned figure is the cell's value and is shown inline as
a PNG by any front end (JupyterLab, papermill, nbclient), with or without ``%matplotlib inline``: a
figure made without pyplot has no inline backend behind it, so it renders itself (``_repr_png_``).

Prediction records (:mod:`cdkd.viz.predictions`, :mod:`cdkd.explorer`) map a resolution name
(``'student'``, ``'teacher'``) to a view ``{'image', 'pred', 'gt', 'x_logits', 'y_logits',
'split_ratio'}``.
"""

from cdkd.viz._style import (CENTER_COLOR, GT_COLOR, LEFT_COLOR, PRED_COLOR, RIGHT_COLOR, STUDENT_COLOR,
                             TEACHER_COLOR, NotebookFigure, finish_figure, joint_index, joint_names, note_axis,
                             png_description, skeleton_for, stated_text)
from cdkd.viz.data import as_rgb, denormalize, draw_keypoints, plot_paired_crops
from cdkd.viz.predictions import people_on_image, plot_image_predictions, plot_predictions, plot_resolution_grid
from cdkd.viz.simcc import mass_window, plot_simcc_distributions, simcc_probabilities
from cdkd.viz.study import plot_length_curve, plot_metric_bars, plot_share_sweep
from cdkd.viz.training import (CURVE_TITLES, CURVE_UNITS, plot_sau_weights, plot_temperature, plot_training_curves,
                               sau_columns, tau_bounds)

__all__ = [
    "CENTER_COLOR", "CURVE_TITLES", "CURVE_UNITS", "GT_COLOR", "LEFT_COLOR", "PRED_COLOR", "RIGHT_COLOR", "STUDENT_COLOR",
    "TEACHER_COLOR", "NotebookFigure", "as_rgb", "denormalize", "draw_keypoints", "finish_figure", "joint_index",
    "joint_names", "mass_window", "note_axis", "people_on_image", "plot_image_predictions", "plot_length_curve",
    "plot_metric_bars",
    "plot_paired_crops", "plot_predictions", "plot_resolution_grid", "plot_sau_weights", "plot_share_sweep",
    "plot_simcc_distributions", "plot_temperature", "plot_training_curves", "png_description", "sau_columns",
    "simcc_probabilities", "skeleton_for", "stated_text", "tau_bounds",
]
