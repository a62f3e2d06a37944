"""Evaluation protocols of the paper's tables: COCO keypoint AP (Tables II, IX) and MPII PCKh
(Tables I, III-VIII, X), following the HRNet/SimCC code that CDKD reuses.

``cdkd.metrics.coco`` and ``cdkd.metrics.mpii`` hold the implementations; the names below
are the public entry points.
"""

from cdkd.metrics.coco import (
    KeypointPredictions,
    coco_keypoint_eval,
    oks_iou,
    oks_nms,
    select_results,
    write_results_json,
)
from cdkd.metrics.mpii import (
    MPIIGroundTruth,
    load_gt_valid,
    pckh,
    pckh_per_joint,
    write_gt_valid,
)

__all__ = [
    "KeypointPredictions",
    "MPIIGroundTruth",
    "coco_keypoint_eval",
    "load_gt_valid",
    "oks_iou",
    "oks_nms",
    "pckh",
    "pckh_per_joint",
    "select_results",
    "write_gt_valid",
    "write_results_json",
]
