"""GPU training throughput and memory at the paper's sizes, and the projected time of each row.

For every row of Tables I-II (and its teacher) this times one whole training step of the engine
(``compute_losses``, backward, Adam; random inputs of the preset's batch, no data loading) in fp32
(PyTorch's defaults: TF32 convolutions, fp32 matmuls), bf16 autocast, and bf16 with channels_last,
records samples/s and the peak GPU memory of the step, and projects the row's full training
(epochs x training persons / samples/s; data loading and evaluation not included) on this GPU.

    python benchmarks/gpu.py --device cuda          # writes results/bench/gpu_<device name>.json
    python benchmarks/gpu.py --device cpu --quick   # smoke run of the script on tiny models
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import measure, parse_args, round_to, write_result

# Training persons per epoch: MPII train (SimCC/HRNet's annot/train.json) and COCO train2017 persons
# with keypoints (the count the SimCC/HRNet COCO loaders report).
PERSONS = {"mpii": 22246, "coco": 149813}

# (row, preset, mode) at the paper's sizes; distill rows use the paper form with light projectors
# unless named "released" (the full projectors of the authors' code, frozen).
ROWS = [
    ("COCO teacher W48@256 k3", "coco_w48_256_teacher_k3", "teacher", []),
    ("COCO W48@64 SimCC", "coco_w48_64_baseline", "baseline", []),
    ("COCO W48@64 CDKD (paper, light SAPE)", "coco_w48_64_distill", "distill", ["distill.fidelity=paper"]),
    ("MPII teacher W32@256 k3", "mpii_w32_256_teacher_k3", "teacher", []),
    ("MPII W32@64 SimCC", "mpii_w32_64_baseline", "baseline", []),
    ("MPII W32@64 CDKD (paper, light SAPE)", "mpii_w32_64_distill", "distill", ["distill.fidelity=paper"]),
    ("MPII W32@64 CDKD (released, full SAPE)", "mpii_w32_64_distill", "distill", ["distill.fidelity=official"]),
    ("MPII teacher W32@256 k2", "mpii_w32_256_teacher_k2", "teacher", []),
    ("MPII W32@32 SimCC", "mpii_w32_32_baseline", "baseline", []),
    ("MPII W32@32 CDKD (paper, light SAPE)", "mpii_w32_32_distill", "distill", ["distill.fidelity=paper"]),
    ("COCO teacher W32@256 k2", "coco_w32_256_teacher_k2", "teacher", []),
    ("COCO W32@32 SimCC", "coco_w32_32_baseline", "baseline", []),
    ("COCO W32@32 CDKD (paper, light SAPE)", "coco_w32_32_distill", "distill", ["distill.fidelity=paper"]),
]
SMOKE_ROWS = [
    ("demo teacher w8_tiny@128", "demo_teacher", "teacher", []),
    ("demo w8_tiny@32 SimCC", "demo_student", "baseline", ["model.input_size=[32,32]", "train.mode=baseline"]),
    ("demo w8_tiny@32 CDKD (paper)", "demo_student", "distill", ["model.input_size=[32,32]"]),
]
PRECISIONS = {"fp32": [], "bf16": ["train.amp=bf16"], "bf16 + channels_last": ["train.amp=bf16", "train.channels_last=true"]}


def build_step(preset: str, overrides: list[str], device: torch.device):
    """One whole training step of the engine for a preset (random weights, random seeded batch)."""
    from cdkd.config import load_config
    from cdkd.engine.train import build_optimizer, compute_losses, make_distiller
    from cdkd.models import build_pose_model

    cfg = load_config(preset, overrides + [f"train.device={device.type}", "distill.calibrate_share=0"])
    joints = 16 if cfg.data.dataset == "mpii" else 17
    m, t = cfg.model, cfg.teacher
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    student = build_pose_model(m.arch, joints, tuple(m.input_size), m.split_ratio).to(device).train()
    student = student.to(memory_format=fmt)
    params, etht, teacher, distiller = list(student.parameters()), [], None, None
    if cfg.train.mode == "distill":
        teacher = build_pose_model(t.arch, joints, tuple(t.input_size), t.split_ratio).to(device).eval()
        teacher = teacher.requires_grad_(False).to(memory_format=fmt)
        distiller = make_distiller(cfg, student, teacher).to(device).train()
        etht = distiller.etht_parameters()
        params += [p for p in distiller.trainable_parameters() if all(p is not q for q in etht)]
    optimizer = build_optimizer(cfg, params, etht)
    g = torch.Generator().manual_seed(0)
    b, (h, w), k = cfg.train.batch_size, m.input_size, m.split_ratio
    batch = {
        "image": torch.randn(b, 3, h, w, generator=g),  # [B, 3, h, w]
        "target_x": torch.randint(0, int(w * k), (b, joints), generator=g),  # [B, J]
        "target_y": torch.randint(0, int(h * k), (b, joints), generator=g),  # [B, J]
        "target_weight": torch.ones(b, joints),  # [B, J]
    }
    if teacher is not None:
        batch["teacher_image"] = torch.randn(b, 3, *t.input_size, generator=g)  # [B, 3, H, W]
    batch = {key: value.to(device) for key, value in batch.items()}

    def step():
        loss, _, _ = compute_losses(student, batch, cfg, device, teacher, distiller)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    n_params = sum(p.numel() for p in student.parameters())
    return cfg, step, n_params


def peak_memory(step, device: torch.device) -> float | None:
    """GiB of GPU memory at the peak of one step (weights, optimizer state and activations)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def run_row(row, device: torch.device, warmup: int, iters: int) -> list[dict]:
    name, preset, mode, overrides = row
    out = []
    for precision, extra in PRECISIONS.items():
        if device.type == "cpu" and precision != "fp32":
            continue
        try:
            cfg, step, n_params = build_step(preset, overrides + extra, device)
            timing = measure({"step": step}, device, warmup, iters)["step"]
            memory = peak_memory(step, device)
        except torch.OutOfMemoryError as error:  # recorded, not fatal: the other rows still run
            out.append({"row": name, "precision": precision, "error": f"out of memory: {str(error)[:120]}"})
            continue
        finally:
            step = None  # free the models before the next case
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rate = cfg.train.batch_size / timing["median_s"]
        persons = PERSONS[cfg.data.dataset]
        hours = cfg.train.epochs * persons / rate / 3600
        out.append({"row": name, "preset": preset, "mode": mode, "precision": precision,
                    "batch": cfg.train.batch_size, "epochs": cfg.train.epochs, "params_m": round_to(n_params / 1e6, 4),
                    "step_ms": round_to(timing["median_s"] * 1e3), "samples_per_s": round_to(rate),
                    "peak_gib": None if memory is None else round_to(memory),
                    "projected_hours": round_to(hours)})
        print(f"{name:42s} {precision:22s} {rate:9.1f} samples/s  "
              f"{'' if memory is None else f'{memory:6.2f} GiB'}  {hours:7.1f} h", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(__doc__.splitlines()[0], argv, extra=lambda p: (
        p.add_argument("--warmup", type=int, default=5, help="untimed steps per case (default: 5)"),
        p.add_argument("--iters", type=int, default=20, help="timed steps per case (default: 20)")))
    device = torch.device(args.device)
    rows = SMOKE_ROWS if args.quick else ROWS
    warmup, iters = (1, 2) if args.quick else (args.warmup, args.iters)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    results: list[dict] = []
    for i, row in enumerate(rows):  # the file is rewritten after every row: a run cut short keeps what it measured
        results += run_row(row, device, warmup, iters)
        write(args, device, results, warmup, iters, started, complete=i == len(rows) - 1)
    return 0


def write(args, device: torch.device, results: list[dict], warmup: int, iters: int, started: float,
          complete: bool) -> None:
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    stem = "gpu_" + re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    columns = ["row", "precision", "batch", "step_ms", "samples_per_s", "peak_gib", "epochs", "projected_hours"]
    write_result(
        args, stem, "gpu.py", started,
        title=f"Training step at the paper's sizes on {name}",
        description="One whole engine step (forward, Eq. 8, backward, Adam) on random inputs of the preset's "
                    "batch; projected hours = epochs x training persons / samples/s (no data loading, no evaluation).",
        settings={"device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
                  "cudnn_benchmark": torch.backends.cudnn.benchmark,
                  "tf32_conv": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                  "warmup": warmup, "iters": iters, "persons_per_epoch": PERSONS},
        summary={f"{r['row']} [{r['precision']}] samples/s": r.get("samples_per_s") for r in results},
        tables=[{"title": "Training step and projected full training", "columns": columns,
                 "rows": [[r.get(c) for c in columns] for r in results]}],
        results=results,
        complete=complete,
        notes=["Throughput of the model step alone: a real run also needs the data loader to keep up "
               "(DataLoader workers) and spends time in evaluation."],
    )


if __name__ == "__main__":
    raise SystemExit(main())
