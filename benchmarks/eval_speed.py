"""Evaluation speed: decoding, mapping back, OKS-NMS and COCOeval for a COCO-sized prediction set.

The COCO protocol of the paper's Table II (SimCC/HRNet top-down evaluation reused by CDKD) after
the network has run: SimCC decoding of every person's x/y logits (:func:`cdkd.codec.decode`,
optionally the flip-test average with :func:`cdkd.codec.flip_back`; softmaxes included), the map from crop to image
pixels (:func:`cdkd.data.transforms.transform_preds`), rescoring, per-image OKS-NMS and pycocotools
``COCOeval`` (:func:`cdkd.metrics.coco_keypoint_eval`). The set has the size of COCO val2017's
person keypoint annotations (about 6000 persons on 2700 images; generated here with 17 keypoints
in random boxes); the logits are random noise plus a peak near each true joint (a few bins of
jitter), so that matching and AP are not degenerate. Target: under 30 s in all.

    python benchmarks/eval_speed.py [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import parse_args, round_to, write_result

TARGET_S = 30.0
INPUT = (64, 64)  # (H, W) of the student crop
K = 3.0  # SimCC split ratio
J = 17


def ground_truth(images: int, persons: int, rng: np.random.Generator) -> dict:
    """A COCO person-keypoints file: ``persons`` people spread over ``images`` 640x480 images."""
    owner = np.sort(np.concatenate([np.arange(images), rng.integers(0, images, persons - images)]))
    anns = []
    for i, image_id in enumerate(owner.tolist()):
        w, h = rng.uniform(30, 300), rng.uniform(60, 400)
        x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - min(h, 470))
        h = min(h, 480 - y)
        xy = np.stack([x + rng.uniform(0.05, 0.95, J) * w, y + rng.uniform(0.05, 0.95, J) * h], axis=1)
        vis = rng.choice([0, 1, 2], size=J, p=[0.15, 0.15, 0.7])
        kps = np.concatenate([np.where(vis[:, None] > 0, xy, 0.0), vis[:, None]], axis=1)  # [J, 3]
        anns.append({"id": i + 1, "image_id": image_id + 1, "category_id": 1, "iscrowd": 0,
                     "bbox": [round(float(v), 2) for v in (x, y, w, h)], "area": round(float(0.6 * w * h), 2),
                     "keypoints": [round(float(v), 2) for v in kps.reshape(-1)], "num_keypoints": int((vis > 0).sum())})
    return {"images": [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": 640, "height": 480}
                       for i in range(images)],
            "annotations": anns,
            "categories": [{"id": 1, "name": "person", "supercategory": "person",
                            "keypoints": [f"k{j}" for j in range(J)], "skeleton": []}]}


def network_outputs(gt: dict, rng: np.random.Generator) -> dict:
    """What the model would give: boxes as centre/scale, and x/y logits peaked near the truth."""
    from cdkd.data.transforms import box_to_center_scale, get_affine_transform

    h, w = INPUT
    cx, cy = round(w * K), round(h * K)
    n = len(gt["annotations"])
    x = rng.standard_normal((n, J, cx), dtype=np.float32)  # [N, J, W*k]
    y = rng.standard_normal((n, J, cy), dtype=np.float32)  # [N, J, H*k]
    centers, scales, image_ids, areas = [], [], [], []
    for i, ann in enumerate(gt["annotations"]):
        center, scale = box_to_center_scale(ann["bbox"], aspect_ratio=w / h)
        matrix = get_affine_transform(center, scale, 0.0, INPUT)
        joints = np.asarray(ann["keypoints"], dtype=np.float64).reshape(J, 3)[:, :2]
        crop = joints @ matrix[:, :2].T + matrix[:, 2]  # [J, 2] crop px
        bins = np.rint(crop * K + rng.normal(0, 2.0, crop.shape)).astype(int)  # a few bins of error
        x[i, np.arange(J), np.clip(bins[:, 0], 0, cx - 1)] += 8.0
        y[i, np.arange(J), np.clip(bins[:, 1], 0, cy - 1)] += 8.0
        centers.append(center)
        scales.append(scale)
        image_ids.append(ann["image_id"])
        areas.append(float(np.prod(scale * 200.0)))
    return {"x": x, "y": y, "center": np.stack(centers), "scale": np.stack(scales),
            "image_ids": np.asarray(image_ids), "areas": np.asarray(areas)}


def mirrored_stand_in(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits a flip-consistent model would give for the mirrored crops.

    The inverse of :func:`cdkd.codec.flip_back` with the exact shift: swap the left/right joints,
    reverse the x bins and move them k - 1 bins left (flipped bin ``c`` holds plain bin
    ``W*k - k - c``; the last k - 1 bins repeat the edge). Then the flip-test average equals the plain
    prediction and the AP of both modes agrees.
    """
    from cdkd.joints import COCO_META, flip_permutation

    swap = flip_permutation(COCO_META.flip_pairs, J)
    shift = round(K) - 1
    rev = x[:, swap, ::-1]  # [N, J, W*k]
    fx = np.concatenate([rev[..., shift:], np.repeat(rev[..., -1:], shift, axis=-1)], axis=-1)
    return np.ascontiguousarray(fx), np.ascontiguousarray(y[:, swap])


def evaluate(out: dict, gt_path: Path, flip: bool, chunk: int = 1024) -> tuple[dict, dict]:
    """The timed part: decode (+ flip average), map back, rescoring + OKS-NMS + COCOeval."""
    from cdkd.codec import decode, flip_back
    from cdkd.joints import COCO_META
    from cdkd.data.transforms import transform_preds
    from cdkd.metrics import coco_keypoint_eval, select_results

    times = {}
    start = time.perf_counter()
    coords, scores = [], []
    for s in range(0, len(out["x"]), chunk):
        px = torch.from_numpy(out["x"][s:s + chunk]).softmax(-1)  # [B, J, W*k]
        py = torch.from_numpy(out["y"][s:s + chunk]).softmax(-1)  # [B, J, H*k]
        if flip:
            mx = torch.from_numpy(out["flip_x"][s:s + chunk]).softmax(-1)  # mirrored pass [B, J, W*k]
            my = torch.from_numpy(out["flip_y"][s:s + chunk]).softmax(-1)  # [B, J, H*k]
            fx, fy = flip_back(mx, my, COCO_META.flip_pairs, K, shift="exact")
            px, py = (px + fx) / 2, (py + fy) / 2
        c, p = decode(px, py, K, probabilities=True)  # [B, J, 2], [B, J]
        coords.append(c.numpy())
        scores.append(p.numpy())
    crop, conf = np.concatenate(coords), np.concatenate(scores)
    times["decode" + (" + flip average" if flip else "")] = time.perf_counter() - start

    start = time.perf_counter()
    image_xy = transform_preds(crop, out["center"], out["scale"], INPUT)  # [N, J, 2]
    times["transform_preds"] = time.perf_counter() - start

    predictions = {"keypoints": np.concatenate([image_xy, conf[..., None]], axis=-1),  # [N, J, 3]
                   "image_ids": out["image_ids"], "box_scores": np.ones(len(crop)), "areas": out["areas"]}
    start = time.perf_counter()
    select_results(predictions, oks_thr=0.9, in_vis_thr=0.2)
    times["rescore + OKS-NMS (alone)"] = time.perf_counter() - start
    start = time.perf_counter()
    metrics = coco_keypoint_eval(predictions, gt_path, oks_thr=0.9, in_vis_thr=0.2)
    times["rescore + OKS-NMS + COCOeval"] = time.perf_counter() - start
    return times, metrics


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(__doc__.split("\n")[0], argv)
    images, persons = 2700, 6000
    rng = np.random.default_rng(0)
    gt = ground_truth(images, persons, rng)
    out = network_outputs(gt, rng)
    out["flip_x"], out["flip_y"] = mirrored_stand_in(out["x"], out["y"])
    rows, summary = [], {}
    with tempfile.TemporaryDirectory(prefix="cdkd_bench_eval_") as tmp:
        gt_path = Path(tmp) / "person_keypoints_bench.json"
        gt_path.write_text(json.dumps(gt))
        for flip in (False, True):
            times, metrics = evaluate(out, gt_path, flip)
            total = sum(v for k, v in times.items() if k != "rescore + OKS-NMS (alone)")
            label = "flip test" if flip else "plain"
            for stage, seconds in times.items():
                rows.append([label, stage, round_to(seconds)])
            rows.append([label, "total (decode + map + evaluation)", round_to(total)])
            summary[f"total s ({label})"] = round_to(total)
            summary[f"AP ({label})"] = round_to(metrics["AP"])
            print(f"{label}: {total:.1f} s, AP {metrics['AP']:.3f}", file=sys.stderr)
    summary["within target"] = all(v < TARGET_S for k, v in summary.items() if k.startswith("total"))
    write_result(
        args, "eval_speed", "eval_speed.py", started,
        title="Evaluation speed (COCO-sized prediction set)",
        description=__doc__.split("\n\n")[0],
        settings={"images": images, "persons": persons, "joints": J, "input_size": list(INPUT), "split_ratio": K,
                  "oks_thr": 0.9, "in_vis_thr": 0.2, "target_s": TARGET_S},
        summary=summary,
        tables=[{"title": f"Seconds per stage ({persons} persons, {images} images)",
                 "columns": ["mode", "stage", "seconds"], "rows": rows}],
        notes=["'rescore + OKS-NMS (alone)' is also inside 'rescore + OKS-NMS + COCOeval'; the total counts it once.",
               ("The AP only shows that the synthetic predictions are matched (peaks within a few bins of the truth); "
               "it is not a model result."),
               ("Flip test: the mirrored pass's logits are built from the plain ones as a flip-consistent model "
               "would give them (see mirrored_stand_in), so both modes reach the same AP.")],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
