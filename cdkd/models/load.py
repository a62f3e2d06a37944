"""Pose models to and from checkpoint files, with the official SimCC key names in the files.

Sits above :mod:`cdkd.models` (which builds models) and :mod:`cdkd.checkpoint` (which reads and
writes files): a saved state dict is mapped to the official names of SimCC's
``lib/models/pose_hrnet.py`` by :func:`cdkd.models.simcc.to_official_keys`, and a loaded one
(a cdkd checkpoint, or a released SimCC/CDKD ``model_best.pth``) back by
:func:`cdkd.models.simcc.from_official_keys`. Serves the CDKD pipeline (Gu et al., Sec. III): the
teacher is trained and saved first, then loaded frozen beside the student.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cdkd.checkpoint import (
    FORMAT,
    RESERVED,
    CheckpointError,
    load_checkpoint,
    match_weights,
    state_dict_in,
    strip_prefixes,
    unwrap,
    write_checkpoint,
)
from cdkd.models import build_pose_model
from cdkd.models.simcc import SimCCPoseModel, from_official_keys, to_official_keys


def save_checkpoint(path: str | Path, model: nn.Module, config: Any = None, **extra: Any) -> Path:
    """Write a cdkd checkpoint of a pose model atomically, weights under their official names.

    Args:
        path: destination file; parent folders are created.
        model: a :class:`~cdkd.models.simcc.SimCCPoseModel` (also inside DDP or torch.compile).
        config: the run configuration as a dict (or a :class:`cdkd.config.Config`), or None.
        **extra: more entries (epoch, metrics, optimizer state_dict, ...), tensors or plain values.
    Returns:
        The path written.
    """
    bare = unwrap(model)
    if not isinstance(bare, SimCCPoseModel):
        raise TypeError(f"save_checkpoint needs a SimCCPoseModel; got {type(bare).__name__}")
    clash = sorted(set(extra) & set(RESERVED))
    if clash:
        raise ValueError(f"extra checkpoint entries {clash} clash with reserved keys {list(RESERVED)}")
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        from cdkd.config import config_to_dict

        config = config_to_dict(config)
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict, a Config or None; got {type(config).__name__}")
    weights = to_official_keys({k: v.detach().cpu() for k, v in bare.state_dict().items()})
    payload = {"format": FORMAT, "model": bare.settings(), "state_dict": weights, "config": config, **extra}
    return write_checkpoint(path, payload)


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> dict:
    """Load an official-named state dict into a pose model (``module.``/``_orig_mod.`` stripped).

    Args:
        model: a :class:`~cdkd.models.simcc.SimCCPoseModel` (also inside DDP or torch.compile).
        state_dict: weights with the official SimCC key names (as in every cdkd checkpoint).
        strict: if True, a missing or unexpected key is an error; a shape mismatch always is.
    Returns:
        ``{'loaded': [...], 'missing': [...], 'unexpected': [...]}``, official key names.
    Raises:
        CheckpointError: naming the first misfit key (see :func:`cdkd.checkpoint.match_weights`).
    """
    bare = unwrap(model)
    weights = strip_prefixes(state_dict)
    own = to_official_keys(bare.state_dict())
    report = match_weights(own, weights, type(bare).__name__, strict)
    bare.load_state_dict(from_official_keys({k: weights[k] for k in report["loaded"]}), strict=False)
    return report


def load_model(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    arch: str | None = None,
    num_joints: int | None = None,
    input_size: tuple[int, int] | list[int] | int | None = None,
    split_ratio: float | None = None,
) -> SimCCPoseModel:
    """Rebuild a pose model from a checkpoint and load its weights (strict), in eval mode.

    A cdkd checkpoint carries its model settings; a raw official state dict (e.g. a released
    SimCC ``model_best.pth``) needs ``arch``, ``num_joints``, ``input_size`` and ``split_ratio``.
    Settings given for a cdkd checkpoint must agree with the stored ones.

    Args:
        path: checkpoint or state dict file.
        map_location: device the returned model is moved to.
        arch, num_joints, input_size, split_ratio: the model settings (see
            :func:`cdkd.models.build_pose_model`).
    Returns:
        The :class:`~cdkd.models.simcc.SimCCPoseModel`, in eval mode.
    """
    checkpoint = load_checkpoint(path)
    given = {"arch": arch, "num_joints": num_joints, "input_size": input_size, "split_ratio": split_ratio}
    given = {k: v for k, v in given.items() if v is not None}
    if isinstance(given.get("input_size"), int):
        given["input_size"] = [given["input_size"]] * 2
    if "input_size" in given:
        given["input_size"] = [int(s) for s in given["input_size"]]
    if checkpoint.get("format") == FORMAT:
        settings = dict(checkpoint["model"])
        for key, value in given.items():
            stored = settings.get(key)
            if (float(value) != float(stored)) if key == "split_ratio" else (value != stored):
                raise CheckpointError(f"{path}: stores {key}={stored!r} but {key}={value!r} was requested")
    else:
        needed = [k for k in ("arch", "num_joints", "input_size", "split_ratio") if k not in given]
        if needed:
            raise CheckpointError(
                f"{path} is not a cdkd checkpoint (no model settings); pass {', '.join(needed)} to load_model"
            )
        settings = given
    model = build_pose_model(**settings)
    try:
        load_weights(model, state_dict_in(checkpoint, str(path)), strict=True)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return model.to(map_location).eval()
