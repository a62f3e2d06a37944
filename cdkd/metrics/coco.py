"""COCO keypoint AP: the metric of the paper's Table II and Table IX.

Implements the top-down protocol of the HRNet/SimCC code that CDKD reuses
(``COCODataset.evaluate`` and ``lib/nms/nms.py``), then the official pycocotools ``COCOeval``:

1. Rescoring: each person's score becomes ``box_score * mean(keypoint confidences > in_vis_thr)``
   (strictly greater; 0 when no keypoint passes).
2. Grouping per image and greedy OKS-NMS: in decreasing score order, a person is kept unless its
   OKS with an already kept person of the same image is above ``oks_thr`` (0.9). The OKS of the
   NMS uses the person-box areas given with the predictions (HRNet passes ``prod(scale * 200)``,
   the enlarged box) and the COCO sigmas, with every keypoint counted (the protocol calls
   ``oks_nms`` without ``in_vis_thre``).
3. ``COCOeval(gt, results, 'keypoints')``: AP averaged over OKS 0.50:0.95, AP50, AP75, AP for
   medium and large persons and the corresponding ARs.

The NMS is vectorised: one ``[n, n]`` OKS matrix per image, then a greedy pass over it, which
keeps the same persons as the released loop. Ties in score keep the input order (the released
``argsort()[::-1]`` leaves their order to the sort implementation). With ``in_vis_thr`` given to
:func:`oks_iou`, a keypoint counts when both persons' confidences exceed it; the released
expression ``list(vg > t) and list(vd > t)`` only looks at the second person, but the protocol
never passes a threshold there, so no protocol result differs.

Note on thresholds: SimCC's own COCO configs use ``IN_VIS_THRE: 0.02`` (our default, config key
``eval.in_vis_thr``); the HRNet configs use 0.2.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cdkd.data.coco import load_coco_api

COCO_SIGMAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62,
                        1.07, 1.07, 0.87, 0.87, 0.89, 0.89]) / 10.0
# Names of COCOeval.stats for keypoints, in order (the paper's Table II uses the first six).
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


@dataclass
class KeypointPredictions:
    """Top-down predictions of N person boxes, in original image coordinates.

    Attributes:
        keypoints: ``[N, J, 3]`` (x, y, confidence) in image pixels.
        image_ids: ``[N]`` COCO image ids.
        box_scores: ``[N]`` person-box scores (1 for ground-truth boxes).
        areas: ``[N]`` person-box areas used by OKS-NMS (HRNet: ``prod(scale * 200)``).
        centers: optional ``[N, 2]`` box centres, copied into the results file.
        scales: optional ``[N, 2]`` box scales (pixel_std 200), copied into the results file.
    """

    keypoints: np.ndarray
    image_ids: np.ndarray
    box_scores: np.ndarray
    areas: np.ndarray
    centers: np.ndarray | None = None
    scales: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, dtype=np.float64)
        if self.keypoints.ndim != 3 or self.keypoints.shape[2] != 3:
            raise ValueError(f"predictions 'keypoints' must be [N, J, 3], got {self.keypoints.shape}")
        n = self.keypoints.shape[0]
        self.image_ids = np.asarray(self.image_ids).reshape(-1)
        if self.image_ids.size and not np.issubdtype(self.image_ids.dtype, np.integer):
            as_int = self.image_ids.astype(np.int64)
            if not np.array_equal(as_int, self.image_ids):
                raise ValueError("predictions 'image_ids' must be integers")
            self.image_ids = as_int
        self.image_ids = self.image_ids.astype(np.int64)
        self.box_scores = np.asarray(self.box_scores, dtype=np.float64).reshape(-1)
        self.areas = np.asarray(self.areas, dtype=np.float64).reshape(-1)
        for name in ("image_ids", "box_scores", "areas"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"predictions '{name}' must have N = {n} entries, got "
                                 f"{getattr(self, name).shape}")
        for name in ("centers", "scales"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float64)
                if value.shape != (n, 2):
                    raise ValueError(f"predictions '{name}' must be [N, 2] = ({n}, 2), got "
                                     f"{value.shape}")
                setattr(self, name, value)

    def __len__(self) -> int:
        return self.keypoints.shape[0]


def as_predictions(predictions) -> KeypointPredictions:
    """Accept the forms callers naturally have and return :class:`KeypointPredictions`.

    Args:
        predictions: a :class:`KeypointPredictions`; a mapping with its field names as keys
            (``keypoints``, ``image_ids``, ``box_scores``, ``areas``, optional ``centers``,
            ``scales``); or a sequence of per-person dicts in the HRNet form with keys
            ``image_id``, ``keypoints [J, 3]``, ``score`` (the box score), ``area`` and
            optional ``center``, ``scale``.

    Returns:
        The predictions as arrays.
    """
    if isinstance(predictions, KeypointPredictions):
        return predictions
    if isinstance(predictions, Mapping):
        fields = {"keypoints", "image_ids", "box_scores", "areas", "centers", "scales"}
        unknown = set(predictions) - fields
        if unknown:
            raise ValueError(f"predictions have unknown keys {sorted(unknown)}; "
                             f"expected {sorted(fields)}")
        return KeypointPredictions(**predictions)
    if isinstance(predictions, Sequence) and not isinstance(predictions, (str, bytes)):
        if not predictions:
            return KeypointPredictions(np.zeros((0, len(COCO_SIGMAS), 3)), [], [], [])
        rows: dict[str, list] = {k: [] for k in ("keypoints", "image_id", "score", "area")}
        extra: dict[str, list] = {"center": [], "scale": []}
        for i, person in enumerate(predictions):
            for key, column in rows.items():
                if key not in person:
                    raise ValueError(f"prediction {i} has no '{key}' (keys: {sorted(person)})")
                column.append(person[key])
            for key, column in extra.items():
                column.append(person.get(key))
        has = {k: all(v is not None for v in vals) for k, vals in extra.items()}
        return KeypointPredictions(
            keypoints=np.stack([np.asarray(k, dtype=np.float64).reshape(-1, 3)
                                for k in rows["keypoints"]]),
            image_ids=rows["image_id"], box_scores=rows["score"], areas=rows["area"],
            centers=np.asarray(extra["center"], dtype=np.float64) if has["center"] else None,
            scales=np.asarray(extra["scale"], dtype=np.float64) if has["scale"] else None)
    raise TypeError(f"cannot read predictions of type {type(predictions).__name__}")


def rescore(keypoints: np.ndarray, box_scores: np.ndarray, in_vis_thr: float) -> np.ndarray:
    """HRNet rescoring: box score times the mean keypoint confidence above ``in_vis_thr``.

    Args:
        keypoints: ``[N, J, 3]`` with confidences in the last column.
        box_scores: ``[N]``.
        in_vis_thr: confidences strictly above it count; none counting gives score 0.

    Returns:
        ``[N]`` person scores.
    """
    conf = keypoints[..., 2]  # [N, J]
    valid = conf > in_vis_thr
    num = valid.sum(axis=1)  # [N]
    mean = np.where(num > 0, (conf * valid).sum(axis=1) / np.maximum(num, 1), 0.0)
    return box_scores * mean


def _sigma_vars(sigmas: np.ndarray | None, num_joints: int) -> np.ndarray:
    sigmas = COCO_SIGMAS if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    if sigmas.shape != (num_joints,):
        raise ValueError(f"OKS needs one sigma per keypoint: {num_joints} keypoints, "
                         f"{sigmas.shape[0] if sigmas.ndim else 0} sigmas")
    return (2.0 * sigmas) ** 2  # [J]


def oks_iou(g: np.ndarray, d: np.ndarray, area_g: float, areas_d: np.ndarray,
            sigmas: np.ndarray | None = None, in_vis_thr: float | None = None) -> np.ndarray:
    """OKS between one person and M others, as in HRNet ``lib/nms/nms.py``.

    ``e = d^2 / (2 sigma)^2 / ((a_g + a_d) / 2 + eps) / 2`` and OKS is the mean of ``exp(-e)``
    over the keypoints (those whose confidences both exceed ``in_vis_thr`` when it is given; 0
    when none does).

    Args:
        g: ``[J, 3]`` (or flat ``[3J]``) reference person.
        d: ``[M, J, 3]`` (or ``[M, 3J]``) other persons.
        area_g: area of g.
        areas_d: ``[M]`` areas of the others.
        sigmas: ``[J]`` per-keypoint sigmas; default COCO.
        in_vis_thr: optional confidence threshold.

    Returns:
        ``[M]`` OKS values.
    """
    g = np.asarray(g, dtype=np.float64).reshape(-1, 3)  # [J, 3]
    d = np.asarray(d, dtype=np.float64).reshape(-1, g.shape[0], 3)  # [M, J, 3]
    variances = _sigma_vars(sigmas, g.shape[0])  # [J]
    dist2 = ((d[..., :2] - g[None, :, :2]) ** 2).sum(-1)  # [M, J]
    scale = (area_g + np.asarray(areas_d, dtype=np.float64)) / 2 + np.spacing(1)  # [M]
    e = dist2 / variances / scale[:, None] / 2  # [M, J]
    return _mean_exp(e, None if in_vis_thr is None else
                     (g[None, :, 2] > in_vis_thr) & (d[..., 2] > in_vis_thr))


def _mean_exp(e: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Mean of exp(-e) over the last axis, restricted to ``mask`` (0 where it is empty)."""
    if mask is None:
        return np.exp(-e).mean(-1)
    num = mask.sum(-1)
    total = (np.exp(-e) * mask).sum(-1)
    return np.where(num > 0, total / np.maximum(num, 1), 0.0)


def oks_matrix(keypoints: np.ndarray, areas: np.ndarray, sigmas: np.ndarray | None = None,
               in_vis_thr: float | None = None) -> np.ndarray:
    """Pairwise OKS of n persons: ``out[i, j] = oks_iou(keypoints[i], keypoints[j:j+1], ...)``.

    Args:
        keypoints: ``[n, J, 3]``.
        areas: ``[n]``.
        sigmas, in_vis_thr: as in :func:`oks_iou`.

    Returns:
        ``[n, n]`` OKS matrix.
    """
    variances = _sigma_vars(sigmas, keypoints.shape[1])  # [J]
    diff = keypoints[:, None, :, :2] - keypoints[None, :, :, :2]  # [n, n, J, 2]
    dist2 = (diff ** 2).sum(-1)  # [n, n, J]
    scale = (areas[:, None] + areas[None, :]) / 2 + np.spacing(1)  # [n, n]
    e = dist2 / variances / scale[..., None] / 2  # [n, n, J]
    mask = None
    if in_vis_thr is not None:
        vis = keypoints[..., 2] > in_vis_thr  # [n, J]
        mask = vis[:, None, :] & vis[None, :, :]  # [n, n, J]
    return _mean_exp(e, mask)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, thr: float,
            sigmas: np.ndarray | None = None, in_vis_thr: float | None = None) -> np.ndarray:
    """Greedy OKS non-maximum suppression of the persons of one image.

    Args:
        keypoints: ``[n, J, 3]`` persons of one image.
        scores: ``[n]`` person scores (after rescoring).
        areas: ``[n]`` person areas.
        thr: a person whose OKS with a kept, higher-scored person exceeds ``thr`` is removed.
        sigmas, in_vis_thr: as in :func:`oks_iou`.

    Returns:
        Indices of the kept persons, highest score first.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    n = keypoints.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")  # [n]
    kps = keypoints[order]  # [n, J, 3] in score order
    area = np.asarray(areas, dtype=np.float64)[order]  # [n]
    # one row of the OKS matrix at a time, against the persons still in play: memory O(n J), not
    # O(n^2 J) (7 GB for 3000 persons in one image); the same numbers as oks_matrix
    alive = np.arange(n)
    keep = []
    while alive.size:
        i, rest = alive[0], alive[1:]
        keep.append(i)
        ovr = oks_iou(kps[i], kps[rest], area[i], area[rest], sigmas, in_vis_thr)  # [len(rest)]
        alive = rest[~(ovr > thr)]
    return order[np.asarray(keep, dtype=np.int64)]


def select_results(predictions, oks_thr: float = 0.9, in_vis_thr: float = 0.02,
                   use_nms: bool = True, sigmas: np.ndarray | None = None,
                   category_id: int = 1) -> list[dict]:
    """Rescore, OKS-NMS per image and format as official COCO keypoint results.

    Args:
        predictions: anything :func:`as_predictions` accepts.
        oks_thr: OKS-NMS threshold (config key ``eval.oks_thr``).
        in_vis_thr: rescoring confidence threshold (config key ``eval.in_vis_thr``).
        use_nms: False keeps every person (rescoring still applies).
        sigmas: ``[J]`` OKS sigmas; default COCO.
        category_id: the person category id of the ground truth.

    Returns:
        One dict per kept person: ``image_id``, ``category_id``, ``keypoints`` (flat
        ``[x1, y1, c1, ...]``), ``score`` and, when known, ``center`` and ``scale``.
    """
    preds = as_predictions(predictions)
    scores = rescore(preds.keypoints, preds.box_scores, in_vis_thr)  # [N]
    by_image = np.argsort(preds.image_ids, kind="stable")  # [N]
    starts = np.flatnonzero(np.r_[True, np.diff(preds.image_ids[by_image]) != 0])
    kept = []
    for group in np.split(by_image, starts[1:]) if len(preds) else []:
        if use_nms:
            group = group[oks_nms(preds.keypoints[group], scores[group], preds.areas[group],
                                  oks_thr, sigmas)]
        kept.append(group)
    kept_idx = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    results = []
    for i in kept_idx.tolist():
        item = {
            "image_id": int(preds.image_ids[i]),
            "category_id": int(category_id),
            "keypoints": preds.keypoints[i].reshape(-1).tolist(),
            "score": float(scores[i]),
        }
        if preds.centers is not None:
            item["center"] = preds.centers[i].tolist()
        if preds.scales is not None:
            item["scale"] = preds.scales[i].tolist()
        results.append(item)
    return results


def write_results_json(path: str | Path, results: list[dict]) -> Path:
    """Write results from :func:`select_results` as an official COCO keypoint results file.

    Args:
        path: output ``.json`` (e.g. ``person_keypoints_val2017_results.json``).
        results: the list of result dicts.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f)
    return path


def _person_category(coco: COCO) -> int:
    ids = coco.getCatIds(catNms=["person"]) or coco.getCatIds()
    if len(ids) != 1:
        raise ValueError(f"COCO ground truth: cannot tell the person category among {ids}")
    return int(ids[0])


def coco_keypoint_eval(predictions, coco_gt: str | Path | COCO, oks_thr: float = 0.9,
                       in_vis_thr: float = 0.02, use_nms: bool = True,
                       sigmas: np.ndarray | None = None, results_path: str | Path | None = None,
                       verbose: bool = False) -> dict:
    """COCO keypoint AP of top-down predictions (HRNet/SimCC protocol, pycocotools COCOeval).

    Args:
        predictions: anything :func:`as_predictions` accepts; keypoints in image pixels.
        coco_gt: a ``person_keypoints_*.json`` path or a pycocotools ``COCO``.
        oks_thr: OKS-NMS threshold.
        in_vis_thr: rescoring confidence threshold.
        use_nms: apply OKS-NMS per image.
        sigmas: ``[J]`` OKS sigmas for the NMS and COCOeval; default COCO's 17.
        results_path: if given, the results are also written there (official format).
        verbose: print COCOeval's summary table (it is always returned under ``'summary'``).

    Returns:
        ``{'AP', 'AP50', 'AP75', 'APM', 'APL', 'AR', 'AR50', 'AR75', 'ARM', 'ARL'}`` as floats in
        [0, 1] (-1 where COCOeval finds no ground truth in an area range), ``'num_persons'``
        (predictions evaluated, after NMS), ``'num_predictions'`` (before NMS) and
        ``'summary'`` (COCOeval's printed table, a str).
    """
    preds = as_predictions(predictions)
    if len(preds) == 0:
        raise ValueError("no predictions to evaluate")
    sigmas = COCO_SIGMAS if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    if preds.keypoints.shape[1] != len(sigmas):
        raise ValueError(f"predictions have {preds.keypoints.shape[1]} keypoints but "
                         f"{len(sigmas)} OKS sigmas are given")
    coco = coco_gt if isinstance(coco_gt, COCO) else load_coco_api(coco_gt)
    unknown = np.setdiff1d(np.unique(preds.image_ids), np.asarray(coco.getImgIds()))
    if unknown.size:
        raise ValueError(f"prediction image_id {int(unknown[0])} is not in the COCO ground truth "
                         f"({unknown.size} unknown ids)")
    results = select_results(preds, oks_thr, in_vis_thr, use_nms, sigmas,
                             category_id=_person_category(coco))
    if results_path is not None:
        write_results_json(results_path, results)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools progress messages
        coco_dt = coco.loadRes(results)
        evaluator = COCOeval(coco, coco_dt, "keypoints")
        evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
    with contextlib.redirect_stdout(io.StringIO()) as table:
        evaluator.summarize()
    summary = table.getvalue()
    if verbose:
        print(summary, end="")
    out: dict = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
    out.update(num_persons=len(results), num_predictions=len(preds), summary=summary)
    return out
