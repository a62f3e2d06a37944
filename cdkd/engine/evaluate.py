"""Evaluation engine: predictions with flip test, mapped back to the image, then COCO AP or MPII PCKh.

The protocol is explicit and recorded in every metrics file: where the person boxes come from
(ground truth or a detection file), whether flip test was used and which flip alignment
('exact': k-1 bins, right for any split ratio; 'official': the released one-bin shift).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cdkd.config import Config
from cdkd.data.topdown import collate_batch
from cdkd.data.transforms import transform_preds
from cdkd.engine.progress import loader_batches, progress_bar
from cdkd.engine.run import thread_policy
from cdkd.inference import predict_crops


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset, cfg: Config, device: torch.device, flip: bool | None = None,
            progress: bool = True) -> dict[str, np.ndarray]:
    """Keypoints of every person of ``dataset`` in image coordinates.

    Returns:
        dict with ``coords`` [N,J,2] (image px), ``scores`` [N,J], ``crop_coords`` [N,J,2] (input px),
        ``index`` [N] (record index), ``image_id`` [N], ``box_score`` [N], ``area`` [N] (prod(scale*200),
        the area HRNet/SimCC give OKS-NMS), and ``unreadable`` (record indices whose image could not be
        read in skip mode: left out of the others).
    """
    flip = cfg.eval.flip_test if flip is None else flip
    model.eval()
    # the loader processes of the thread policy: evaluation draws nothing at random, so any number
    # gives the same batches, and these fit beside the trainer's threads (train.threads=all: none)
    workers = thread_policy(cfg)["loader_workers"]
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", collate_fn=collate_batch)
    h, w = model.input_size
    parts: dict[str, list] = {k_: [] for k_ in ("coords", "scores", "crop_coords", "index", "image_id", "box_score", "area")}
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    parts["valid"] = []
    mode = cfg.train.progress if progress else "none"
    with progress_bar(mode, len(loader), "evaluate") as bar, loader_batches(loader) as batches:
        for batch in batches:
            image = batch["image"].to(device).contiguous(memory_format=fmt)
            crop, scores = predict_crops(model, image, dataset.flip_pairs, flip, cfg.eval.flip_shift)  # [B,J,2], [B,J]
            crop = crop.cpu().numpy()
            center, scale = batch["center"].numpy(), batch["scale"].numpy()
            coords = transform_preds(crop, center, scale, (h, w))  # [B,J,2] image px
            parts["coords"].append(coords)
            parts["crop_coords"].append(crop)
            parts["scores"].append(scores.cpu().numpy())
            for key, name in (("index", "index"), ("image_id", "image_id"), ("box_score", "score"), ("valid", "valid")):
                parts[key].append(np.asarray(batch[name]))
            parts["area"].append(np.prod(scale * 200.0, axis=1))  # the enlarged box area, as HRNet's OKS-NMS
            bar.update(1)
    out = {k_: np.concatenate(v) for k_, v in parts.items()}
    # a sample whose image could not be read (skip mode, maybe in a worker process) is no prediction
    keep = out.pop("valid").astype(bool)
    out = {k_: v[keep] for k_, v in out.items()}
    out["unreadable"] = np.flatnonzero(~keep)
    if out["unreadable"].size:
        warnings.warn(f"{out['unreadable'].size} persons of the evaluation set had an unreadable image and are "
                      "not scored (counted in 'persons_dropped')", stacklevel=2)
    return out


def score_predictions(pred: dict[str, np.ndarray], dataset, cfg: Config) -> dict:
    """COCO AP (``main`` = AP) or MPII PCKh (``main`` = Mean) of predictions from :func:`predict`."""
    if dataset.dataset_name == "coco":
        from cdkd.metrics import coco_keypoint_eval

        keypoints = np.concatenate([pred["coords"], pred["scores"][..., None]], axis=-1)  # [N,J,3]
        metrics = coco_keypoint_eval(
            {"keypoints": keypoints, "image_ids": pred["image_id"], "box_scores": pred["box_score"],
             "areas": pred["area"]},
            dataset.coco, oks_thr=cfg.eval.oks_thr, in_vis_thr=cfg.eval.in_vis_thr,
        )
        metrics["main"] = metrics["AP"]
        return metrics
    from cdkd.metrics import pckh
    from cdkd.metrics.mpii import MEAN_AT_01_THRESHOLDS

    order = np.argsort(pred["index"])
    gt = mpii_ground_truth(dataset)
    rows = pred["index"][order]  # only the persons that were evaluated, in record order
    metrics = pckh(pred["coords"][order], type(gt)(gt.joints[rows], gt.visible[rows], gt.head_boxes[rows]),
                   threshold=cfg.eval.pck_threshold, low_threshold=MEAN_AT_01_THRESHOLDS[cfg.eval.mean_at_01])
    metrics["main"] = metrics["Mean"]
    return metrics


def mpii_ground_truth(dataset):
    """PCKh ground truth of the dataset's persons, in record order.

    The official ``gt_valid.mat`` when the dataset has one (column n is entry n of ``valid.json``,
    the record's ``ann_id``: persons skipped in ``data.on_bad: skip`` mode, or cut by
    ``data.max_samples``, are left out of both), else the records' own joints and head boxes (the
    synthetic annotations carry them).
    """
    from cdkd.data import DataError
    from cdkd.data.mpii import head_boxes
    from cdkd.metrics.mpii import MPIIGroundTruth, load_gt_valid

    records = dataset.records
    if getattr(dataset, "gt_mat", None):
        gt = load_gt_valid(dataset.gt_mat)
        columns = np.asarray([r.ann_id for r in records], dtype=np.int64)
        if columns.size and int(columns.max()) >= len(gt.joints):
            raise DataError(f"{dataset.gt_mat} has {len(gt.joints)} persons but the annotation file has an entry "
                            f"#{int(columns.max())}; they must match one to one")
        return MPIIGroundTruth(gt.joints[columns], gt.visible[columns], gt.head_boxes[columns])
    missing = [i for i, r in enumerate(records) if r.head_box is None]
    if missing:
        raise DataError(f"no gt_valid.mat and person {missing[0]} ({records[missing[0]].image}) has no head box")
    return MPIIGroundTruth(
        np.stack([r.joints[:, :2] for r in records]),
        np.stack([r.visible > 0 for r in records]),
        head_boxes(records),
    )


def check_eval_data(dataset, cfg: Config) -> None:
    """Check the validation set before any training: every image there (in ``data.on_bad: error``
    mode; skip mode has already left out the missing ones) and the ground truth scoring needs.

    Raises:
        DataError: naming the first missing or unreadable image, or the ground truth file.
    """
    from cdkd.data import DataError
    from cdkd.data.topdown import check_image_file

    if len(dataset) == 0:
        raise DataError(f"the validation set '{cfg.data.val_set}' under {cfg.data.root} has no persons")
    if dataset.on_bad == "error":
        seen: set[str] = set()
        for rec in dataset.records:
            if rec.image not in seen:
                seen.add(rec.image)
                problem = check_image_file(rec.image) or _truncated(rec.image)
                if problem:
                    raise DataError(f"{problem}: {rec.image} (validation image id {rec.image_id}, "
                                    f"annotation id {rec.ann_id}; found before training)")
    if dataset.dataset_name == "mpii":
        mpii_ground_truth(dataset)


def _truncated(path: str) -> str | None:
    """'truncated JPEG' when the file's head and tail say so (reads 1 KiB, decodes nothing)."""
    from cdkd.data.topdown import jpeg_truncated

    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0, 2)
        f.seek(max(2, f.tell() - 1024))
        tail = f.read()
    return "truncated JPEG (no end-of-image marker)" if jpeg_truncated(head + tail) else None


def protocol(cfg: Config, dataset, flip: bool) -> dict:
    boxes = "ground truth" if dataset.dataset_name == "mpii" or cfg.data.use_gt_bbox else f"detections ({cfg.data.det_file})"
    from cdkd.metrics.mpii import MEAN_AT_01_THRESHOLDS

    return {"dataset": dataset.dataset_name, "split": cfg.data.val_set, "persons": len(dataset), "boxes": boxes,
            "flip_test": flip, "flip_shift": cfg.eval.flip_shift if flip else None,
            "metric": "AP (pycocotools)" if dataset.dataset_name == "coco" else f"PCKh@{cfg.eval.pck_threshold}",
            **({"mean_at_01_threshold": MEAN_AT_01_THRESHOLDS[cfg.eval.mean_at_01]} if dataset.dataset_name == "mpii" else {})}


def evaluate(model: nn.Module, dataset, cfg: Config, device: torch.device, flip: bool | None = None,
             progress: bool = True) -> dict:
    """Predict and score; the result carries the protocol beside the numbers."""
    flip = cfg.eval.flip_test if flip is None else flip
    start = time.perf_counter()
    pred = predict_dataset(model, dataset, cfg, device, flip=flip, progress=progress)
    metrics = score_predictions(pred, dataset, cfg)
    metrics["protocol"] = protocol(cfg, dataset, flip)
    # persons not scored: left out when the data was loaded (skip mode) or unreadable when evaluated
    metrics["persons_evaluated"] = int(len(pred["index"]))
    metrics["persons_dropped"] = int(len(dataset.skipped) + len(pred["unreadable"]))
    metrics["eval_seconds"] = time.perf_counter() - start
    return metrics


def write_metrics(path: str | Path, metrics: dict, cfg: Config, model: nn.Module, extra: dict | None = None) -> dict:
    """Metrics file of a run: numbers, protocol, Params and FLOPs (the paper's columns), config."""
    from cdkd.engine.run import atomic_write_text, portable_config, portable_path
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
        "teacher": (("random " + cfg.teacher.arch) if cfg.teacher.random
                    else portable_path(cfg.teacher.checkpoint, Path(path).parent))
        if cfg.train.mode == "distill" else None,
        **(extra or {}),
        "config": portable_config(cfg, Path(path).parent),  # paths relative: the record survives a move
    }

    atomic_write_text(path, json.dumps(record, indent=2, default=float))
    return record
