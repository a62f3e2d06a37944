"""Training engine: the teacher, the SimCC baseline student and the CDKD student (Eq. 8).

``fit(cfg)`` is the one call behind ``python -m cdkd train``; the pieces it uses
(``build_training``, ``make_loader``, ``train_one_epoch``, and ``save_state`` / ``resume_state`` of
:mod:`cdkd.engine.resume`) are importable on their own and take what they use as arguments, so
that a notebook can drive a run step by step.

Determinism and resume: every epoch reseeds python, numpy and torch from ``(seed, epoch)`` before
its data loader is created, so shuffling, augmentation (also inside worker processes) and any other
randomness of epoch e are the same whether the run went straight through or was resumed at e.
The checkpoint ``last.pth`` is written atomically at the end of every epoch; a run killed
mid-epoch restarts that epoch from the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from cdkd.checkpoint import unwrap
from cdkd.codec import num_bins
from cdkd.config import Config, ConfigError, run_name
from cdkd.data.topdown import (TEACHER_FIELDS, TEACHER_FROM_CACHE, TEACHER_FROM_LOADER, TEACHER_KEY,
                               AugmentationStreams, build_dataset, collate_batch)
from cdkd.distill import Distiller
from cdkd.distill.distiller import total_loss
from cdkd.distill.etht import etht_param_group, set_etht_lr
from cdkd.distill.shares import adam_second_moment, part_gradients, shares_from
from cdkd.engine.calibrate import calibrate
from cdkd.engine.dist import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed, resolve_device
from cdkd.engine.evaluate import check_eval_data, evaluate, write_metrics
from cdkd.engine.progress import loader_batches, progress_bar, say
from cdkd.engine.recorder import Recorder, trim_records
from cdkd.engine.resume import check_resume, resume_state, save_state
from cdkd.engine.run import (atomic_write_text, epoch_seed, hold_folder, portable_config, release_folder, run_files,
                             seed_everything, setup_run, thread_policy)
from cdkd.engine.teacher_cache import TeacherCache, teacher_cache_for
from cdkd.losses import simcc_loss
from cdkd.models import PoseOutput, build_pose_model
from cdkd.models.load import load_model, save_checkpoint


@dataclass
class Training:
    """What :func:`build_training` builds together for a run (models, data, optimizer, schedule)."""

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
    teacher_cache: TeacherCache | None = None

    @property
    def bare_model(self) -> nn.Module:
        """The plain pose model under torch.compile / DistributedDataParallel wrappers."""
        return unwrap(self.model)

    def loader(self, epoch: int) -> DataLoader:
        """The training loader of ``epoch`` (:func:`make_loader`)."""
        return make_loader(self.train_set, self.cfg, epoch, self.device, self.dist)

    def losses(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """:func:`compute_losses` of ``batch`` with this run's models."""
        return compute_losses(self.model, batch, self.cfg, self.device, self.teacher, self.distiller,
                              self.teacher_cache)


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


def make_teacher_cache(cfg: Config, teacher: nn.Module, device: torch.device,
                       threads: int | None = None) -> TeacherCache | None:
    """The cache of the teacher's outputs that ``teacher.cache`` asks for (:mod:`cdkd.engine.teacher_cache`),
    under ``teacher.cache_dir`` or ``DATA_ROOT/.cache``; None when it is off. ``threads``: those of
    the process that runs the teacher (a loader worker has one)."""
    t = cfg.teacher
    folder = Path(t.cache_dir) if t.cache_dir else Path(cfg.data.root) / ".cache"
    return teacher_cache_for(teacher, t.cache, t.random, folder, t.cache_max_gb, cfg.train.channels_last,
                             cfg.train.amp, device, threads)


def teacher_in_loader(cfg: Config, device: torch.device) -> bool:
    """Whether the frozen teacher runs in the loader workers (``teacher.forward_in: auto``): on the
    CPU, when the loader has worker processes and the trainer runs one thread (a small machine,
    :func:`cdkd.engine.run.thread_policy`). There its forward (as costly as the student's step on
    the demo) overlaps the student's step on another core, with the same bits as in the trainer,
    since both run one thread (tests/test_teacher_cache.py). ``trainer``: always in the trainer."""
    if cfg.teacher.forward_in == "trainer" or device.type != "cpu":
        return False
    policy = thread_policy(cfg)
    return policy["loader_workers"] > 0 and policy["threads"] == 1


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
    if dist.enabled and str(cfg.train.threads) == "all":
        cleanup(dist)
        raise ConfigError("config key 'train.threads' is 'all' (one process cutting its own batches on every core); "
                          "under torchrun each rank runs data.workers loader workers: use 'auto' or a number")
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
    teacher = distiller = cache = None
    etht_params: list = []
    if cfg.train.mode == "distill":
        teacher = load_teacher(cfg, train_set.num_joints, device, random=cfg.teacher.random)
        in_loader = teacher_in_loader(cfg, device)
        cache = make_teacher_cache(cfg, teacher, device, threads=1 if in_loader else None)
        train_set.use_teacher_cache(cache)
        if in_loader:
            train_set.use_teacher_forward(functools.partial(teacher_forward, teacher, cfg=cfg, device=device))
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
                 teacher, distiller, cache)
    if distiller is not None and cfg.distill.calibrate_share > 0:
        calibrate_weights(t)
    return t


def calibrate_weights(t: Training) -> None:
    """Set alpha and beta so that each distillation term has ``distill.calibrate_share`` of the update
    (:func:`cdkd.engine.calibrate.calibrate`), from the first training batches; the model and distiller
    states (BatchNorm statistics) are restored afterwards, and the chosen values are written into
    the run's resolved ``config.yaml``. Deterministic, so a resumed run recomputes the same values."""
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
        import yaml

        atomic_write_text(t.run_dir / "config.yaml", yaml.safe_dump(portable_config(t.cfg, t.run_dir), sort_keys=False))
    say(t.cfg.train.progress, f"calibrated for a share of {d.calibrate_share:g} per distillation term: "
        f"alpha = {alpha:.4g}, beta = {beta:.4g}")


def make_distiller(cfg: Config, student: nn.Module, teacher: nn.Module) -> Distiller:
    """The CDKD distiller for the student/teacher shapes (feature maps at H/4 x W/4)."""
    def shapes(model):
        h, w = model.input_size
        k = model.split_ratio
        return (model.num_joints, h // 4, w // 4), (num_bins(w, k, "W"), num_bins(h, k, "H"))

    s_feat, s_cls = shapes(student)
    t_feat, t_cls = shapes(teacher)
    return Distiller(cfg.distill, s_feat, t_feat, s_cls, t_cls, total_epochs=cfg.train.epochs,
                     shuffle_teacher=cfg.teacher.shuffle)


def make_loader(dataset, cfg: Config, epoch: int, device: torch.device, dist: DistInfo) -> DataLoader:
    """The epoch's loader; its shuffling and worker seeds follow the reseeded global RNG.

    Where the thread policy (:func:`cdkd.engine.run.thread_policy`) runs fewer loader processes
    than ``data.workers`` (a 2-core machine), the batches come from
    :class:`cdkd.data.topdown.AugmentationStreams`: the same samples as ``data.workers`` workers
    would cut. Under DDP the loader runs ``data.workers`` workers per rank as configured."""
    per_rank = max(1, cfg.train.batch_size // dist.world_size)
    drop_last = len(dataset) > per_rank
    common = {"pin_memory": device.type == "cuda", "persistent_workers": False,
              "worker_init_fn": single_thread_worker, "collate_fn": collate_batch}
    streams, processes = cfg.data.workers, thread_policy(cfg)["loader_workers"]
    if not dist.enabled and 0 < streams and processes < streams:
        batches = AugmentationStreams(len(dataset), per_rank, drop_last, streams)
        return DataLoader(dataset, batch_sampler=batches, num_workers=processes, generator=torch.Generator(),
                          **common)
    sampler = None
    if dist.enabled:
        sampler = DistributedSampler(dataset, shuffle=True, seed=cfg.train.seed, drop_last=True)
        sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=per_rank, shuffle=sampler is None, sampler=sampler, num_workers=streams,
                      drop_last=drop_last, **common)


def single_thread_worker(worker_id: int) -> None:
    """A loader worker computes with one torch thread: the cores belong to the trainer and the other
    workers (:func:`cdkd.engine.run.thread_policy`). OpenCV's pool is left alone: reconfiguring it in
    a forked worker deadlocks (``cv2.setNumThreads`` waits on the parent's pool threads)."""
    torch.set_num_threads(1)


def compute_losses(
    model: nn.Module,
    batch: dict,
    cfg: Config,
    device: torch.device,
    teacher: nn.Module | None = None,
    distiller: Distiller | None = None,
    teacher_cache: TeacherCache | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Forward the student (and, with a distiller, the teacher); return L_total (Eq. 8), the logged
    terms and the weighted parts of Eq. 8 (with their graphs, for :mod:`cdkd.distill.shares`).
    The teacher's outputs come from the batch where its loader found them cached, else from the
    teacher, and are then written to ``teacher_cache`` (:func:`teacher_outputs`)."""
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    image = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
    tx = batch["target_x"].to(device, non_blocking=True)
    ty = batch["target_y"].to(device, non_blocking=True)
    weight = batch["target_weight"].to(device, non_blocking=True)
    with autocast(cfg, device):
        out = model(image)
    task = simcc_loss(out.x.float(), out.y.float(), tx, ty, weight, kind=cfg.loss.kind,
                      label_smoothing=cfg.loss.label_smoothing)  # L_ori
    if distiller is None:
        parts = total_loss(task, cfg.loss.weight)  # Eq. 8 with alpha = beta = 0
        total = parts.pop("total")
        zero = torch.zeros((), device=device)
        terms = {"task": parts["task"].detach(), "feature": zero, "feature_weighted": zero, "logit": zero,
                 "logit_weighted": zero}
        return total, terms, parts
    teacher_out = teacher_outputs(teacher, batch, cfg, device, teacher_cache)
    step = distiller(out, teacher_out, weight, task, cfg.loss.weight)
    return step.total, step.terms, step.parts


def teacher_outputs(teacher: nn.Module, batch: dict, cfg: Config, device: torch.device,
                    cache: TeacherCache | None = None):
    """The teacher's outputs for a loader batch: read from the cache by the loader (``teacher_x``,
    ``teacher_y``, ``teacher_feature``), or computed by :func:`teacher_forward` from the teacher
    crops and, where the loader named a cache file for them (``teacher_key``), written to
    ``cache``. Both give the same bits for the same batch of views (tests/test_teacher_cache.py);
    both are returned contiguous, whatever memory format the teacher computed in."""
    if "teacher_x" in batch:
        return PoseOutput(**{f: batch[f"teacher_{f}"].to(device, non_blocking=True).contiguous()
                             for f in TEACHER_FIELDS})
    out = teacher_forward(teacher, batch["teacher_image"].to(device, non_blocking=True), cfg, device)
    out = PoseOutput(*(t.contiguous() for t in out))
    if cache is not None and TEACHER_KEY in batch:
        cache.save(batch[TEACHER_KEY][0], out._asdict())
    return out


def teacher_forward(teacher: nn.Module, image: torch.Tensor, cfg: Config, device: torch.device):
    """The frozen teacher's outputs for a batch of teacher crops [B, 3, H, W], without autograd state.

    ``inference_mode`` skips the version counters and view tracking that ``no_grad`` still keeps
    (1.10x on the demo teacher's forward, issue 21); its tensors cannot enter an autograd graph, so
    the outputs (a few MB) are cloned out of it. The values equal those of the ``no_grad`` forward.
    """
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    with torch.inference_mode(), autocast(cfg, device):
        out = teacher(image.contiguous(memory_format=fmt))
    return type(out)(*(t.clone() for t in out))


def sync_distiller_grads(distiller: Distiller | None, dist: DistInfo) -> None:
    """DDP averages the student's gradients; the distiller's own parameters are averaged here."""
    if not dist.enabled or distiller is None:
        return
    for p in distiller.trainable_parameters():
        if p.grad is not None:
            torch_dist.all_reduce(p.grad)
            p.grad /= dist.world_size


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: Config,
    device: torch.device,
    epoch: int,
    recorder: Recorder,
    dist: DistInfo,
    teacher: nn.Module | None = None,
    distiller: Distiller | None = None,
    teacher_cache: TeacherCache | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` (at most ``train.max_steps_per_epoch`` steps); returns the mean of
    every logged term. ``model`` is the student (or the teacher being trained), maybe DDP-wrapped;
    ``teacher``, ``distiller`` and ``teacher_cache`` are given in distill mode; there the result
    also has ``teacher_cached`` and ``teacher_in_loader``, the shares of steps whose teacher outputs
    were read from the cache or computed by the loader workers (:func:`teacher_in_loader`)."""
    model.train()
    if distiller is not None:
        distiller.train()
        distiller.set_epoch(epoch)
        set_etht_lr(optimizer, distiller.xi)
    steps = len(loader) if cfg.train.max_steps_per_epoch <= 0 else min(len(loader), cfg.train.max_steps_per_epoch)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # the shares are measured on logged steps only
    done = cached = in_loader = samples = 0
    start = time.perf_counter()
    with progress_bar(cfg.train.progress, steps, f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not dist.is_main) as bar, \
            loader_batches(loader, steps) as batches:  # its workers are shut down however the loop ends
        for i, batch in enumerate(batches):
            loss, terms, parts = compute_losses(model, batch, cfg, device, teacher, distiller, teacher_cache)
            source = int(batch["teacher_source"][0]) if "teacher_source" in batch else 0
            cached += source == TEACHER_FROM_CACHE
            in_loader += source == TEACHER_FROM_LOADER
            samples += len(batch["image"])
            log_now = i % max(1, cfg.train.log_every) == 0 or i == steps - 1
            shares = measure_shares(model, distiller, dist, parts) if log_now and cfg.train.log_shares else None
            # one device->host copy per step for every logged term (not one sync per term)
            names = [*terms, "loss"]
            values = dict(zip(names, torch.stack([*(v.float() for v in terms.values()), loss.detach().float()]).tolist()))
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {i}: {values}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if shares is not None:
                values.update(finish_shares(optimizer, scaler, shares))
            sync_distiller_grads(distiller, dist)
            scaler.step(optimizer)
            scaler.update()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if log_now:
                values["lr"] = optimizer.param_groups[0]["lr"]
                recorder.step(epoch * steps + i, epoch, values)
            bar.set_postfix({k: f"{values[k]:.4g}" for k in ("loss", "task", "feature", "logit", "tau") if k in values})
            bar.update(1)
            done += 1
    n = max(1, done)
    means = {k: v / counts[k] for k, v in sums.items()}
    means["samples_per_s"] = samples * dist.world_size / max(time.perf_counter() - start, 1e-9)
    if distiller is not None:
        means["teacher_cached"] = cached / n
        means["teacher_in_loader"] = in_loader / n
    return all_reduce_mean(means, dist)


def measure_shares(model: nn.Module, distiller: Distiller | None, dist: DistInfo,
                   parts: dict[str, torch.Tensor]) -> dict | None:
    """Before the step's backward: the gradients of the feature and logit parts of Eq. 8 on the
    student (two extra backward passes, only on logged steps). None where it does not apply
    (DDP, or a baseline whose distillation parts are zeros)."""
    if dist.enabled or distiller is None:
        return None
    params = [p for p in unwrap(model).parameters() if p.requires_grad]  # the student's, not the distiller's
    return {"params": params, "grads": part_gradients(parts, params, skip=("task",))}


def finish_shares(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, pending: dict) -> dict[str, float]:
    """After the backward: the task part's gradient is the total minus the other two (Eq. 8 is a
    sum); the shares use Adam's own second moment (see :mod:`cdkd.distill.shares`)."""
    params, grads = pending["params"], pending["grads"]
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    total = [(p.grad.detach() / scale) if p.grad is not None else torch.zeros_like(p) for p in params]
    grads["task"] = [g - f - lo for g, f, lo in zip(total, grads["feature"], grads["logit"])]
    second = adam_second_moment(optimizer, params)
    if second is None and isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        second = [g * g for g in total]  # first step: Adam's v is the squared gradient
    result = shares_from(grads, second)
    return {f"share_{k}": v for k, v in result["shares"].items()}


class RunFolderError(ConfigError):
    """A run folder that a new run must not write into (it holds a run); names ``--overwrite``."""


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


def _write_skipped(run_dir: Path, train_set, val_set) -> None:
    """``skipped.json``: what ``data.on_bad: skip`` left out of each split, and the protocol filters."""
    record = {split: {"count": len(ds.skipped), "skipped": list(ds.skipped), "filtered": dict(ds.filtered)}
              for split, ds in (("train", train_set), ("val", val_set))}
    atomic_write_text(run_dir / "skipped.json", json.dumps(record, indent=2))


def _plan_run(cfg: Config, target: Path, resume, overwrite: bool, accept_config_change: bool):
    """Decide, before anything is written, where :func:`fit` trains and from what.

    Returns:
        (the checkpoint to resume or None, its state, the accepted config changes, the folder to
        train in: ``target``, or its staging sibling when ``overwrite`` replaces a run).
    """
    check_device(cfg)
    if resume == "auto":
        resume = target / "last.pth" if (target / "last.pth").exists() else None
    if resume:
        own = _own_checkpoint_folder(Path(resume), target, overwrite)
        return (resume, *check_resume(cfg, resume, accept_config_change), own)
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


def _own_checkpoint_folder(resume: Path, target: Path, overwrite: bool) -> Path:
    """The folder a ``--resume`` checkpoint continues in: ``target`` itself, or, with ``overwrite``
    given again, its staging sibling (an ``--overwrite`` that was killed; it replaces ``target``
    once it has finished). A checkpoint of any other folder is refused: continuing it in ``target``
    would mix two runs."""
    folder = resume.resolve().parent
    if folder == target.resolve():
        if overwrite:
            raise ConfigError("--resume continues the run in its folder and --overwrite replaces it; give one of them")
        return target
    if folder == staging_dir(target).resolve():
        if not overwrite:
            raise RunFolderError(f"--resume {resume} is the unfinished --overwrite of {target}, which replaces the "
                                 "finished run there once it ends; give --overwrite as well to continue replacing it, "
                                 "or leave out --resume to keep the finished run")
        return staging_dir(target)
    raise RunFolderError(f"--resume {resume} is not a checkpoint of the run folder {target} (nor of its unfinished "
                         f"--overwrite); resume continues the run in --out only: give --out {resume.parent}, or "
                         "start a new run without --resume")


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
    check_device(cfg)
    main = int(os.environ.get("RANK", "0")) == 0
    held = hold_folder(target) if main else None  # one writer per run folder, before anything is read or written
    try:
        return _fit(cfg, target, resume, stop_after, overwrite, accept_config_change)
    finally:
        if held is not None:
            release_folder(held)


def _fit(cfg: Config, target: Path, resume, stop_after: int | None, overwrite: bool,
         accept_config_change: bool) -> Path:
    """The body of :func:`fit`, once it holds the run folder."""
    resume, state, changes, train_dir = _plan_run(cfg, target, resume, overwrite, accept_config_change)
    try:
        t = build_training(cfg, train_dir)
        check_eval_data(t.val_set, cfg)
    except BaseException:
        if train_dir != target and not resume:  # a failed replacement leaves nothing; the old run is untouched
            shutil.rmtree(train_dir, ignore_errors=True)
        raise
    start_epoch, best, history = 0, -math.inf, []
    if resume:
        start_epoch, best, history = resume_state(state, resume, changes, t.bare_model, t.optimizer, t.scheduler,
                                                  t.scaler, cfg, t.distiller)
        if t.dist.is_main:
            trim_records(t.run_dir, start_epoch)
    elif t.dist.is_main:
        for stale in ("steps.csv", "epochs.jsonl", "metrics.json", "last.pth", "best.pth"):
            (t.run_dir / stale).unlink(missing_ok=True)  # a fresh run never mixes with an old one
    if t.dist.is_main:
        _write_skipped(t.run_dir, t.train_set, t.val_set)
    recorder = Recorder(t.run_dir, enabled=t.dist.is_main)
    try:
        end = cfg.train.epochs if stop_after is None else min(cfg.train.epochs, start_epoch + stop_after)
        for epoch in range(start_epoch, end):
            seed_everything(epoch_seed(cfg.train.seed, epoch, t.dist.rank), cfg.train.deterministic)
            loader = make_loader(t.train_set, cfg, epoch, t.device, t.dist)  # after reseeding: same order on resume
            means = train_one_epoch(t.model, loader, t.optimizer, t.scaler, cfg, t.device, epoch, recorder, t.dist,
                                    t.teacher, t.distiller, t.teacher_cache)
            record = {"train": means, "lr": t.optimizer.param_groups[0]["lr"]}  # the rate this epoch trained at
            t.scheduler.step()
            last = epoch == cfg.train.epochs - 1
            if (epoch + 1) % max(1, cfg.train.val_every) == 0 or last:
                if t.dist.is_main:
                    metrics = evaluate(t.bare_model, t.val_set, cfg, t.device)
                    record["val"] = metrics
                    if metrics["main"] > best:
                        best = metrics["main"]
                        save_checkpoint(t.run_dir / "best.pth", t.bare_model, config=portable_config(cfg, t.run_dir),
                                        epoch=epoch, metrics=_scalars(metrics))
                barrier(t.dist)
            row = _scalars(record)
            if changes and epoch == start_epoch:
                row["config_changes"] = changes  # accepted on resume: trained from here with the new values
            history.append({"epoch": epoch, **row})
            if t.dist.is_main:
                recorder.epoch(epoch, row)
                save_state(t.run_dir / "last.pth", epoch, t.bare_model, t.optimizer, t.scheduler, t.scaler, cfg,
                           best, history, t.distiller)
                summary = record.get("val", {}).get("main")
                say(cfg.train.progress, f"epoch {epoch + 1}/{cfg.train.epochs}: loss {means.get('loss', float('nan')):.4f}"
                    + (f", val {summary:.3f}" if summary is not None else ""))
        if t.dist.is_main and history and end == cfg.train.epochs:
            final = dict(history[-1].get("val", {}))
            accepted = [{"epoch": h["epoch"], "changes": h["config_changes"]}
                        for h in history if h.get("config_changes")]
            _write_skipped(t.run_dir, t.train_set, t.val_set)
            write_metrics(t.run_dir / "metrics.json", final, cfg, t.bare_model,
                          extra={"best": best, "config_changes": accepted,
                                 "first_epoch_train": history[0].get("train", {}),
                                 "last_epoch_train": history[-1].get("train", {}),
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
