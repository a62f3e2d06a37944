"""Training throughput: SimCC baseline step, teacher forward and the CDKD distillation step.

What CDKD costs during training (Gu et al., Sec. III; Eq. 8): a distillation step is a student
step plus a frozen-teacher forward plus the distiller (SAPE projectors and SAU, Eq. 1-5; CCA,
Eq. 6-7; the ETHT temperature, Eq. 9-12). The ratio

    overhead = t(distill step) / (t(student step) + t(teacher forward))

measures the distiller's own cost: 1.0 means it is free. Inputs are random tensors (no data
loading; see ``data_pipeline.py``); each step is the engine's own ``compute_losses`` followed by
backward and an Adam step, the distiller in ``fidelity: paper`` mode with the 'light' projectors.

Cases: the demo presets (``cdkd/presets/demo_*.yaml``: hrnet_w8_tiny students at 32 and 64 under
an hrnet_w8_tiny teacher at 128, k=2) and the paper's sizes (HRNet-W32 student at 64, teacher at
256, k=3; on the CPU with a small batch and few iterations).

    python benchmarks/train_step.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import measure, parse_args, round_to, write_result

TARGET_OVERHEAD = 1.2


def cases(quick: bool, device: str) -> list[dict]:
    """Benchmark cases: preset, overrides and batch size (None: the preset's)."""
    cpu = device == "cpu"
    demo = [
        {"name": "demo 32 <- 128", "preset": "demo_student", "overrides": ["model.input_size=[32,32]"],
         "batch": None},  # None: the preset's train.batch_size
        {"name": "demo 64 <- 128", "preset": "demo_student", "overrides": [], "batch": None},
    ]
    paper = [
        {"name": "paper W32 64 <- 256", "preset": "mpii_w32_64_distill",
         "overrides": ["distill.projector=light", "distill.fidelity=paper"], "batch": 4 if cpu else 32},
    ]
    if not quick:
        paper.append({"name": "paper W32 32 <- 256", "preset": "mpii_w32_32_distill",
                      "overrides": ["distill.projector=light", "distill.fidelity=paper"],
                      "batch": 4 if cpu else 128})
    return demo + paper


def random_batch(student, teacher, batch: int, device: torch.device) -> dict:
    """Images, teacher images and SimCC targets of the right shapes, seeded."""
    g = torch.Generator().manual_seed(0)
    h, w = student.input_size
    th, tw = teacher.input_size
    k, j = student.split_ratio, student.num_joints
    out = {
        "image": torch.randn(batch, 3, h, w, generator=g),  # [B, 3, H, W]
        "teacher_image": torch.randn(batch, 3, th, tw, generator=g),  # [B, 3, H_t, W_t]
        "target_x": torch.randint(0, round(w * k), (batch, j), generator=g),  # [B, J]
        "target_y": torch.randint(0, round(h * k), (batch, j), generator=g),  # [B, J]
        "target_weight": torch.ones(batch, j),  # [B, J]
    }
    return {key: value.to(device) for key, value in out.items()}


def build_case(case: dict, device: torch.device):
    """The config, student, teacher and distiller of one case (random weights)."""
    from cdkd.config import load_config
    from cdkd.engine.train import make_distiller
    from cdkd.models import build_pose_model

    cfg = load_config(case["preset"], case["overrides"] + ["train.device=" + device.type])
    torch.manual_seed(0)
    joints = 16 if cfg.data.dataset == "mpii" else 17
    m, t = cfg.model, cfg.teacher
    student = build_pose_model(m.arch, joints, tuple(m.input_size), m.split_ratio).to(device).train()
    teacher = build_pose_model(t.arch, joints, tuple(t.input_size), t.split_ratio).to(device).eval()
    teacher.requires_grad_(False)
    distiller = make_distiller(cfg, student, teacher).to(device).train()
    return cfg, student, teacher, distiller


def step_functions(cfg, student, teacher, distiller, batch: dict, device: torch.device) -> dict:
    """The three timed functions, each one full step (forward, loss, backward, Adam)."""
    from cdkd.engine.train import compute_losses

    baseline = SimpleNamespace(cfg=cfg, device=device, model=student, teacher=None, distiller=None)
    distill = SimpleNamespace(cfg=cfg, device=device, model=student, teacher=teacher, distiller=distiller)
    opt_baseline = torch.optim.Adam(student.parameters(), lr=1e-3)
    opt_distill = torch.optim.Adam(list(student.parameters()) + distiller.trainable_parameters(), lr=1e-3)

    def train_step(state, optimizer):
        loss, _, _ = compute_losses(state, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def teacher_forward():
        with torch.no_grad():
            teacher(batch["teacher_image"])

    return {
        "student_step": lambda: train_step(baseline, opt_baseline),
        "teacher_forward": teacher_forward,
        "distill_step": lambda: train_step(distill, opt_distill),
    }


def distiller_parts(student, teacher, distiller, batch: dict, device: torch.device) -> dict:
    """Forward + backward of the distiller alone and of its parts, on fixed model outputs.

    Returns:
        name -> function of no arguments (the student outputs are leaves that require grad, so
        the backward stops at the distiller's inputs).
    """
    from cdkd.distill.cca import cca_loss
    from cdkd.distill.sape import feature_cosine_loss
    from cdkd.models import PoseOutput

    with torch.no_grad():
        out = student(batch["image"])
        t_out = teacher(batch["teacher_image"])
    feature = out.feature.detach().requires_grad_()  # [B, J, h, w]
    x, y = out.x.detach().requires_grad_(), out.y.detach().requires_grad_()  # [B, J, W*k], [B, J, H*k]
    weight = batch["target_weight"]
    zero = torch.zeros((), device=device)
    sape = distiller.sape
    tau = torch.tensor(4.0, device=device, requires_grad=True)
    parts = {"whole distiller": lambda: distiller(PoseOutput(x, y, feature), t_out, weight, zero).total.backward()}
    if sape is not None:
        parts["SAPE projectors (K x Linear + ReLU)"] = (
            lambda: torch.stack([p(feature) for p in sape.projectors], 1).sum().backward())
        if sape.sau is not None:
            parts["SAU (Eq. 1-3)"] = lambda: sape.sau(feature).sum().backward()
        parts["SAPE + L_fea (Eq. 1-5)"] = (
            lambda: feature_cosine_loss(sape(feature)[0], t_out.feature).backward())
    parts["CCA L_logit (Eq. 6-7)"] = (
        lambda: cca_loss(x, y, t_out.x, t_out.y, tau, weight, distiller.cfg.merge, "paper")["loss"].backward())
    return parts


def profile_ops(fn, device: torch.device, steps: int = 3, top: int = 10) -> list[list]:
    """The ops with the largest self time over a few calls of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    total = sum(getattr(e, key) for e in averages) or 1.0
    events = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [[e.key, e.count // steps, round_to(getattr(e, key) / 1e3 / steps), round_to(100 * getattr(e, key) / total)]
            for e in events]


def explain_overhead(case: dict, overhead: float, student, teacher, distiller, batch: dict,
                     device: torch.device) -> tuple[list[dict], str]:
    """Two tables for a case over the target (the distiller's parts, its top ops) and a one-line note."""
    parts = distiller_parts(student, teacher, distiller, batch, device)
    times = measure(parts, device, warmup=2, iters=11)
    rows = [[name, round_to(1e3 * t["median_s"])] for name, t in times.items()]
    ms = {name: 1e3 * t["median_s"] for name, t in times.items()}
    sape = ms.get("SAPE + L_fea (Eq. 1-5)", 0.0)
    note = (f"{case['name']}: over the target; the distiller alone takes {ms['whole distiller']:.1f} ms per step, "
            f"of which SAPE + L_fea {sape:.1f} ms (projectors {ms.get('SAPE projectors (K x Linear + ReLU)', 0.0):.1f}"
            f" ms, SAU {ms.get('SAU (Eq. 1-3)', 0.0):.1f} ms) and CCA {ms['CCA L_logit (Eq. 6-7)']:.1f} ms.")
    return [
        {"title": f"Distiller parts, forward + backward, {case['name']} (overhead {overhead:.2f})",
         "columns": ["part", "ms (median)"], "rows": rows},
        {"title": f"Top ops of the distiller forward + backward (torch.profiler), {case['name']}",
         "columns": ["op", "calls / step", "self ms / step", "% self time"],
         "rows": profile_ops(parts["whole distiller"], device)},
    ], note


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(__doc__.split("\n")[0], argv)
    device = torch.device(args.device)
    rows, summary, profiles, settings, explanations = [], {}, [], [], []
    for case in cases(args.quick, args.device):
        cfg, student, teacher, distiller = build_case(case, device)
        b = case["batch"] or cfg.train.batch_size
        batch = random_batch(student, teacher, b, device)
        fns = step_functions(cfg, student, teacher, distiller, batch, device)
        paper_size = case["preset"].startswith("mpii")
        warmup, iters = (1, 3) if paper_size and args.device == "cpu" else (2, 5 if args.quick else 15)
        times = measure(fns, device, warmup, iters)
        s, t, d = (times[n]["median_s"] for n in ("student_step", "teacher_forward", "distill_step"))
        overhead = d / (s + t)
        rows.append([case["name"], f"{student.arch} {student.input_size[0]} / {teacher.arch} {teacher.input_size[0]}",
                     b, round_to(1e3 * s), round_to(1e3 * t), round_to(1e3 * d), round_to(b / s), round_to(b / t),
                     round_to(b / d), round_to(overhead), iters])
        summary[f"overhead {case['name']}"] = round_to(overhead)
        settings.append({"case": case["name"], "preset": case["preset"], "overrides": case["overrides"],
                         "batch": b, "warmup": warmup, "iters": iters,
                         "distill": {"fidelity": cfg.distill.fidelity, "projector": cfg.distill.projector,
                                     "feature": cfg.distill.feature, "logit": cfg.distill.logit,
                                     "etht": cfg.distill.etht}, "times": times})
        print(f"{case['name']}: student {1e3 * s:.1f} ms, teacher {1e3 * t:.1f} ms, distill {1e3 * d:.1f} ms, "
              f"overhead {overhead:.3f}", file=sys.stderr)
        if overhead > TARGET_OVERHEAD and not paper_size:
            tables, note = explain_overhead(case, overhead, student, teacher, distiller, batch, device)
            profiles += tables
            explanations.append(note)
    demo = [v for k, v in summary.items() if k.startswith("overhead demo")]
    notes = [
        ("Times are medians over interleaved rounds (student step, teacher forward, distill step), after "
        "warm-up; samples/s = batch / median step time."),
        ("overhead = distill step / (student step + teacher forward); 1.0 means the distiller costs nothing. "
        f"Target on the CPU at the demo preset: <= {TARGET_OVERHEAD}."),
        ("Every step: engine compute_losses (forward + SimCC loss [+ teacher forward under no_grad + Distiller]), "
        "backward, Adam step. Random inputs, random weights."),
    ]
    if args.device == "cpu":
        notes.append("Paper sizes on the CPU: batch 4 and 3 timed rounds only; the ratio, not the absolute "
                     "speed, is the point there.")
    notes += explanations
    write_result(
        args, "train_step", "train_step.py", started,
        title="Training step throughput and CDKD overhead",
        description=__doc__.split("\n\n")[0],
        settings={"cases": settings, "target_overhead": TARGET_OVERHEAD},
        summary={**summary, "demo overhead within target": all(v <= TARGET_OVERHEAD for v in demo)},
        tables=[{"title": "Step times (ms, median) and throughput (samples/s)",
                 "columns": ["case", "student / teacher", "batch", "student step ms", "teacher fwd ms",
                             "distill step ms", "student samples/s", "teacher samples/s",
                             "distill samples/s", "overhead", "rounds"],
                 "rows": rows}] + profiles,
        notes=notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
