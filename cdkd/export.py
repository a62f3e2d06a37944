"""Deployment: export a trained SimCC student to ONNX or TorchScript, and check the export.

CDKD (Gu et al.) claims "no computational cost increment" at inference: the distilled student is
a plain SimCC model (Li et al., ECCV 2022), and everything CDKD adds (SAPE projectors, SAU, CCA,
the ETHT temperature) lives in the training-only ``Distiller``. So deploying a CDKD student is
deploying its ``SimCCPoseModel``: image ``[B, 3, H, W]`` -> logits ``x [B, J, W*k]``,
``y [B, J, H*k]`` (and, unless ``logits_only``, the ``final_layer`` feature ``[B, J, H/4, W/4]``).
Decoding (argmax / k), flip test and the mapping back to the image stay outside the graph, in
:mod:`cdkd.codec` and :mod:`cdkd.inference`.

Formats:

* ONNX through ``torch.onnx.export`` with the ``torch.export``-based exporter (PyTorch's default
  since 2.9; ``dynamo=False`` selects the older TorchScript-based one). Input ``image``, outputs
  ``x``, ``y`` (``feature``). The batch axis is named ``batch`` and dynamic unless a fixed batch is
  asked for. The file is self-contained (no external ``.data`` file) below ONNX's 2 GB limit.
* TorchScript through ``torch.jit.trace`` (deprecated by PyTorch in favour of ``torch.export``, but
  still the format a C++ libtorch program loads). The traced module returns a tuple.

After an export, :func:`verify_onnx` / :func:`verify_torchscript` run the exported model (ONNX
Runtime when it is installed) and the PyTorch model on the same random inputs and report the
largest absolute difference of the logits.

Command line::

    python -m cdkd export --checkpoint runs/.../best.pth --format onnx [--out PATH] [--dynamic-batch]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

FORMATS = ("onnx", "torchscript")
_TWO_GB = 2 * 1024**3


class ExportedOutputs(nn.Module):
    """Wraps a pose model so that it returns a plain tuple: ``(x, y, feature)`` or ``(x, y)``.

    Exporters handle tuples of tensors best; the wrapper also fixes the output order, which is the
    order of the ONNX output names.

    Args:
        model: a SimCC pose model returning ``PoseOutput(x, y, feature)``.
        logits_only: drop the feature output.
    """

    def __init__(self, model: nn.Module, logits_only: bool = False):
        super().__init__()
        self.model = model
        self.logits_only = logits_only

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Args: image ``[B, 3, H, W]``. Returns: ``x [B, J, W*k]``, ``y [B, J, H*k]`` (, ``feature``)."""
        out = self.model(image)
        if self.logits_only:
            return out.x, out.y
        return out.x, out.y, out.feature


def output_names(logits_only: bool = False) -> list[str]:
    """Names of the exported outputs, in order."""
    return ["x", "y"] if logits_only else ["x", "y", "feature"]


def _input_shape(model: nn.Module) -> tuple[int, int]:
    """(H, W) the model was built for, or a clear error for an object that is not a pose model."""
    size = getattr(model, "input_size", None)
    if size is None or len(size) != 2:
        raise TypeError(
            f"export needs a SimCC pose model with an 'input_size' (H, W) attribute; got {type(model).__name__}"
        )
    return int(size[0]), int(size[1])


def _example(model: nn.Module, batch: int) -> torch.Tensor:
    h, w = _input_shape(model)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, h, w, generator=generator).to(device)  # [B, 3, H, W]


def export_onnx(
    model: nn.Module,
    path: str | Path,
    batch: int | None = None,
    opset: int = 17,
    logits_only: bool = False,
    dynamo: bool = True,
) -> Path:
    """Export a pose model to one ONNX file.

    Args:
        model: a :class:`~cdkd.models.simcc.SimCCPoseModel` (any device; exported in eval mode,
            its training mode is restored afterwards).
        path: the ``.onnx`` file to write (parent folders are created).
        batch: a fixed batch size, or None for a dynamic batch axis named ``batch``.
        opset: ONNX opset version.
        logits_only: export only the ``x`` and ``y`` outputs (no ``feature``).
        dynamo: use the ``torch.export``-based exporter (True) or the TorchScript-based one.
    Returns:
        The path written.
    """
    if batch is not None and int(batch) < 1:
        raise ValueError(f"export batch must be a positive integer or None (dynamic); got {batch!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    wrapper = ExportedOutputs(model, logits_only).eval()
    example = _example(model, 2 if batch is None else int(batch))
    names = output_names(logits_only)
    kwargs: dict = {}
    if dynamo:
        if batch is None:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
        kwargs.update(external_data=_parameter_bytes(model) >= _TWO_GB, verbose=False)
    elif batch is None:
        kwargs["dynamic_axes"] = {"image": {0: "batch"}, **{name: {0: "batch"} for name in names}}
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
            torch.onnx.export(
                wrapper, (example,), str(path), input_names=["image"], output_names=names,
                opset_version=opset, dynamo=dynamo, **kwargs,
            )
    finally:
        model.train(was_training)
    return path


def _parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def export_torchscript(model: nn.Module, path: str | Path, batch: int = 2, logits_only: bool = False) -> Path:
    """Trace a pose model to a TorchScript file (``torch.jit.load`` / libtorch ``torch::jit::load``).

    The trace records the graph at one batch size; every op of the SimCC models is batch-agnostic,
    so the traced module runs at any batch (checked by :func:`verify_torchscript`). The models'
    Python checks of the input height and width become constants in the trace (TracerWarnings
    about them are silenced): the exported module accepts only the input size it was built for.

    Args:
        model: a :class:`~cdkd.models.simcc.SimCCPoseModel`.
        path: the file to write (``.pt``); parent folders are created.
        batch: batch size of the example input used for tracing.
        logits_only: return ``(x, y)`` instead of ``(x, y, feature)``.
    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    wrapper = ExportedOutputs(model, logits_only).eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(wrapper, (_example(model, batch),), check_trace=False)
        traced.save(str(path))
    finally:
        model.train(was_training)
    return path


def _reference(model: nn.Module, image: torch.Tensor, logits_only: bool) -> list[torch.Tensor]:
    was_training = model.training
    try:
        with torch.no_grad():
            return [t.float().cpu() for t in ExportedOutputs(model, logits_only).eval()(image)]
    finally:
        model.train(was_training)


def _max_diffs(names: list[str], got: list, want: list[torch.Tensor]) -> dict[str, float]:
    diffs = {}
    for name, a, b in zip(names, got, want):
        a = torch.as_tensor(a).float().cpu()
        if tuple(a.shape) != tuple(b.shape):
            raise AssertionError(f"exported output '{name}' has shape {tuple(a.shape)}, PyTorch {tuple(b.shape)}")
        diffs[name] = float((a - b).abs().max())
    return diffs


def verify_onnx(model: nn.Module, path: str | Path, batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0) -> dict:
    """Run an exported ONNX file with ONNX Runtime and compare it with the PyTorch model.

    Args:
        model: the PyTorch model that was exported.
        path: the ONNX file.
        batch_sizes: batches to try (for a fixed-batch export, pass that batch only).
        seed: seed of the random inputs.
    Returns:
        ``{'max_abs_diff_logits': float (over x and y and every batch), 'per_output': {batch: {name:
        diff}}, 'runtime': 'onnxruntime X.Y'}``, or ``{'skipped': reason}`` without onnxruntime.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    h, w = _input_shape(model)
    generator = torch.Generator().manual_seed(seed)
    per: dict[int, dict[str, float]] = {}
    device = next(model.parameters()).device
    for b in batch_sizes:
        image = torch.randn(b, 3, h, w, generator=generator)  # [B, 3, H, W]
        got = session.run(None, {session.get_inputs()[0].name: image.numpy()})
        per[b] = _max_diffs(names, got, _reference(model, image.to(device), logits_only=len(names) == 2))
    worst = max(max(d[n] for n in ("x", "y")) for d in per.values())
    return {"max_abs_diff_logits": worst, "per_output": per, "runtime": f"onnxruntime {ort.__version__}"}


def verify_torchscript(model: nn.Module, path: str | Path, batch_sizes: tuple[int, ...] = (1, 3),
                       seed: int = 0) -> dict:
    """Load a TorchScript file and compare it with the PyTorch model (same keys as :func:`verify_onnx`)."""
    device = next(model.parameters()).device
    loaded = torch.jit.load(str(path), map_location=device)
    h, w = _input_shape(model)
    generator = torch.Generator().manual_seed(seed)
    per: dict[int, dict[str, float]] = {}
    for b in batch_sizes:
        image = torch.randn(b, 3, h, w, generator=generator).to(device)  # [B, 3, H, W]
        with torch.no_grad():
            got = list(loaded(image))
        names = output_names(logits_only=len(got) == 2)
        per[b] = _max_diffs(names, got, _reference(model, image, logits_only=len(got) == 2))
    worst = max(max(d[n] for n in ("x", "y")) for d in per.values())
    return {"max_abs_diff_logits": worst, "per_output": per, "runtime": f"torch.jit {torch.__version__}"}


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """``best.pth`` -> ``best.onnx`` / ``best.torchscript.pt`` beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_suffix(".onnx" if fmt == "onnx" else ".torchscript.pt")


def cli(argv: list[str], command: str = "export") -> int:
    """``python -m cdkd export``: checkpoint -> ONNX / TorchScript, then a numerical check.

    Args:
        argv: the arguments after the command name.
        command: the command name (for the usage line).
    Returns:
        0 on success, 1 when the exported model disagrees with PyTorch (max abs diff of the
        logits above ``--tolerance``).
    """
    parser = argparse.ArgumentParser(prog=f"python -m cdkd {command}",
                                     description="Export a trained SimCC student to ONNX or TorchScript and check "
                                                 "the exported model against PyTorch.")
    parser.add_argument("--checkpoint", required=True, help="cdkd checkpoint (.pth) of a trained model (required)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default: onnx)")
    parser.add_argument("--out", default=None,
                        help="output file (default: beside the checkpoint, .onnx or .torchscript.pt)")
    parser.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis, ONNX (default: off)")
    parser.add_argument("--batch", type=int, default=1, help="fixed batch size without --dynamic-batch (default: 1)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    parser.add_argument("--logits-only", action="store_true",
                        help="export x and y only, no feature output (default: off)")
    parser.add_argument("--legacy-exporter", action="store_true",
                        help="TorchScript-based ONNX exporter (default: off, the dynamo exporter)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted logit difference (default: 1e-4)")
    parser.add_argument("--no-verify", action="store_true", help="skip the numerical check (default: off)")
    args = parser.parse_args(argv)
    from cdkd.checkpoint import CheckpointError
    from cdkd.config import ConfigError

    try:
        return _export(args)
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"cdkd {command}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:  # unwritable --out, disk full
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"cdkd {command}: {err.strerror or err}{where}", file=sys.stderr)
        return 2


def check_export_arguments(args: argparse.Namespace) -> None:
    """``--tolerance`` a finite number >= 0; ``--opset`` one the chosen exporter writes (before any work)."""
    import math

    from torch.onnx import _constants

    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise ValueError(f"--tolerance is {args.tolerance:g}; it must be a finite number >= 0")
    if args.format != "onnx":
        return
    low = _constants.ONNX_MIN_OPSET
    high = _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET if args.legacy_exporter else _constants.ONNX_MAX_OPSET
    if not low <= args.opset <= high:
        raise ValueError(f"--opset is {args.opset}; this torch's {'legacy ' if args.legacy_exporter else ''}ONNX "
                         f"exporter writes opsets {low} to {high}")


def check_written_opset(path: Path, opset: int) -> None:
    """The file must hold the requested opset (the dynamo exporter may silently write its own); if
    not, the file is removed and the error names both."""
    try:
        import onnx
    except ImportError:
        return
    written = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                    if o.domain in ("", "ai.onnx")), None)
    if written is not None and written != opset:
        path.unlink(missing_ok=True)
        raise ValueError(f"--opset {opset} was asked for but the exporter wrote opset {written} (it cannot convert "
                         f"this model down to {opset}); use --opset {written}, or --legacy-exporter for opsets "
                         "below 18")


def _export(args: argparse.Namespace) -> int:
    """The export command after argument parsing (see :func:`cli`)."""
    from cdkd.models.load import load_model
    from cdkd.engine.run import check_writable

    if args.batch < 1:
        raise ValueError(f"--batch is {args.batch}; it must be 1 or more")
    check_export_arguments(args)
    out = Path(args.out) if args.out else default_output(args.checkpoint, args.format)
    model = load_model(args.checkpoint, map_location="cpu")
    check_writable(out.parent, "the folder of --out")
    batch = None if args.dynamic_batch else args.batch
    if args.format == "onnx":
        export_onnx(model, out, batch=batch, opset=args.opset, logits_only=args.logits_only,
                    dynamo=not args.legacy_exporter)
        check_written_opset(out, args.opset)
    else:
        export_torchscript(model, out, batch=args.batch, logits_only=args.logits_only)
    h, w = model.input_size
    print(f"exported {model.arch} ({h}x{w}, k={model.split_ratio:g}, J={model.num_joints}) to {out} "
          f"[{args.format}, batch {'dynamic' if batch is None else batch}]")
    if args.no_verify:
        return 0
    sizes = (1, 3) if batch is None or args.format == "torchscript" else (batch,)
    verify = verify_onnx if args.format == "onnx" else verify_torchscript
    report = verify(model, out, batch_sizes=sizes)
    if "skipped" in report:
        print(f"not verified: {report['skipped']}")
        return 0
    diff = report["max_abs_diff_logits"]
    print(f"verified with {report['runtime']} at batch {', '.join(map(str, sizes))}: "
          f"max abs diff of logits {diff:.3g}")
    if diff > args.tolerance:
        print(f"error: the exported model differs from PyTorch by more than --tolerance {args.tolerance:g}")
        return 1
    return 0
