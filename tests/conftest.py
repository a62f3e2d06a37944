"""Test-wide settings (CPU threads capped so the suite behaves on a 2-core machine) and the tiny
synthetic data set and teacher shared by the engine and diagnosis tests."""

import os

import pytest
import torch

from cdkd.config import load_config
from cdkd.data.synthetic import synthesize
from cdkd.engine.train import fit

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A few synthetic persons (COCO and MPII formats); test modules may define their own."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, train=48, val=16, seed=3)
    return root


@pytest.fixture(scope="module")
def teacher_ckpt(synth, tmp_path_factory):
    """A (briefly trained) tiny teacher at 64x64 for the distillation tests."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = load_config("tiny_teacher", [f"data.root={synth}/mpii", "train.max_steps_per_epoch=2"])
    return fit(cfg, run_dir=out / "teacher") / "best.pth"
