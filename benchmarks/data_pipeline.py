"""Data pipeline throughput: paired student/teacher crops per second in one worker process.

CDKD's data side (Gu et al., Sec. III; PAPER_NOTES item 7) decodes each original image once and
warps it twice with the same augmentation: to the student size (32 or 64) and to the teacher
size (256; 128 in the demo). This script measures ``TopDownDataset.__getitem__`` (decode, HRNet
augmentation, two ``cv2.warpAffine`` crops, normalisation, SimCC targets) in the main process,
i.e. what one DataLoader worker delivers, on a small synthetic COCO-style set of JPEGs written by
``cdkd.data.synthetic.synthesize`` into a temporary folder. A training run needs
``workers * samples/s >= batch / step time`` (see ``train_step.json``) to keep the model busy.

    python benchmarks/data_pipeline.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import measure, parse_args, round_to, write_result


def cases(quick: bool) -> list[dict]:
    """(name, student size, teacher size or None, k)."""
    out = [
        {"name": "baseline: student 64 only", "student": 64, "teacher": None, "k": 2.0},
        {"name": "demo: student 32 + teacher 128", "student": 32, "teacher": 128, "k": 2.0},
        {"name": "demo: student 64 + teacher 128", "student": 64, "teacher": 128, "k": 2.0},
        {"name": "demo: student 64 + teacher 128, decoded cache", "student": 64, "teacher": 128, "k": 2.0,
         "cache": "decoded"},
        {"name": "paper: student 64 + teacher 256", "student": 64, "teacher": 256, "k": 3.0},
    ]
    if not quick:
        out.append({"name": "paper: student 32 + teacher 256", "student": 32, "teacher": 256, "k": 2.0})
    return out


def dataset_for(root: Path, case: dict):
    """The training dataset (augmentation on) of a case, over the synthetic COCO-style set (each
    sample decodes its JPEG, or with ``cache: decoded`` crops the images decoded once)."""
    from cdkd.config import load_config
    from cdkd.data.topdown import build_dataset

    cfg = load_config(None, [f"data.root={root / 'coco'}", "data.dataset=coco", "data.train_set=train",
                             "data.half_body_prob=0.3", "data.scale_factor=0.35", "data.rotation_factor=45",
                             f"data.cache={case.get('cache', 'none')}", f"data.cache_dir={root / 'cache'}"])
    s, t = case["student"], case["teacher"]
    return build_dataset(cfg, "train", (s, s), case["k"], teacher_size=None if t is None else (t, t), train=True)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(__doc__.split("\n")[0], argv)
    from cdkd.data.synthetic import synthesize
    from cdkd.data.topdown import read_image

    persons = 150 if args.quick else 600
    rounds = 3 if args.quick else 5
    rows, summary = [], {}
    with tempfile.TemporaryDirectory(prefix="cdkd_bench_data_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        info = synthesize(root, train=persons, val=1, seed=0, workers=1)
        synth_s = time.perf_counter() - t0
        torch.manual_seed(0)
        datasets = {case["name"]: dataset_for(root, case) for case in cases(args.quick)}
        first = next(iter(datasets.values()))
        n = len(first)
        images = sorted({rec.image for rec in first.records})
        sizes = np.array([read_image(p).shape[:2] for p in images[:20]])

        def decode_all():
            for rec in first.records:
                read_image(rec.image)

        fns = {"JPEG decode only (cv2.imread + RGB)": decode_all}
        for name, ds in datasets.items():
            fns[name] = (lambda d=ds: [d[i] for i in range(len(d))])
        times = measure(fns, "cpu", warmup=1, iters=rounds)
        for name, t in times.items():
            per_s = n / t["median_s"]
            rows.append([name, n, round_to(1e3 * t["median_s"] / n), round_to(per_s)])
            summary[f"{name} (samples/s)"] = round_to(per_s)
            print(f"{name}: {per_s:.0f} samples/s", file=sys.stderr)
    write_result(
        args, "data_pipeline", "data_pipeline.py", started,
        title="Data pipeline: paired crops per second per worker process",
        description=__doc__.split("\n\n")[0],
        settings={"persons": n, "images": info["splits"]["train"]["images"], "rounds": rounds,
                  "image_size_hw_median": [int(v) for v in np.median(sizes, axis=0)],
                  "augmentation": "COCO: scale 0.35, rotation 45 (p 0.6), flip, half-body 0.3",
                  "synthesis_seconds": round(synth_s, 2), "cases": cases(args.quick)},
        summary=summary,
        tables=[{"title": "One process, augmentation on (median over rounds of a full pass)",
                 "columns": ["pipeline", "samples", "ms / sample", "samples / s"], "rows": rows}],
        notes=[
            ("A sample is one person: decode its image, draw the augmentation, warp the student crop "
            "(and the teacher crop with the same matrix up to scale), normalise, encode SimCC targets."),
            (f"Synthetic JPEGs are about {int(np.median(sizes[:, 1]))}x{int(np.median(sizes[:, 0]))} (WxH); "
            "COCO images are about 640x480, so decoding costs roughly twice as much there."),
            "The file cache is warm (one untimed pass first).",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
