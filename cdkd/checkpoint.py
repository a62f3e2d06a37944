"""Checkpoint files: atomic writing, safe reading, weight matching and ImageNet backbones.

Serves the CDKD pipeline (Gu et al., Sec. III): the teacher is trained first and saved, then
loaded frozen beside the student; the released SimCC/CDKD weights and the ImageNet-pretrained
HRNet/ResNet files are plain state dicts in the official key layout.

A cdkd checkpoint is a dict of tensors and plain Python values only (it loads with
``torch.load(weights_only=True)``)::

    {'format': 'cdkd-checkpoint-v1',
     'model': {'arch', 'num_joints', 'input_size', 'split_ratio'},   # rebuilds the model
     'state_dict': {official key names -> tensors},
     'config': resolved run configuration (dict) or None,
     ...extra (epoch, metrics, optimizer state, ...)}

This module knows files and state dicts only (it imports nothing from :mod:`cdkd.models`); the
pose-model side (official key names, rebuilding a model) is :mod:`cdkd.models.load`.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "cdkd-checkpoint-v1"
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DistributedDataParallel, torch.compile
RESERVED = ("format", "model", "state_dict", "config")


class CheckpointError(ValueError):
    """A checkpoint or state dict that cannot be used; the message names the file or the key."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel/DDP (``.module``) or torch.compile (``._orig_mod``)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError naming ``where`` if ``value`` is not tensors / plain Python values."""
    # exact types: numpy scalars subclass float/int but do not load with weights_only=True
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple, torch.Size):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"checkpoint entry '{where}' has a key of type {type(key).__name__}; use str or int")
            _check_plain(item, f"{where}.{key}")
        return
    raise TypeError(
        f"checkpoint entry '{where}' is a {type(value).__module__}.{type(value).__name__}; "
        "store tensors or plain Python values (numbers, strings, lists, dicts)"
    )


def write_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write a checkpoint dict atomically (temporary file, then ``os.replace``).

    Args:
        path: destination file; parent folders are created.
        payload: tensors and plain Python values only (checked, naming the first bad entry), so
            that the file loads with ``torch.load(weights_only=True)``.
    Returns:
        The path written.
    """
    path = Path(path)
    for key, value in payload.items():
        _check_plain(value, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # disk full comes as RuntimeError('... unexpected pos ...')
        free = _free_bytes(path.parent)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}"
                              + (f" ({free / 2**20:.0f} MiB free on its disk)" if free is not None else "")
                              + "; the previous file, if any, is unchanged") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete ``.NAME.tmpPID`` files left beside ``path`` by saves that were killed (their process
    is gone); a save still running in another process keeps its file. Returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        pid = tmp.name[len(f".{path.name}.tmp"):]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: another user's live process
        return True
    return True


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint or state dict file on the CPU, without unpickling arbitrary objects.

    Args:
        path: a cdkd checkpoint, an official SimCC/HRNet state dict or checkpoint, or an
            ImageNet backbone file.
    Returns:
        The stored dict, as saved.
    Raises:
        FileNotFoundError: if the file does not exist (the message names it).
        CheckpointError: if it cannot be read or does not hold a dict (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_reason(err)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a dict")
    return data


def _load_reason(err: Exception) -> str:
    """torch's reason in one line, without its advice to load with ``weights_only=False`` (which
    would run any code a malicious file holds)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    unpickler = next((ln for ln in lines if "WeightsUnpickler error" in ln or "GLOBAL" in ln), None)
    if unpickler:
        reason = unpickler.split("WeightsUnpickler error:", 1)[-1].strip().split(". ")[0].rstrip(".")
        return (f"it holds objects other than tensors and plain values ({reason}); it is not a cdkd checkpoint or "
                "state dict and is not loaded, since unpickling it could run code")
    first = next((ln for ln in lines if "weights_only" not in ln), type(err).__name__)
    return f"{type(err).__name__}: {first} (truncated, corrupt or not a PyTorch file)"


def state_dict_in(checkpoint: dict, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The weights inside a loaded checkpoint, with ``module.``/``_orig_mod.`` prefixes stripped.

    Accepts a cdkd checkpoint, an official training checkpoint with a ``state_dict`` entry, or a
    raw state dict (every value a tensor).

    Args:
        checkpoint: what :func:`load_checkpoint` returned.
        source: name used in error messages (usually the file path).
    """
    weights = checkpoint.get("state_dict", checkpoint)
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{source}: no state dict found (top-level keys: {sorted(checkpoint)[:10]})")
    bad = next((k for k, v in weights.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(
            f"{source}: entry '{bad}' is a {type(weights[bad]).__name__}, not a tensor; "
            f"this is not a state dict (top-level keys: {sorted(checkpoint)[:10]})"
        )
    return strip_prefixes(weights)


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _is_counter(key: str) -> bool:
    """BatchNorm step counters: absent from old files, never needed to reproduce outputs."""
    return key.endswith("num_batches_tracked")


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without ``module.``/``_orig_mod.`` key prefixes (DDP, torch.compile)."""
    return {_strip_prefixes(k): v for k, v in state_dict.items()}


def match_weights(
    own: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], owner: str, strict: bool = True
) -> dict[str, list[str]]:
    """Compare a state dict with a module's own, key by key, in one key layout.

    Args:
        own: the module's state dict (only the shapes are read).
        weights: the state dict to load, prefixes already stripped.
        owner: the module's name for error messages.
        strict: if True, a missing or unexpected key is an error. A shape mismatch is always an
            error. Missing ``num_batches_tracked`` counters are tolerated (old files lack them).
    Returns:
        ``{'loaded': [...], 'missing': [...], 'unexpected': [...]}`` key lists.
    Raises:
        CheckpointError: naming the first key (in the state dict's order) whose shape does not
            fit, with both shapes; or, when strict, the first missing / unexpected key.
    """
    for key, value in weights.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"weight '{key}' has shape {tuple(value.shape)} in the state dict but "
                f"{tuple(own[key].shape)} in the {owner}; was it built with the same arch, joints, "
                "input size and split ratio?"
            )
    missing = [k for k in own if k not in weights and not _is_counter(k)]
    unexpected = [k for k in weights if k not in own]
    if strict and missing:
        raise CheckpointError(f"missing key '{missing[0]}' in the state dict ({len(missing)} of {len(own)} missing)")
    if strict and unexpected:
        raise CheckpointError(
            f"unexpected key '{unexpected[0]}' in the state dict ({len(unexpected)} unexpected) for the {owner}"
        )
    return {"loaded": [k for k in weights if k in own], "missing": missing, "unexpected": unexpected}


def load_pretrained_backbone(backbone: nn.Module, source: str | Path | dict) -> dict:
    """Load the keys of an ImageNet file that match a backbone by name and shape.

    The official classification HRNets (``hrnet_w32-36af842e.pth``, ``hrnet_w48-8ef0771d.pth``)
    share the pose backbone's names for ``conv1 ... stage4`` and add ``incre_modules``,
    ``downsamp_modules``, ``final_layer`` and ``classifier`` (and stage 4 fuse layers into the
    lower resolutions); torchvision ResNet files add ``fc``. Those come back as ``unexpected``.

    Args:
        backbone: the backbone module (e.g. ``cdkd.models.ARCHS["hrnet_w32"]()``), without the SimCC head.
        source: a file path, or an already loaded dict.
    Returns:
        ``{'source', 'loaded', 'missing', 'unexpected', 'mismatched'}``: key lists (missing
        excludes BatchNorm ``num_batches_tracked`` counters).
    Raises:
        CheckpointError: if no key at all matches (surely the wrong file), naming the file.
    """
    name = str(source) if not isinstance(source, dict) else "<state dict>"
    checkpoint = load_checkpoint(source) if not isinstance(source, dict) else source
    weights = state_dict_in(checkpoint, name)
    own = backbone.state_dict()
    loaded, mismatched, unexpected = [], [], []
    for key, value in weights.items():
        if key not in own:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            mismatched.append(key)
        else:
            loaded.append(key)
    if not loaded:
        raise CheckpointError(
            f"{name}: none of its {len(weights)} keys fits the {type(backbone).__name__} backbone "
            f"(first key '{next(iter(weights))}'); is it the right pretrained file?"
        )
    backbone.load_state_dict({k: weights[k] for k in loaded}, strict=False)
    missing = [k for k in own if k not in weights and not _is_counter(k)]
    return {"source": name, "loaded": loaded, "missing": missing, "unexpected": unexpected, "mismatched": mismatched}
