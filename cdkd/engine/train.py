"""Training engine: the teacher, the SimCC baseline student and the CDKD student (Eq. 8).

``fit(cfg)`` is the one call behind ``python -m cdkd train``; the pieces it uses
(``build_training``, ``train_one_epoch``, ``save_state`` / ``resume_state``) are importable on their
own so that a notebook can drive a run step by step.

Determinism and resume: every epoch reseeds python, numpy and torch from ``(seed, epoch)`` before
its data loader is created, so shuffling, augmentation (also inside worker processes) and any other
randomness of epoch e are the same whether the run went straight through or was resumed at e.
The checkpoint ``last.pth`` is written atomically at the end of every epoch; a run killed
mid-epoch restarts that epoch from the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from cdkd.checkpoint import load_checkpoint, unwrap
from cdkd.codec import num_bins
from cdkd.config import Config, ConfigError, config_to_dict, run_name
from cdkd.data.topdown import build_dataset
from cdkd.distill import Distiller
from cdkd.distill.distiller import total_loss
from cdkd.distill.etht import etht_param_group, set_etht_lr
from cdkd.engine.dist import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed, resolve_device
from cdkd.engine.evaluate import check_eval_data, evaluate, write_metrics
from cdkd.engine.recorder import Recorder
from cdkd.engine.run import (atomic_write_text, config_changes, describe_changes, epoch_seed, run_files,
                             seed_everything, setup_run)
from cdkd.losses import simcc_loss
from cdkd.models import build_pose_model
from cdkd.models.load import load_model, load_weights, save_checkpoint


@dataclass
class Training:
    """Everything a run holds; built by :func:`build_training`."""

    cfg: Config
    run_dir: Path
    device: torch.device
    dist: DistInfo
    model: nn.Module  # the student (or the teacher being trained), maybe DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    teacher: nn.Module | None = None
    distiller: Distiller | None = None
    start_epoch: int = 0
    best: float = -math.inf
    history: list = field(default_factory=list)

    @property
    def bare_model(self) -> nn.Module:
        """The plain pose model under torch.compile / DistributedDataParallel wrappers."""
        return unwrap(self.model)


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    if cfg.train.amp == "none":
        return None
    return torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16


def autocast(cfg: Config, device: torch.device):
    dtype = amp_dtype(cfg, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def load_teacher(cfg: Config, num_joints: int, device: torch.device, random: bool = False) -> nn.Module:
    """The frozen teacher: a cdkd checkpoint, or an official state dict described by cfg.teacher.

    ``random=True`` builds an untrained teacher of ``cfg.teacher``'s architecture instead (seeded by
    the run): the control that shows what distillation does without a teacher's knowledge, and the
    stand-in of ``python -m cdkd diagnose`` when no checkpoint exists.
    """
    t = cfg.teacher
    if random:
        teacher = build_pose_model(t.arch, num_joints, tuple(t.input_size), t.split_ratio)
        teacher.eval().requires_grad_(False).to(device)
        return teacher.to(memory_format=torch.channels_last) if cfg.train.channels_last else teacher
    if not cfg.teacher.checkpoint:
        raise ConfigError("config key 'teacher.checkpoint' is empty; distill mode needs a trained teacher")
    teacher = load_model(
        t.checkpoint, arch=t.arch, num_joints=num_joints, input_size=tuple(t.input_size), split_ratio=t.split_ratio
    )
    if tuple(teacher.input_size) != tuple(t.input_size) or teacher.num_joints != num_joints:
        raise ConfigError(
            f"teacher checkpoint {t.checkpoint} is {teacher.arch} at {tuple(teacher.input_size)} with "
            f"{teacher.num_joints} joints; config key 'teacher.input_size' says {tuple(t.input_size)} "
            f"and the data has {num_joints} joints"
        )
    teacher.eval().requires_grad_(False).to(device)
    if cfg.train.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


def build_optimizer(cfg: Config, params: list, etht_params: list = ()) -> torch.optim.Optimizer:
    """The run's optimizer; ETHT parameters get their own group (:func:`cdkd.distill.etht.etht_param_group`).

    ``train.weight_decay`` applies to the student's group (the released presets set 0: the
    released code builds Adam without weight decay whatever ``TRAIN.WD`` says).
    """
    kind, lr, wd = cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay
    groups = [{"params": list(params)}]
    if etht_params:
        groups.append(etht_param_group(etht_params))
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)


def build_training(cfg: Config, run_dir: str | Path | None = None) -> Training:
    """Models, data, distiller, optimizer and schedule of a run (no training yet).

    With ``distill.calibrate_share`` > 0, alpha and beta are set here, from the first training
    batches (:func:`calibrate_weights`), and written into the run's ``config.yaml``.
    """
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    run_dir = setup_run(cfg, run_dir, write=dist.is_main)
    m = cfg.model
    train_set = build_dataset(cfg, "train")
    val_set = build_dataset(cfg, "val")
    model = build_pose_model(
        m.arch, train_set.num_joints, tuple(m.input_size), m.split_ratio, pretrained=m.pretrained or None
    ).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = list(model.parameters())
    teacher = distiller = None
    etht_params: list = []
    if cfg.train.mode == "distill":
        teacher = load_teacher(cfg, train_set.num_joints, device, random=cfg.teacher.random)
        distiller = make_distiller(cfg, model, teacher).to(device)
        etht_params = distiller.etht_parameters()
        params += [p for p in distiller.trainable_parameters() if all(p is not q for q in etht_params)]
    optimizer = build_optimizer(cfg, params, etht_params)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.train.lr_steps), gamma=cfg.train.lr_factor
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.train.compile:
        model = torch.compile(model)
    t = Training(cfg, Path(run_dir), device, dist, model, optimizer, scheduler, scaler, train_set, val_set,
                 teacher, distiller)
    if distiller is not None and cfg.distill.calibrate_share > 0:
        calibrate_weights(t)
    return t


def calibrate_weights(t: Training) -> None:
    """Set alpha and beta so that each distillation term has ``distill.calibrate_share`` of the update
    (:func:`cdkd.diagnose.calibrate`), from the first training batches; the model and distiller
    states (BatchNorm statistics) are restored afterwards, and the chosen values are written into
    the run's resolved ``config.yaml``. Deterministic, so a resumed run recomputes the same values."""
    from cdkd.config import save_config
    from cdkd.diagnose import calibrate

    d = t.cfg.distill
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in (t.bare_model, t.distiller)]
    alpha, beta = calibrate(t, d.calibrate_share, d.calibrate_batches)
    if t.dist.enabled:  # every rank saw other batches: use their mean
        mean = all_reduce_mean({"alpha": alpha, "beta": beta}, t.dist)
        alpha, beta = float(mean["alpha"]), float(mean["beta"])
    for module, state in zip((t.bare_model, t.distiller), saved):
        module.load_state_dict(state)
    d.alpha, d.beta = alpha, beta
    if t.dist.is_main:
        save_config(t.cfg, t.run_dir / "config.yaml")
    tqdm.write(f"calibrated for a share of {d.calibrate_share:g} per distillation term: "
               f"alpha = {alpha:.4g}, beta = {beta:.4g}")


def make_distiller(cfg: Config, student: nn.Module, teacher: nn.Module) -> Distiller:
    """The CDKD distiller for the student/teacher shapes (feature maps at H/4 x W/4)."""
    def shapes(model):
        h, w = model.input_size
        k = model.split_ratio
        return (model.num_joints, h // 4, w // 4), (num_bins(w, k, "W"), num_bins(h, k, "H"))

    s_feat, s_cls = shapes(student)
    t_feat, t_cls = shapes(teacher)
    return Distiller(cfg.distill, s_feat, t_feat, s_cls, t_cls, total_epochs=cfg.train.epochs)


def make_loader(t: Training, epoch: int) -> DataLoader:
    """The epoch's loader; its shuffling and worker seeds follow the reseeded global RNG."""
    cfg = t.cfg
    sampler = None
    if t.dist.enabled:
        sampler = DistributedSampler(t.train_set, shuffle=True, seed=cfg.train.seed, drop_last=True)
        sampler.set_epoch(epoch)
    per_rank = max(1, cfg.train.batch_size // t.dist.world_size)
    return DataLoader(
        t.train_set,
        batch_size=per_rank,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.data.workers,
        pin_memory=t.device.type == "cuda",
        drop_last=len(t.train_set) > per_rank,
        persistent_workers=False,
    )


def compute_losses(t: Training, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Forward the student (and teacher); return L_total (Eq. 8), the logged terms and the weighted
    parts of Eq. 8 (with their graphs, for :mod:`cdkd.diagnose`)."""
    cfg, device = t.cfg, t.device
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    image = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
    tx = batch["target_x"].to(device, non_blocking=True)
    ty = batch["target_y"].to(device, non_blocking=True)
    weight = batch["target_weight"].to(device, non_blocking=True)
    with autocast(cfg, device):
        out = t.model(image)
    task = simcc_loss(out.x.float(), out.y.float(), tx, ty, weight, kind=cfg.loss.kind,
                      label_smoothing=cfg.loss.label_smoothing)  # L_ori
    if t.distiller is None:
        parts = total_loss(task, cfg.loss.weight)  # Eq. 8 with alpha = beta = 0
        total = parts.pop("total")
        zero = torch.zeros((), device=device)
        terms = {"task": parts["task"].detach(), "feature": zero, "feature_weighted": zero, "logit": zero,
                 "logit_weighted": zero}
        return total, terms, parts
    teacher_image = batch["teacher_image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
    with torch.no_grad(), autocast(cfg, device):
        teacher_out = t.teacher(teacher_image)
    step = t.distiller(out, teacher_out, weight, task, cfg.loss.weight)
    return step.total, step.terms, step.parts


def sync_distiller_grads(t: Training) -> None:
    """DDP averages the student's gradients; the distiller's own parameters are averaged here."""
    if not t.dist.enabled or t.distiller is None:
        return
    for p in t.distiller.trainable_parameters():
        if p.grad is not None:
            torch_dist.all_reduce(p.grad)
            p.grad /= t.dist.world_size


def train_one_epoch(t: Training, epoch: int, recorder: Recorder) -> dict[str, float]:
    """One pass over the training set; returns the mean of every logged term."""
    cfg = t.cfg
    t.model.train()
    if t.distiller is not None:
        t.distiller.train()
        t.distiller.set_epoch(epoch)
        set_etht_lr(t.optimizer, t.distiller.xi)
    loader = make_loader(t, epoch)
    steps = len(loader) if cfg.train.max_steps_per_epoch <= 0 else min(len(loader), cfg.train.max_steps_per_epoch)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # the shares are measured on logged steps only
    done = 0
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not t.dist.is_main,
               dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        loss, terms, parts = compute_losses(t, batch)
        log_now = i % max(1, cfg.train.log_every) == 0 or i == steps - 1
        shares = measure_shares(t, parts) if log_now and cfg.train.log_shares else None
        # one device->host copy per step for every logged term (not one sync per term)
        names = [*terms, "loss"]
        values = dict(zip(names, torch.stack([*(v.float() for v in terms.values()), loss.detach().float()]).tolist()))
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {i}: {values}")
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        if shares is not None:
            values.update(finish_shares(t, shares))
        sync_distiller_grads(t)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
        if log_now:
            values["lr"] = t.optimizer.param_groups[0]["lr"]
            recorder.step(epoch * steps + i, epoch, values)
        bar.set_postfix({k: f"{values[k]:.4g}" for k in ("loss", "task", "feature", "logit", "tau") if k in values})
        bar.update(1)
        done += 1
    bar.close()
    n = max(1, done)
    means = {k: v / counts[k] for k, v in sums.items()}
    means["samples_per_s"] = n * loader.batch_size * t.dist.world_size / max(time.perf_counter() - start, 1e-9)
    return all_reduce_mean(means, t.dist)


def measure_shares(t: Training, parts: dict[str, torch.Tensor]) -> dict | None:
    """Before the step's backward: the gradients of the feature and logit parts of Eq. 8 on the
    student (two extra backward passes, only on logged steps). None where it does not apply
    (DDP, or a baseline whose distillation parts are zeros)."""
    from cdkd.diagnose import part_gradients, student_parameters

    if t.dist.enabled or t.distiller is None:
        return None
    params = student_parameters(t)
    return {"params": params, "grads": part_gradients(parts, params, skip=("task",))}


def finish_shares(t: Training, pending: dict) -> dict[str, float]:
    """After the backward: the task part's gradient is the total minus the other two (Eq. 8 is a
    sum); the shares use Adam's own second moment (see :mod:`cdkd.diagnose`)."""
    from cdkd.diagnose import adam_second_moment, shares_from

    params, grads = pending["params"], pending["grads"]
    scale = t.scaler.get_scale() if t.scaler.is_enabled() else 1.0
    total = [(p.grad.detach() / scale) if p.grad is not None else torch.zeros_like(p) for p in params]
    grads["task"] = [g - f - lo for g, f, lo in zip(total, grads["feature"], grads["logit"])]
    second = adam_second_moment(t.optimizer, params)
    if second is None and isinstance(t.optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        second = [g * g for g in total]  # first step: Adam's v is the squared gradient
    result = shares_from(grads, second)
    return {f"share_{k}": v for k, v in result["shares"].items()}


def save_state(t: Training, epoch: int, path: Path) -> None:
    """Atomic checkpoint with everything resume needs (model, optimizer, schedule, distiller, RNG)."""
    extra = {
        "epoch": epoch,
        "optimizer": t.optimizer.state_dict(),
        "scheduler": {**t.scheduler.state_dict(), "milestones": dict(t.scheduler.milestones)},
        "scaler": t.scaler.state_dict(),
        "best": t.best,
        "history": t.history,
        "rng": {"torch": torch.get_rng_state()},
    }
    if t.distiller is not None:
        extra.update(distiller_state(t.distiller))
    save_checkpoint(path, t.bare_model, config=config_to_dict(t.cfg), **extra)


def distiller_state(distiller: nn.Module) -> dict:
    """The distiller's state for a checkpoint, without its frozen parameters.

    In ``fidelity: official`` the projectors are never trained (released behaviour) and can be
    huge (805M parameters at MPII 64x64, see docs/projectors.md). They are a deterministic function
    of the seed (the run is seeded before any module is built), so the checkpoint keeps only a
    checksum of each, and :func:`load_distiller_state` checks the rebuilt ones against it.
    """
    sd = distiller.state_dict()
    frozen = {n for n, p in distiller.named_parameters() if not p.requires_grad}
    return {"distiller": {k: v for k, v in sd.items() if k not in frozen},
            "distiller_frozen": {k: float(sd[k].double().sum()) for k in sorted(frozen)}}


def load_distiller_state(distiller: nn.Module, state: dict, path: str | Path) -> None:
    """Restore :func:`distiller_state`; the frozen parameters must equal the checkpoint's checksums."""
    sd = distiller.state_dict()
    for key, checksum in state.get("distiller_frozen", {}).items():
        if key not in sd or float(sd[key].double().sum()) != checksum:
            raise ValueError(f"cannot resume from {path}: the rebuilt frozen distiller parameter '{key}' differs "
                             "from the one the run was trained with (different seed or code version)")
    missing = set(sd) - set(state["distiller"]) - set(state.get("distiller_frozen", {}))
    if missing:
        raise ValueError(f"cannot resume from {path}: distiller state lacks {sorted(missing)[0]}")
    distiller.load_state_dict({**sd, **state["distiller"]})


STRUCTURAL = ("model.", "distill.", "train.mode", "teacher.arch", "teacher.input_size", "teacher.split_ratio")


class RunFolderError(ConfigError):
    """A run folder that a new run must not write into (it holds a run); names ``--overwrite``."""


def check_resume(cfg: Config, path: str | Path, accept_config_change: bool = False) -> tuple[dict, dict]:
    """Read a ``last.pth`` and compare its config with ``cfg`` before anything is written.

    Returns:
        (the checkpoint, the changed keys ``{'train.lr': [old, new]}``; empty when equal).
    Raises:
        CheckpointError: the file holds weights only (``best.pth``), naming it.
        ConfigError: the config differs (naming the keys) and ``accept_config_change`` is False,
            or a key that changes the model itself differs (never accepted).
    """
    from cdkd.checkpoint import CheckpointError

    state = load_checkpoint(path)
    if "optimizer" not in state or "epoch" not in state or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} holds weights only (no optimizer or epoch state, as best.pth); "
                              "resume from the run's last.pth")
    changes = config_changes(state["config"], cfg)
    fixed = {k: v for k, v in changes.items() if k.startswith(STRUCTURAL)
             and (not k.startswith("teacher.") or cfg.train.mode == "distill")}
    if fixed:
        raise ConfigError(f"cannot resume from {path}: {describe_changes(fixed)} differ from the checkpoint's and "
                          "change the model itself; start a new run (another --out, or --overwrite)")
    if changes and not accept_config_change:
        raise ConfigError(f"cannot resume from {path}: the config differs from the one it was trained with "
                          f"({describe_changes(changes)}); pass --accept-config-change to continue with the new "
                          "values (recorded in config.yaml, epochs.jsonl and metrics.json), or drop the changes")
    return state, changes


def _apply_changes(t: Training, changes: dict) -> None:
    """Make the resumed optimizer and schedule follow the accepted new config (lr, steps, decay)."""
    cfg, groups = t.cfg, t.optimizer.param_groups
    if "train.weight_decay" in changes:
        for group in groups:
            if not group.get("etht"):
                group["weight_decay"] = cfg.train.weight_decay
    if {"train.lr", "train.lr_steps", "train.lr_factor", "train.optimizer"} & set(changes):
        t.scheduler.milestones = Counter(cfg.train.lr_steps)
        t.scheduler.gamma = cfg.train.lr_factor
        t.scheduler.base_lrs = [cfg.train.lr] * len(groups)
        passed = sum(1 for m in cfg.train.lr_steps if m <= t.scheduler.last_epoch)
        for group in groups:
            group["initial_lr"] = cfg.train.lr
            group["lr"] = cfg.train.lr * cfg.train.lr_factor ** passed
        t.scheduler._last_lr = [group["lr"] for group in groups]


def resume_state(t: Training, path: str | Path, state: dict | None = None, changes: dict | None = None) -> None:
    """Load a ``last.pth`` written by :func:`save_state`; training continues at the next epoch.

    ``state``/``changes`` come from :func:`check_resume` (called here when not given, refusing any
    config change). Accepted changes are applied: the new lr, schedule and weight decay reach the
    optimizer; a new optimizer kind starts from a fresh optimizer state.
    """
    if state is None:
        state, changes = check_resume(t.cfg, path)
    changes = changes or {}
    load_weights(t.bare_model, state["state_dict"])
    if "train.optimizer" not in changes:
        t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict({**state["scheduler"], "milestones": Counter(state["scheduler"]["milestones"])})
    t.scaler.load_state_dict(state["scaler"])
    if t.distiller is not None and "distiller" in state:
        load_distiller_state(t.distiller, state, path)
    _apply_changes(t, changes)
    t.start_epoch = int(state["epoch"]) + 1
    t.best = float(state.get("best", -math.inf))
    t.history = list(state.get("history", []))
    torch.set_rng_state(state["rng"]["torch"])


def trim_records(run_dir: Path, start_epoch: int) -> None:
    """Drop the log rows of epochs at or after ``start_epoch``: a run killed mid-epoch logged part of
    an epoch that resume trains again, and each epoch must appear once in ``steps.csv``/``epochs.jsonl``.
    A line cut short by a kill is dropped too; both files are replaced atomically."""
    steps = run_dir / "steps.csv"
    if steps.exists():
        with open(steps, newline="") as f:
            rows = list(csv.reader(f))
        if rows:
            col = rows[0].index("epoch")
            kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and _number(r[col]) < start_epoch]
            text = io.StringIO()
            csv.writer(text).writerows(kept)
            atomic_write_text(steps, text.getvalue())
    epochs = run_dir / "epochs.jsonl"
    if epochs.exists():
        lines = [ln for ln in epochs.read_text().splitlines() if _epoch_of(ln) < start_epoch]
        atomic_write_text(epochs, "".join(ln + "\n" for ln in lines))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def _epoch_of(line: str) -> float:
    try:
        return float(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def staging_dir(run_dir: Path) -> Path:
    """Where ``overwrite`` trains before replacing ``run_dir`` (a hidden sibling folder)."""
    return run_dir.with_name(f".{run_dir.name}.overwrite")


def _swap_in(staging: Path, run_dir: Path) -> None:
    """Replace ``run_dir`` by the finished ``staging`` folder (two renames in the same parent)."""
    old = run_dir.with_name(f".{run_dir.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(run_dir, old)
    os.replace(staging, run_dir)
    shutil.rmtree(old, ignore_errors=True)


def check_device(cfg: Config) -> None:
    """``train.device`` must exist on this machine (a ConfigError naming the key, before any work)."""
    name = cfg.train.device
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'train.device' is {name!r} but CUDA is not available here; "
                          "use train.device=cpu or auto")


def _write_skipped(t: Training) -> None:
    """``skipped.json``: what ``data.on_bad: skip`` left out of each split, and the protocol filters."""
    record = {split: {"count": len(ds.skipped), "skipped": list(ds.skipped), "filtered": dict(ds.filtered)}
              for split, ds in (("train", t.train_set), ("val", t.val_set))}
    atomic_write_text(t.run_dir / "skipped.json", json.dumps(record, indent=2))


def _plan_run(cfg: Config, target: Path, resume, overwrite: bool, accept_config_change: bool):
    """Decide, before anything is written, where :func:`fit` trains and from what.

    Returns:
        (the checkpoint to resume or None, its state, the accepted config changes, the folder to
        train in: ``target``, or its staging sibling when ``overwrite`` replaces a run).
    """
    check_device(cfg)
    if resume == "auto":
        resume = target / "last.pth" if (target / "last.pth").exists() else None
    if resume and overwrite:
        raise ConfigError("--resume continues the run in its folder and --overwrite replaces it; give one of them")
    if resume:
        return (resume, *check_resume(cfg, resume, accept_config_change), target)
    if not run_files(target):
        return None, None, {}, target
    if not overwrite:
        raise RunFolderError(
            f"run folder {target} already holds a run ({', '.join(run_files(target))}); pass --overwrite "
            "to replace it once the new run has finished, --resume to continue it, or choose another --out")
    staging = staging_dir(target)
    if int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed earlier --overwrite
    return None, None, {}, staging


def fit(cfg: Config, run_dir: str | Path | None = None, resume: str | Path | None = None,
        stop_after: int | None = None, overwrite: bool = False, accept_config_change: bool = False) -> Path:
    """Train a run to the end (or continue it with ``resume``); returns the run folder.

    ``stop_after=N`` ends this call after N epochs (checkpoint written), e.g. to fit a cluster's
    job time limit; ``resume`` then continues exactly where it stopped.

    A folder that already holds a run (``metrics.json``, ``best.pth``, ``last.pth`` or
    ``epochs.jsonl``) is never written into by a new run: it raises :class:`RunFolderError` unless
    ``overwrite``, and then the new run trains in a hidden sibling folder that replaces the old
    one only once it has finished. ``resume`` refuses a changed config (naming the keys) unless
    ``accept_config_change``; accepted changes are applied and recorded.

    Writes ``last.pth`` every epoch, ``best.pth`` on a better validation metric, ``epochs.jsonl``,
    ``steps.csv``, ``skipped.json``, TensorBoard events and the final ``metrics.json``.
    """
    target = Path(run_dir) if run_dir else Path(cfg.train.out_dir) / run_name(cfg)
    resume, state, changes, train_dir = _plan_run(cfg, target, resume, overwrite, accept_config_change)
    try:
        t = build_training(cfg, train_dir)
        check_eval_data(t.val_set, cfg)
    except BaseException:
        if train_dir != target:  # the failed replacement leaves nothing behind; the old run is untouched
            shutil.rmtree(train_dir, ignore_errors=True)
        raise
    if resume:
        resume_state(t, resume, state, changes)
        if t.dist.is_main:
            trim_records(t.run_dir, t.start_epoch)
    elif t.dist.is_main:
        for stale in ("steps.csv", "epochs.jsonl", "metrics.json", "last.pth", "best.pth"):
            (t.run_dir / stale).unlink(missing_ok=True)  # a fresh run never mixes with an old one
    if t.dist.is_main:
        _write_skipped(t)
    recorder = Recorder(t.run_dir, enabled=t.dist.is_main)
    try:
        end = cfg.train.epochs if stop_after is None else min(cfg.train.epochs, t.start_epoch + stop_after)
        for epoch in range(t.start_epoch, end):
            seed_everything(epoch_seed(cfg.train.seed, epoch, t.dist.rank), cfg.train.deterministic)
            means = train_one_epoch(t, epoch, recorder)
            t.scheduler.step()
            record = {"train": means, "lr": t.optimizer.param_groups[0]["lr"]}
            last = epoch == cfg.train.epochs - 1
            if (epoch + 1) % max(1, cfg.train.val_every) == 0 or last:
                if t.dist.is_main:
                    metrics = evaluate(t.bare_model, t.val_set, cfg, t.device)
                    record["val"] = metrics
                    if metrics["main"] > t.best:
                        t.best = metrics["main"]
                        save_checkpoint(t.run_dir / "best.pth", t.bare_model, config=config_to_dict(cfg),
                                        epoch=epoch, metrics=_scalars(metrics))
                barrier(t.dist)
            row = _scalars(record)
            if changes and epoch == t.start_epoch:
                row["config_changes"] = changes  # accepted on resume: trained from here with the new values
            t.history.append({"epoch": epoch, **row})
            if t.dist.is_main:
                recorder.epoch(epoch, row)
                save_state(t, epoch, t.run_dir / "last.pth")
                summary = record.get("val", {}).get("main")
                tqdm.write(f"epoch {epoch + 1}/{cfg.train.epochs}: loss {means.get('loss', float('nan')):.4f}"
                           + (f", val {summary:.3f}" if summary is not None else ""))
        if t.dist.is_main and t.history and end == cfg.train.epochs:
            final = dict(t.history[-1].get("val", {}))
            accepted = [{"epoch": h["epoch"], "changes": h["config_changes"]}
                        for h in t.history if h.get("config_changes")]
            _write_skipped(t)
            write_metrics(t.run_dir / "metrics.json", final, cfg, t.bare_model,
                          extra={"best": t.best, "config_changes": accepted,
                                 "last_epoch_train": t.history[-1].get("train", {}),
                                 "persons_skipped": {"train": len(t.train_set.skipped),
                                                     "val": len(t.val_set.skipped)}})
    finally:
        recorder.close()
        barrier(t.dist)
        cleanup(t.dist)
    if train_dir != target and end == cfg.train.epochs and t.dist.is_main:
        _swap_in(train_dir, target)
    return target


def _scalars(record: dict) -> dict:
    """JSON-friendly copy: nested dicts kept, tensors and numpy numbers turned into floats."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out[k] = _scalars(v)
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
            out[k] = v.item()
    return json.loads(json.dumps(out))
