"""Training throughput: whole training steps with data, today's pipeline against the new one,
and the SimCC baseline step, teacher forward and CDKD distillation step on random inputs.

Part 1, whole steps (issue 21): the engine's own ``build_training`` + ``make_loader`` +
``train_one_epoch`` on the synthetic people at the demo preset (hrnet_w8_tiny student, batch 32,
hrnet_w8_tiny teacher at 128x128, k=2; untrained teacher weights, same cost), a baseline and a
distill run at 32x32 and 64x64, each with

* the ``old`` pipeline: every sample decodes its JPEG (``data.cache=none``), torch keeps its
  default intra-op threads next to the loader workers (``train.threads`` = that number) and the
  teacher runs in the trainer on every batch (``teacher.cache=none``, ``teacher.forward_in=trainer``);
* the ``new`` pipeline: images decoded once into a memory-mapped file under the data root
  (``data.cache=decoded``, the same crops bit for bit), ``train.threads=auto`` (one loader process
  beside a one-thread trainer on 2 cores), and the teacher's outputs read from the teacher-output
  cache (``teacher.cache=disk``, the same bits), filled by an earlier pass over the same epochs:
  what a study's students after the first one of a seed run;
* ``cold`` (distill only): the new pipeline with an empty teacher cache before every slice, the
  first student of a seed: the teacher runs in the loader worker (``teacher.forward_in=auto``),
  beside the student's step, and its outputs are written;
* ``all`` and ``all-cold``: ``new`` and ``cold`` with ``train.threads=all`` (opt-in): the batches
  are cut in the training process and every core computes its ops (and the teacher's, when cold).
  Same samples, other float rounding than ``auto``.

All run the same code otherwise (the teacher forward under ``inference_mode``, the look-up
normalisation). Epoch slices of every case alternate in rounds, so a busy phase of the shared
machine slows all of them alike; samples/s is steps x batch / wall time of the slice, loader start
included. The CPU steal time of the whole measurement (``/proc/stat``) is recorded.

Part 2, model steps on random inputs:

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

    python benchmarks/train_step.py [--quick | --tiny] [--device cpu|cuda] [--data data/bench]

``--quick``: 3 rounds (none started after 150 s of measuring), 1000 persons, demo sizes only in
part 2 (a few minutes on 2 cores); ``--tiny``: a smoke test of every code path (seconds; numbers
meaningless). Part 1's slices are :data:`SLICE_STEPS` (31) steps with ``train.log_every`` = 31, so
a slice measures the Eq. 8 share diagnostics twice (its first and last step): 2 per 31 steps, the
rate of a demo run (``log_every: 20`` and each epoch's last step: 8 per 125 steps). They cost two
extra backward passes each in a distill step (none in a baseline step).
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import measure, parse_args, round_to, write_result

TARGET_OVERHEAD = 1.2
# whole-step slices: a whole epoch of 1000 persons at batch 32 (the loader's start is a small part of
# it), logged at its first and last step (whole_step_config): a demo run's rate of share diagnostics
SLICE_STEPS = 31
QUICK_BUDGET_S = 150  # quick mode starts no further round after this (a loaded machine slows the old pipeline 10x)
TARGETS = {"speedup_distill": 2.0, "speedup_baseline": 1.5, "distill_over_baseline": 1.7}  # issue 21
PIPELINES = {"baseline": ("old", "new", "all"), "distill": ("old", "new", "cold", "all", "all-cold")}


def cases(quick: bool, device: str, tiny: bool = False) -> list[dict]:
    """Benchmark cases of part 2: preset, overrides and batch size (None: the preset's)."""
    cpu = device == "cpu"
    if tiny:
        return [{"name": "demo 32 <- 128", "preset": "demo_student", "overrides": ["model.input_size=[32,32]"],
                 "batch": 4}]
    demo = [
        {"name": "demo 32 <- 128", "preset": "demo_student", "overrides": ["model.input_size=[32,32]"],
         "batch": None},  # None: the preset's train.batch_size
        {"name": "demo 64 <- 128", "preset": "demo_student", "overrides": [], "batch": None},
    ]
    if quick:
        return demo
    paper = [
        {"name": "paper W32 64 <- 256", "preset": "mpii_w32_64_distill",
         "overrides": ["distill.projector=light", "distill.fidelity=paper"], "batch": 4 if cpu else 32},
        {"name": "paper W32 32 <- 256", "preset": "mpii_w32_32_distill",
         "overrides": ["distill.projector=light", "distill.fidelity=paper"], "batch": 4 if cpu else 128},
    ]
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
    """The timed functions: three full steps (forward, loss, backward, Adam) and the teacher forward.

    ``distill_step_teacher_free`` is the distill step with the teacher's outputs computed beforehand
    (what a cache of teacher outputs would at best leave): the floor of the distill step's cost.
    """
    from cdkd.engine.train import compute_losses
    from cdkd.engine.train import teacher_forward as engine_teacher_forward

    fixed = engine_teacher_forward(teacher, batch["teacher_image"], cfg, device)
    baseline = SimpleNamespace(cfg=cfg, device=device, model=student, teacher=None, distiller=None)
    distill = SimpleNamespace(cfg=cfg, device=device, model=student, teacher=teacher, distiller=distiller)
    cached = SimpleNamespace(cfg=cfg, device=device, model=student, teacher=lambda image: fixed, distiller=distiller)
    opt_baseline = torch.optim.Adam(student.parameters(), lr=1e-3)
    opt_distill = torch.optim.Adam(list(student.parameters()) + distiller.trainable_parameters(), lr=1e-3)

    def train_step(state, optimizer):
        loss, _, _ = compute_losses(state.model, batch, state.cfg, state.device, state.teacher, state.distiller)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def teacher_forward():
        engine_teacher_forward(teacher, batch["teacher_image"], cfg, device)

    return {
        "student_step": lambda: train_step(baseline, opt_baseline),
        "teacher_forward": teacher_forward,
        "distill_step": lambda: train_step(distill, opt_distill),
        "distill_step_teacher_free": lambda: train_step(cached, opt_distill),
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


# ---- part 1: whole training steps with data, old pipeline against new ---------------------------

def pipelines(default_threads: int, work: Path) -> dict[str, list[str]]:
    """The settings of each pipeline; ``default_threads``: torch's own choice in this process (the
    number of cores, or ``--threads``), which the engine kept before ``train.threads``.

    ``new`` reads the teacher's outputs from a cache that an earlier pass over the same epochs
    filled (a study's second and later students of a seed); ``cold`` is the same pipeline with an
    empty cache before every slice (the first student: the teacher runs and its outputs are written).
    Baselines have no teacher, so their ``cold`` case is not run. ``all`` and ``all-cold`` are ``new``
    and ``cold`` with ``train.threads=all`` (batches cut in the trainer, every core to its ops: other
    float rounding, opt-in)."""
    new = ["data.cache=decoded", "train.threads=auto"]
    every = ["data.cache=decoded", "train.threads=all"]
    return {"old": ["data.cache=none", f"train.threads={default_threads}", "teacher.cache=none",
                    "teacher.forward_in=trainer"],
            "new": [*new, "teacher.cache=disk", f"teacher.cache_dir={work / 'teacher-cache-warm'}"],
            "cold": [*new, "teacher.cache=disk", f"teacher.cache_dir={work / 'teacher-cache-cold'}"],
            "all": [*every, "teacher.cache=disk", f"teacher.cache_dir={work / 'teacher-cache-warm-all'}"],
            "all-cold": [*every, "teacher.cache=disk", f"teacher.cache_dir={work / 'teacher-cache-cold-all'}"]}


def cpu_times() -> dict[str, int]:
    """The machine's CPU time counters (``/proc/stat`` line ``cpu``, in clock ticks); empty elsewhere."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return {}
    return {name: int(v) for name, v in zip(names, fields[1:])}


def cpu_shares(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Share of each counter in the time between two :func:`cpu_times` readings (steal: time the
    hypervisor gave our virtual CPUs to someone else; idle: nobody here wanted the CPU)."""
    if not before or not after:
        return {}
    delta = {k: after[k] - before[k] for k in before}
    total = max(1, sum(delta.values()))
    return {k: round(v / total, 4) for k, v in delta.items()}


def whole_step_config(size: int, mode: str, settings: list[str], data_root: Path, steps: int, batch: int | None):
    """The demo preset as a baseline or distill run with a pipeline's ``settings``, ``steps`` steps
    per epoch slice."""
    from cdkd.config import load_config

    overrides = [f"model.input_size=[{size},{size}]", f"train.mode={mode}", "teacher.random=true",
                 f"data.root={data_root / 'mpii'}", "distill.calibrate_share=0", "train.device=cpu",
                 f"train.max_steps_per_epoch={steps}", f"train.log_every={steps}", *settings]
    # log_every = steps: the share diagnostics at a slice's first and last step, a demo run's rate
    if batch:  # the smoke test: small batches, one loader worker
        overrides += [f"train.batch_size={batch}", "data.workers=1"]
    return load_config("demo_student", overrides)


def epoch_slice(t, epoch: int, recorder) -> float:
    """Seconds of one epoch slice of a built run (loader start, data, steps), as ``fit`` runs it."""
    from cdkd.engine.run import epoch_seed, seed_everything, thread_policy
    from cdkd.engine.train import make_loader, train_one_epoch

    torch.set_num_threads(thread_policy(t.cfg)["threads"])  # cases alternate: each gets its own policy
    seed_everything(epoch_seed(t.cfg.train.seed, epoch), t.cfg.train.deterministic)
    start = time.perf_counter()
    loader = make_loader(t.train_set, t.cfg, epoch, t.device, t.dist)
    train_one_epoch(t.model, loader, t.optimizer, t.scaler, t.cfg, t.device, epoch, recorder, t.dist,
                    t.teacher, t.distiller, t.teacher_cache)
    return time.perf_counter() - start


def whole_steps(args, work: Path) -> dict:
    """Part 1: samples/s of whole baseline and distill steps, old and new pipeline, demo sizes."""
    from cdkd.data.synthetic import ensure_synthetic
    from cdkd.engine.recorder import Recorder
    from cdkd.engine.run import thread_policy
    from cdkd.engine.train import build_training

    sizes, persons, steps, rounds, batch = (32, 64), 1000, SLICE_STEPS, 3, None
    if not args.quick:
        rounds = 5
    if args.tiny:
        sizes, persons, steps, rounds, batch = (32,), 24, 2, 1, 4
    data_root = Path(args.data) / f"synth-{persons}"
    settings = pipelines(torch.get_num_threads(), work)
    ensure_synthetic(data_root, train=persons, val=16, seed=0)
    built, recorders, cache_s = {}, {}, {}
    for size in sizes:
        for mode in ("baseline", "distill"):
            for pipeline in PIPELINES[mode]:
                name = f"{mode} {size} {pipeline}"
                cfg = whole_step_config(size, mode, settings[pipeline], data_root, steps, batch)
                start = time.perf_counter()
                built[name] = build_training(cfg, work / name.replace(" ", "_"))
                cache_s[name] = round(time.perf_counter() - start, 2)
                recorders[name] = Recorder(built[name].run_dir, tensorboard=False)
    for name, t in built.items():  # warm-up: one short slice each
        t.cfg.train.max_steps_per_epoch = 1 if args.tiny else 2
        epoch_slice(t, 0, recorders[name])
        t.cfg.train.max_steps_per_epoch = steps
    fill_s = {}
    for name, t in built.items():  # the warm cache: the measured slices' views, once through the teacher
        if name.startswith("distill") and name.endswith(("new", "all")):
            start = time.perf_counter()
            for r in range(rounds):
                epoch_slice(t, 1 + r, recorders[name])
            fill_s[name] = round(time.perf_counter() - start, 2)
    seconds: dict[str, list[float]] = {name: [] for name in built}
    before, load = cpu_times(), Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    measuring = time.perf_counter()
    for r in range(rounds):
        if r > 0 and args.quick and time.perf_counter() - measuring > QUICK_BUDGET_S:
            print(f"quick mode: {r} rounds in {time.perf_counter() - measuring:.0f} s, stopping", file=sys.stderr)
            break
        for name, t in built.items():
            if name.endswith("cold"):  # the first student of a seed: nothing cached yet (new and all)
                shutil.rmtree(t.teacher_cache.folder, ignore_errors=True)
                t.teacher_cache.used = None
            seconds[name].append(epoch_slice(t, 1 + r, recorders[name]))
            print(f"round {r + 1}/{rounds} {name}: {seconds[name][-1]:.2f} s", file=sys.stderr)
    rounds = len(next(iter(seconds.values())))
    shares = cpu_shares(before, cpu_times())
    for recorder in recorders.values():
        recorder.close()
    b = next(iter(built.values())).cfg.train.batch_size
    sps = {name: steps * b / statistics.median(s) for name, s in seconds.items()}
    summary, rows = {}, []
    for size in sizes:
        s = {(m, p): sps[f"{m} {size} {p}"] for m, names in PIPELINES.items() for p in names
             if f"{m} {size} {p}" in sps}
        ratios = {"speedup_distill": s["distill", "new"] / s["distill", "old"],
                  "speedup_baseline": s["baseline", "new"] / s["baseline", "old"],
                  "distill_over_baseline": s["baseline", "new"] / s["distill", "new"],
                  "distill_over_baseline_old": s["baseline", "old"] / s["distill", "old"],
                  "speedup_distill_cold": s["distill", "cold"] / s["distill", "old"],
                  "distill_over_baseline_cold": s["baseline", "new"] / s["distill", "cold"],
                  "speedup_distill_all": s["distill", "all"] / s["distill", "old"],
                  "speedup_baseline_all": s["baseline", "all"] / s["baseline", "old"],
                  "distill_over_baseline_all": s["baseline", "all"] / s["distill", "all"],
                  "speedup_distill_all_cold": s["distill", "all-cold"] / s["distill", "old"],
                  "distill_all_over_new": s["distill", "all"] / s["distill", "new"],
                  "baseline_all_over_new": s["baseline", "all"] / s["baseline", "new"]}
        summary[str(size)] = {**{f"samples_per_s_{m}_{p.replace('-', '_')}": round_to(v) for (m, p), v in s.items()},
                              **{k: round_to(v) for k, v in ratios.items()}}
        for m in ("baseline", "distill"):
            rows += [[size, m if p == "new" else f"{m}, threads=all", round_to(s[m, "old"]), round_to(s[m, p]),
                     round_to(s[m, p] / s[m, "old"])] for p in ("new", "all")]
        for p, label in (("cold", "distill, cache cold"), ("all-cold", "distill, cache cold, threads=all")):
            rows.append([size, label, round_to(s["distill", "old"]), round_to(s["distill", p]),
                         round_to(s["distill", p] / s["distill", "old"])])
    met = {f"{k}{suffix} at {size}": (summary[str(size)][k + suffix] >= v if k.startswith("speedup")
                                      else summary[str(size)][k + suffix] <= v)
           for suffix in ("", "_all") for size in sizes for k, v in TARGETS.items()}
    policies = {p: thread_policy(built[f"baseline {sizes[0]} {p}"].cfg) for p in ("old", "new", "all")}
    return {"summary": summary, "targets": TARGETS, "targets_met": met, "rows": rows,
            "settings": {"sizes": list(sizes), "persons": persons, "steps_per_slice": steps, "rounds": rounds,
                         "batch": b, "workers": next(iter(built.values())).cfg.data.workers,
                         "pipelines": settings, "thread_policy": policies,
                         "seconds": {k: [round(v, 3) for v in s] for k, s in seconds.items()},
                         "build_seconds": cache_s, "cache_fill_seconds": fill_s},
            "machine_load": {"loadavg_before": load, "cpu_shares_during": shares,
                             "steal_share": shares.get("steal")}}


# ---- part 2: model steps on random inputs -------------------------------------------------------

def model_steps(args, device: torch.device) -> dict:
    """Part 2: student step, teacher forward, distill step and the distiller's overhead (on the CPU
    also the student and teacher-free distill steps on every core, as ``train.threads=all`` runs them)."""
    from cdkd.engine.run import thread_policy, usable_cores

    rows, summary, profiles, settings, explanations = [], {}, [], [], []
    for case in cases(args.quick, args.device, args.tiny):
        cfg, student, teacher, distiller = build_case(case, device)
        b = case["batch"] or cfg.train.batch_size
        batch = random_batch(student, teacher, b, device)
        fns = step_functions(cfg, student, teacher, distiller, batch, device)
        paper_size = case["preset"].startswith("mpii")
        warmup, iters = (1, 3) if paper_size and args.device == "cpu" else (2, 5 if args.quick else 15)
        if args.tiny:
            warmup, iters = 1, 1
        if args.device == "cpu":  # as the trainer runs under train.threads=auto (or --threads)
            torch.set_num_threads(args.threads or thread_policy(cfg)["threads"])
        threads = torch.get_num_threads()
        times = measure(fns, device, warmup, iters)
        s, t, d, f = (times[n]["median_s"] for n in ("student_step", "teacher_forward", "distill_step",
                                                       "distill_step_teacher_free"))
        overhead = d / (s + t)
        rows.append([case["name"], f"{student.arch} {student.input_size[0]} / {teacher.arch} {teacher.input_size[0]}",
                     b, round_to(1e3 * s), round_to(1e3 * t), round_to(1e3 * d), round_to(1e3 * f), round_to(b / s),
                     round_to(b / t), round_to(b / d), round_to(overhead), round_to(d / s), round_to(f / s), iters])
        summary[f"overhead {case['name']}"] = round_to(overhead)
        summary[f"distill / student step {case['name']}"] = round_to(d / s)
        summary[f"teacher-free distill / student step {case['name']}"] = round_to(f / s)
        every = usable_cores()
        if args.device == "cpu" and every > threads and not paper_size:
            # the floor of distill_over_baseline under train.threads=all: both steps on every core
            torch.set_num_threads(every)
            try:
                times_all = measure({n: fns[n] for n in ("student_step", "distill_step_teacher_free")}, device,
                                    warmup, iters)
            finally:
                torch.set_num_threads(threads)
            s_all, f_all = (times_all[n]["median_s"] for n in ("student_step", "distill_step_teacher_free"))
            summary[f"teacher-free distill / student step {case['name']} at {every} threads"] = round_to(f_all / s_all)
            summary[f"student step ms {case['name']} at {every} threads"] = round_to(1e3 * s_all)
            summary[f"teacher-free distill step ms {case['name']} at {every} threads"] = round_to(1e3 * f_all)
            times = {**times, **{f"{n} at {every} threads": v for n, v in times_all.items()}}
        settings.append({"case": case["name"], "preset": case["preset"], "overrides": case["overrides"],
                         "batch": b, "warmup": warmup, "iters": iters, "threads": threads,
                         "distill": {"fidelity": cfg.distill.fidelity, "projector": cfg.distill.projector,
                                     "feature": cfg.distill.feature, "logit": cfg.distill.logit,
                                     "etht": cfg.distill.etht}, "times": times})
        print(f"{case['name']}: student {1e3 * s:.1f} ms, teacher {1e3 * t:.1f} ms, distill {1e3 * d:.1f} ms, "
              f"overhead {overhead:.3f}", file=sys.stderr)
        if overhead > TARGET_OVERHEAD and not paper_size and not args.quick and not args.tiny:
            tables, note = explain_overhead(case, overhead, student, teacher, distiller, batch, device)
            profiles += tables
            explanations.append(note)
    return {"rows": rows, "summary": summary, "profiles": profiles, "settings": settings, "notes": explanations}


@contextlib.contextmanager
def busy_loops(count: int):
    """``count`` processes that keep a core busy each (``--load``), stopped on exit."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield loops
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()

    def extra(parser):
        parser.add_argument("--tiny", action="store_true", help="smoke test: tiny data, 2 steps, 1 round")
        parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "data" / "bench"),
                            help="folder of the benchmark's synthetic sets (default data/bench)")
        parser.add_argument("--load", type=int, default=0,
                            help="busy-loop processes beside part 1 (a loaded machine); the result is written "
                                 "as train_step_loaded.json")

    args = parse_args(__doc__.split("\n")[0], argv, extra)
    args.quick = args.quick or args.tiny
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="cdkd-train-step-") as work, busy_loops(args.load):
        whole = whole_steps(args, Path(work)) if args.device == "cpu" else None
    model = model_steps(args, device)
    demo = [v for k, v in model["summary"].items() if k.startswith("overhead demo")]
    notes = []
    if whole is not None:
        notes += [
            ("Part 1: samples/s of whole training steps with data (the engine's train_one_epoch over epoch slices "
             f"of {whole['settings']['steps_per_slice']} steps, loader start included; the Eq. 8 share diagnostics "
             "at the first and last step of each, the rate of a demo run), median over "
             f"{whole['settings']['rounds']} interleaved rounds. speedup_* = new / old samples/s; "
             "distill_over_baseline = baseline / distill samples/s (the time ratio with data) in the new pipeline; "
             "the *_all keys are the same ratios for the train.threads=all pipeline (opt-in)."),
            (f"CPU steal during part 1: {whole['machine_load']['steal_share']}; load average before: "
             f"{' '.join(whole['machine_load']['loadavg_before'])} (other jobs share this machine)."),
            ("Both pipelines run the same engine code apart from data.cache, train.threads and teacher.cache: the "
             "teacher forward under inference_mode and the look-up normalisation speed both up; the old "
             "pipeline's numbers are therefore a little better than the code before issue 21."),
            ("The new distill step reads the teacher's outputs from the cache, filled beforehand by one pass over "
             "the measured epochs (settings.whole_steps.cache_fill_seconds): the cost of every student of a seed "
             "after the first. 'cold' (speedup_distill_cold, distill_over_baseline_cold) is the first student: "
             "its cache is emptied before each slice, so the teacher runs and its outputs are written."),
        ]
    notes += [
        ("Part 2: times are medians over interleaved rounds (student step, teacher forward, distill step), after "
         "warm-up, with the trainer's threads under train.threads=auto (settings.cases[].threads; --threads "
         "overrides); samples/s = batch / median step time."),
        ("overhead = distill step / (student step + teacher forward); 1.0 means the distiller costs nothing. "
         f"Target on the CPU at the demo preset: <= {TARGET_OVERHEAD}."),
        ("Every step: engine compute_losses (forward + SimCC loss [+ teacher forward under inference_mode + "
         "Distiller]), backward, Adam step. Random inputs, random weights. The teacher-free distill step "
         "takes the teacher's outputs computed beforehand: the floor a cache of teacher outputs could reach. "
         "'... at N threads': the student and teacher-free distill steps on every core (train.threads=all); "
         "their ratio is the floor of distill_over_baseline_all."),
    ]
    if args.device == "cpu" and not args.quick:
        notes.append("Paper sizes on the CPU: batch 4 and 3 timed rounds only; the ratio, not the absolute "
                     "speed, is the point there.")
    notes += model["notes"]
    tables = []
    summary = {}
    if whole is not None:
        summary.update({"whole_steps": whole["summary"], "targets_met": whole["targets_met"],
                        "steal_share": whole["machine_load"]["steal_share"]})
        tables.append({"title": "Whole training steps with data (samples/s, median): old and new pipelines",
                       "columns": ["size", "step", "old samples/s", "new samples/s", "speedup"],
                       "rows": whole["rows"]})
    summary.update({**model["summary"], "demo overhead within target": all(v <= TARGET_OVERHEAD for v in demo)})
    tables.append({"title": "Step times on random inputs (ms, median) and throughput (samples/s)",
                   "columns": ["case", "student / teacher", "batch", "student step ms", "teacher fwd ms",
                               "distill step ms", "teacher-free distill step ms", "student samples/s",
                               "teacher samples/s", "distill samples/s", "overhead", "distill / student",
                               "teacher-free distill / student", "rounds"],
                   "rows": model["rows"]})
    if args.load:
        notes.insert(0, f"Measured on a loaded machine: {args.load} busy-loop process(es) ran beside part 1 "
                        "(each keeps a core busy, as another job on a shared machine would).")
    write_result(
        args, "train_step_loaded" if args.load else "train_step", "train_step.py", started,
        title="Training step throughput: whole steps with data (old and new pipeline) and the CDKD overhead",
        description=__doc__.split("\n\n")[0],
        settings={"whole_steps": None if whole is None else {**whole["settings"], "targets": whole["targets"],
                                                             "machine_load": whole["machine_load"]},
                  "cases": model["settings"], "target_overhead": TARGET_OVERHEAD},
        summary=summary,
        tables=tables + model["profiles"],
        notes=notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
