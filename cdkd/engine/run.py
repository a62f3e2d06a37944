"""One call sets up a run: seeds, the run folder, the resolved config and the provenance.

The run folder records everything needed to reproduce it: ``config.yaml`` (resolved), and
``environment.json`` (git commit, whether the tree was dirty, package versions, machine).
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from cdkd.config import Config, ConfigError, config_to_dict, run_name

# Files that make a run folder hold a run: a new run refuses to go there without ``overwrite``.
RUN_FILES = ("metrics.json", "best.pth", "last.pth", "epochs.jsonl")

# Config keys that change where or how fast a run goes, not what it trains (ignored when a run is
# resumed or reused): the device, loader workers, logging interval and folder names.
NON_RESULT_KEYS = frozenset({"name", "train.device", "data.workers", "train.log_every", "train.out_dir",
                             "train.run_name", "train.progress"})

PACKAGES = ("torch", "torchvision", "numpy", "opencv-python-headless", "pycocotools", "scipy", "cdkd")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one rank: epoch e of a run is the same whether the run went straight
    through or was resumed at e, and each DDP rank draws its own augmentation."""
    return seed * 100_003 + epoch + 7_919 * rank


OUTPUT_FOLDERS = ("results", "data", "runs")


def git_state(path: Path | None = None) -> dict:
    """Commit and dirtiness of the repository holding the package (or ``path``).

    ``dirty`` says whether tracked files other than outputs changed: the committed results, data and
    run folders (``OUTPUT_FOLDERS``) are what a run writes or replaces (``rm -rf results/demo`` before
    a fresh reproduction), not the code that produced them.
    """
    where = str(path or Path(__file__).resolve().parents[2])

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", where, *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                         *(f":(top,exclude){folder}" for folder in OUTPUT_FOLDERS)))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def environment_info() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info = {
        "git": git_state(),
        "python": sys.version.split()[0],
        "packages": versions,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def setup_run(cfg: Config, out_dir: str | Path | None = None, write: bool = True) -> Path:
    """Seed everything and create the run folder with ``config.yaml`` and ``environment.json``.

    Args:
        cfg: resolved configuration.
        out_dir: the run folder; default ``cfg.train.out_dir / run_name(cfg)``.
        write: False on non-zero ranks (only rank 0 writes).
    Returns:
        The run folder path.
    """
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    run_dir = Path(out_dir) if out_dir else Path(cfg.train.out_dir) / run_name(cfg)
    if write:
        import yaml

        check_writable(run_dir, "the run folder")
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        atomic_write_text(run_dir / "environment.json", json.dumps(environment_info(), indent=2))
    return run_dir


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: a reader (or a
    kill at any moment) sees the old file or the new one, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def run_files(run_dir: str | Path) -> list[str]:
    """The :data:`RUN_FILES` present in ``run_dir`` (empty: the folder holds no run)."""
    return [name for name in RUN_FILES if (Path(run_dir) / name).exists()]


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: dict | Config, new: dict | Config, ignore=NON_RESULT_KEYS) -> dict[str, list]:
    """Keys whose values differ between two configs, as ``{'train.lr': [old, new]}``.

    Keys in ``ignore`` (default :data:`NON_RESULT_KEYS`) are left out; tuples and lists compare equal.
    """
    flat_old = _flatten(old if isinstance(old, dict) else config_to_dict(old))
    flat_new = _flatten(new if isinstance(new, dict) else config_to_dict(new))

    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    ignore = set(ignore)
    share = flat_new.get("distill.calibrate_share") or 0
    if share > 0 and flat_old.get("distill.calibrate_share") == share:
        # alpha and beta of a calibrated run are chosen by the rule (recorded in its config.yaml), not requested
        ignore |= {"distill.alpha", "distill.beta"}
    return {key: [plain(flat_old.get(key)), plain(flat_new.get(key))]
            for key in sorted(set(flat_old) | set(flat_new))
            if key not in ignore and plain(flat_old.get(key)) != plain(flat_new.get(key))}


def describe_changes(changes: dict[str, list]) -> str:
    """``train.lr: 0.001 -> 0.5, train.seed: 0 -> 1`` (the first few keys)."""
    parts = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(changes.items())[:6]]
    more = len(changes) - 6
    return ", ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def check_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` and check a file can be written there; raise ConfigError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to {what} {folder}: {err.strerror or err}") from None
    return folder
