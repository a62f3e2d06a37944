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
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from cdkd.config import Config, run_name, save_config

PACKAGES = ("torch", "torchvision", "numpy", "opencv-python-headless", "pycocotools", "scipy", "cdkd")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def git_state(path: Path | None = None) -> dict:
    """Commit and dirtiness of the repository holding the package (or ``path``)."""
    where = str(path or Path(__file__).resolve().parents[2])

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", where, *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
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
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        with open(run_dir / "environment.json", "w") as f:
            json.dump(environment_info(), f, indent=2)
    return run_dir
