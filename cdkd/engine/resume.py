"""Resume: what ``last.pth`` holds beyond the weights, and how a run continues from it.

The state written every epoch (optimizer, LR schedule, AMP scaler, distiller, torch RNG, best
metric, history) and its restoration; the config check before anything is written (a changed
model is never resumed, other changes only when accepted, and then applied to the optimizer and
schedule); and the trimming of log rows that a run killed mid-epoch left behind. The per-epoch
reseeding that makes a resumed run equal a straight one is :func:`cdkd.engine.run.epoch_seed`.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from cdkd.checkpoint import CheckpointError, load_checkpoint
from cdkd.config import Config, ConfigError
from cdkd.engine.run import config_changes, describe_changes, portable_config
from cdkd.models.load import load_weights, save_checkpoint

# config keys whose change alters the model itself: never accepted on resume
STRUCTURAL = ("model.", "distill.", "train.mode", "teacher.arch", "teacher.input_size", "teacher.split_ratio")


def save_state(
    path: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.MultiStepLR,
    scaler: torch.amp.GradScaler,
    cfg: Config,
    best: float,
    history: list,
    distiller: nn.Module | None = None,
) -> None:
    """Atomic checkpoint with everything resume needs (model, optimizer, schedule, distiller, RNG)."""
    extra = {
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": {**scheduler.state_dict(), "milestones": dict(scheduler.milestones)},
        "scaler": scaler.state_dict(),
        "best": best,
        "history": history,
        "rng": {"torch": torch.get_rng_state()},
    }
    if distiller is not None:
        extra.update(distiller_state(distiller))
    save_checkpoint(path, model, config=portable_config(cfg, Path(path).parent), **extra)


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


def check_resume(cfg: Config, path: str | Path, accept_config_change: bool = False) -> tuple[dict, dict]:
    """Read a ``last.pth`` and compare its config with ``cfg`` before anything is written.

    Returns:
        (the checkpoint, the changed keys ``{'train.lr': [old, new]}``; empty when equal).
    Raises:
        CheckpointError: the file holds weights only (``best.pth``), naming it.
        ConfigError: the config differs (naming the keys) and ``accept_config_change`` is False,
            or a key that changes the model itself differs (never accepted).
    """
    state = load_checkpoint(path)
    if "optimizer" not in state or "epoch" not in state or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} holds weights only (no optimizer or epoch state, as best.pth); "
                              "resume from the run's last.pth")
    changes = config_changes(state["config"], cfg, run_dir=Path(path).parent)
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


def apply_config_changes(
    cfg: Config, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.MultiStepLR, changes: dict
) -> None:
    """Make the resumed optimizer and schedule follow the accepted new config (lr, steps, decay)."""
    groups = optimizer.param_groups
    if "train.weight_decay" in changes:
        for group in groups:
            if not group.get("etht"):
                group["weight_decay"] = cfg.train.weight_decay
    if {"train.lr", "train.lr_steps", "train.lr_factor", "train.optimizer"} & set(changes):
        scheduler.milestones = Counter(cfg.train.lr_steps)
        scheduler.gamma = cfg.train.lr_factor
        scheduler.base_lrs = [cfg.train.lr] * len(groups)
        passed = sum(1 for m in cfg.train.lr_steps if m <= scheduler.last_epoch)
        for group in groups:
            group["initial_lr"] = cfg.train.lr
            group["lr"] = cfg.train.lr * cfg.train.lr_factor ** passed
        scheduler._last_lr = [group["lr"] for group in groups]


def resume_state(
    state: dict,
    path: str | Path,
    changes: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.MultiStepLR,
    scaler: torch.amp.GradScaler,
    cfg: Config,
    distiller: nn.Module | None = None,
) -> tuple[int, float, list]:
    """Restore a ``last.pth`` written by :func:`save_state` into the freshly built run.

    ``state``/``changes`` come from :func:`check_resume`. Accepted changes are applied: the new
    lr, schedule and weight decay reach the optimizer; a new optimizer kind starts from a fresh
    optimizer state.

    Returns:
        (the epoch to continue at, the best validation metric so far, the epoch history).
    """
    load_weights(model, state["state_dict"])
    if "train.optimizer" not in changes:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict({**state["scheduler"], "milestones": Counter(state["scheduler"]["milestones"])})
    scaler.load_state_dict(state["scaler"])
    if distiller is not None and "distiller" in state:
        load_distiller_state(distiller, state, path)
    apply_config_changes(cfg, optimizer, scheduler, changes)
    torch.set_rng_state(state["rng"]["torch"])
    return int(state["epoch"]) + 1, float(state.get("best", -math.inf)), list(state.get("history", []))
