"""Evaluation engine: predictions with flip test, mapped back to the image, then COCO AP or MPII PCKh.

The protocol is explicit and recorded in every metrics file: where the person boxes come from
(ground truth or a detection file), whether flip test was used and which flip alignment
('exact': k-1 bins, right for any split ratio; 'official': the released one-bin shift).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cdkd.config import Config, config_to_dict
from cdkd.data.transforms import transform_preds
from cdkd.inference import predict_crops


@torch.no_grad()
def predict(model: nn.Module, dataset, cfg: Config, device: torch.device, flip: bool | None = None,
            progress: bool = True) -> dict[str, np.ndarray]:
    """Keypoints of every person of ``dataset`` in image coordinates.

    Returns:
        dict with ``coords`` [N,J,2] (image px), ``scores`` [N,J], ``crop_coords`` [N,J,2] (input px),
        ``index`` [N] (record index), ``image_id`` [N], ``box_score`` [N], ``area`` [N] (prod(scale*200),
        the area HRNet/SimCC give OKS-NMS).
    """
    flip = cfg.eval.flip_test if flip is None else flip
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.workers,
                        pin_memory=device.type == "cuda")
    h, w = model.input_size
    parts: dict[str, list] = {k_: [] for k_ in ("coords", "scores", "crop_coords", "index", "image_id", "box_score", "area")}
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True):
        image = batch["image"].to(device).contiguous(memory_format=fmt)
        crop, scores = predict_crops(model, image, dataset.flip_pairs, flip, cfg.eval.flip_shift)  # [B,J,2], [B,J]
        crop = crop.cpu().numpy()
        center, scale = batch["center"].numpy(), batch["scale"].numpy()
        coords = transform_preds(crop, center, scale, (h, w))  # [B,J,2] image px
        parts["coords"].append(coords)
        parts["crop_coords"].append(crop)
        parts["scores"].append(scores.cpu().numpy())
        for key, name in (("index", "index"), ("image_id", "image_id"), ("box_score", "score")):
            parts[key].append(np.asarray(batch[name]))
        parts["area"].append(np.prod(scale * 200.0, axis=1))  # the enlarged box area, as HRNet's OKS-NMS
    return {k_: np.concatenate(v) for k_, v in parts.items()}


def score_predictions(pred: dict[str, np.ndarray], dataset, cfg: Config) -> dict:
    """COCO AP (``main`` = AP) or MPII PCKh (``main`` = Mean) of predictions from :func:`predict`."""
    if dataset.dataset_name == "coco":
        from cdkd.evaluation import coco_keypoint_eval

        keypoints = np.concatenate([pred["coords"], pred["scores"][..., None]], axis=-1)  # [N,J,3]
        metrics = coco_keypoint_eval(
            {"keypoints": keypoints, "image_ids": pred["image_id"], "box_scores": pred["box_score"],
             "areas": pred["area"]},
            dataset.coco, oks_thr=cfg.eval.oks_thr, in_vis_thr=cfg.eval.in_vis_thr,
        )
        metrics["main"] = metrics["AP"]
        return metrics
    from cdkd.evaluation import pckh
    from cdkd.evaluation.mpii import MEAN_AT_01_THRESHOLDS

    order = np.argsort(pred["index"])
    metrics = pckh(pred["coords"][order], mpii_ground_truth(dataset), threshold=cfg.eval.pck_threshold,
                   low_threshold=MEAN_AT_01_THRESHOLDS[cfg.eval.mean_at_01])
    metrics["main"] = metrics["Mean"]
    return metrics


def mpii_ground_truth(dataset):
    """PCKh ground truth of the dataset's persons, in record order.

    The official ``gt_valid.mat`` when the dataset has one (its persons are in ``valid.json``'s
    order; with ``data.max_samples`` the first N are used), else the records' own joints and head
    boxes (the synthetic annotations carry them).
    """
    from cdkd.evaluation.mpii import MPIIGroundTruth, load_gt_valid

    records = dataset.records
    if getattr(dataset, "gt_mat", None):
        gt = load_gt_valid(dataset.gt_mat)
        if len(gt.joints) < len(records) or len(getattr(dataset, "skipped", ())):
            raise ValueError(
                f"{dataset.gt_mat} has {len(gt.joints)} persons but the dataset has {len(records)} records "
                f"(skipped: {len(getattr(dataset, 'skipped', ()))}); they must match one to one"
            )
        n = len(records)
        return MPIIGroundTruth(gt.joints[:n], gt.visible[:n], gt.head_boxes[:n])
    missing = [i for i, r in enumerate(records) if r.head_box is None]
    if missing:
        raise ValueError(f"no gt_valid.mat and person {missing[0]} ({records[missing[0]].image}) has no head box")
    return MPIIGroundTruth(
        np.stack([r.joints[:, :2] for r in records]),
        np.stack([r.visible > 0 for r in records]),
        np.stack([np.asarray(r.head_box, dtype=np.float64).reshape(2, 2) for r in records]),
    )


def protocol(cfg: Config, dataset, flip: bool) -> dict:
    boxes = "ground truth" if dataset.dataset_name == "mpii" or cfg.data.use_gt_bbox else f"detections ({cfg.data.det_file})"
    from cdkd.evaluation.mpii import MEAN_AT_01_THRESHOLDS

    return {"dataset": dataset.dataset_name, "split": cfg.data.val_set, "persons": len(dataset), "boxes": boxes,
            "flip_test": flip, "flip_shift": cfg.eval.flip_shift if flip else None,
            "metric": "AP (pycocotools)" if dataset.dataset_name == "coco" else f"PCKh@{cfg.eval.pck_threshold}",
            **({"mean_at_01_threshold": MEAN_AT_01_THRESHOLDS[cfg.eval.mean_at_01]} if dataset.dataset_name == "mpii" else {})}


def evaluate(model: nn.Module, dataset, cfg: Config, device: torch.device, flip: bool | None = None,
             progress: bool = True) -> dict:
    """Predict and score; the result carries the protocol beside the numbers."""
    flip = cfg.eval.flip_test if flip is None else flip
    start = time.perf_counter()
    pred = predict(model, dataset, cfg, device, flip=flip, progress=progress)
    metrics = score_predictions(pred, dataset, cfg)
    metrics["protocol"] = protocol(cfg, dataset, flip)
    metrics["eval_seconds"] = time.perf_counter() - start
    return metrics


def write_metrics(path: str | Path, metrics: dict, cfg: Config, model: nn.Module, extra: dict | None = None) -> dict:
    """Metrics file of a run: numbers, protocol, Params and FLOPs (the paper's columns), config."""
    from cdkd.flops import size_report

    size = size_report(model)
    record = {
        "metrics": {k: v for k, v in metrics.items() if k != "protocol"},
        "protocol": metrics.get("protocol"),
        "model": {"arch": model.arch, "input_size": list(model.input_size), "split_ratio": model.split_ratio,
                  "num_joints": model.num_joints, **size},
        "mode": cfg.train.mode,
        "fidelity": cfg.distill.fidelity if cfg.train.mode == "distill" else None,
        "variant": cfg.train.variant or cfg.train.mode,
        "seed": cfg.train.seed,
        "res": int(model.input_size[0]),
        "teacher": (("random " + cfg.teacher.arch) if cfg.teacher.random else cfg.teacher.checkpoint)
        if cfg.train.mode == "distill" else None,
        **(extra or {}),
        "config": config_to_dict(cfg),
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=float)
    return record
