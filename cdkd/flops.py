"""Model size: parameters, exact multiply-accumulates, and the paper's "FLOPs (G)" column.

Reproduces the Params (M) and FLOPs (G) columns of CDKD Tables I and II (Gu et al.): CDKD adds
nothing at inference, so the student's cost is that of the SimCC baseline.

Two counts are reported:

* ``gmacs``: exact multiply-accumulates of one forward pass at batch 1, from PyTorch's
  ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2 / 1e9). It covers every matrix
  product: convolutions, deconvolutions and the full SimCC linear heads.
* ``paper_gflops``: the figure printed by ``get_model_summary`` in the HRNet/SimCC code
  (``lib/utils/utils.py``) and copied into the paper's tables. Its forward hooks count, per call,
  ``weight.numel() * output H * output W`` for every module whose class name contains "Conv"
  (bias ignored) and ``output.numel() * input.size(1)`` for every ``nn.Linear``; the sum is divided
  by ``1024**3``. On the SimCC head the input is ``[B, J, H/4*W/4]``, so ``input.size(1)`` is J, not
  the true fan-in H/4*W/4: the head is undercounted. Hence W32@64 is 0.639 exact GMACs but 0.593
  "GFLOPs" in the paper.

Command line: ``python -m cdkd flops --arch hrnet_w32 --joints 16 --input 64 --split 3 [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _paper_macs(model: nn.Module, images: torch.Tensor) -> int:
    """Multiply-adds as counted by the official ``get_model_summary`` (see the module docstring).

    Args:
        model: the pose model.
        images: the dummy input ``[1, 3, H, W]``.
    Returns:
        The summed count (not yet divided by 1024**3).
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        nonlocal total
        if "Conv" in type(module).__name__ and hasattr(module, "weight"):
            total += module.weight.numel() * math.prod(output.shape[2:])
        elif isinstance(module, nn.Linear):
            total += output.numel() * inputs[0].shape[1]

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if m is not model and not isinstance(m, (nn.ModuleList, nn.Sequential))
    ]
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    return total


def size_report(
    model_or_arch: nn.Module | str,
    num_joints: int = 16,
    input_size: tuple[int, int] | int = (64, 64),
    split_ratio: float = 3.0,
) -> dict:
    """Parameters and compute of a SimCC pose model at batch 1.

    Args:
        model_or_arch: a built model (its own ``input_size`` is used; the other arguments are
            ignored) or an arch name from :data:`cdkd.models.ARCHS`.
        num_joints: J when building from an arch name (16 MPII, 17 COCO).
        input_size: (H, W) or one int, when building from an arch name.
        split_ratio: k when building from an arch name.
    Returns:
        ``{'params': int, 'params_m': float (millions), 'gmacs': float (exact, 1e9),
        'paper_gflops': float (get_model_summary convention, 1024**3)}``.
    """
    if isinstance(model_or_arch, str):
        from cdkd.models import build_pose_model

        model = build_pose_model(model_or_arch, num_joints, input_size, split_ratio)
    else:
        model = model_or_arch
    height, width = model.input_size
    parameter = next(model.parameters())
    images = torch.zeros(1, 3, height, width, dtype=parameter.dtype, device=parameter.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                model(images)
            paper = _paper_macs(model, images)
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": params,
        "params_m": params / 1e6,
        "gmacs": counter.get_total_flops() / 2 / 1e9,
        "paper_gflops": paper / 1024**3,
    }


def parse_input_size(text: str) -> tuple[int, int]:
    """``'64'`` -> (64, 64); ``'256x192'`` -> (256, 192) as (H, W)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input expects N or HxW (e.g. 64 or 256x192), got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"--input expects N or HxW (e.g. 64 or 256x192), got {text!r}")
    return sizes[0], sizes[1]


def cli(argv: list[str], command: str = "flops") -> int:
    """``python -m cdkd flops``: print the size report of one model configuration."""
    parser = argparse.ArgumentParser(
        prog=f"python -m cdkd {command}",
        description="Parameters, exact GMACs and the paper's GFLOPs convention of a SimCC pose model.",
    )
    parser.add_argument("--arch", default="hrnet_w32", help="model architecture (default hrnet_w32)")
    parser.add_argument("--joints", type=int, default=16, help="number of joints J: 16 MPII, 17 COCO (default 16)")
    parser.add_argument("--input", type=parse_input_size, default=(64, 64), help="input size N or HxW (default 64)")
    parser.add_argument("--split", type=float, default=3.0, help="SimCC split ratio k (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        report = size_report(args.arch, args.joints, args.input, args.split)
    except ValueError as err:
        parser.error(str(err))
    if args.json:
        print(json.dumps(report))
        return 0
    height, width = args.input
    print(f"SimCC {args.arch}, input {height}x{width} (H x W), {args.joints} joints, split ratio k={args.split:g}")
    print(f"  parameters            {report['params']:,} ({report['params_m']:.3f} M)")
    print(f"  exact GMACs           {report['gmacs']:.3f}  (FlopCounterMode, batch 1, FLOPs/2/1e9)")
    print(f"  paper GFLOPs          {report['paper_gflops']:.3f}  (get_model_summary convention, /1024^3)")
    print(
        "  The paper's figure is the HRNet/SimCC summary: conv weights x output pixels plus a linear term\n"
        "  that undercounts the SimCC head, divided by 1024^3; the exact count divides true MACs by 1e9."
    )
    return 0
