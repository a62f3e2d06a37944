"""Inference latency and throughput of the students and the teacher: eager, ONNX Runtime, TorchScript.

CDKD's claim "no computational cost increment" (Gu et al., Sec. I and Tables I-II): the deployed
student is a plain SimCC model, so its speed is the baseline's. This script times the forward
pass (logits and feature; no decoding) of the paper's students (HRNet-W32 at 32x32, k=2, and at
64x64, k=3), the tiny demo student (hrnet_w8_tiny, k=2) and the HRNet-W32 teacher at 256x256
(k=3), at batch 1 (latency) and batch 64 (throughput), in PyTorch eager mode and exported with
:mod:`cdkd.export` (ONNX Runtime, TorchScript). Weights are random (speed does not depend on them);
each export is checked against eager PyTorch (largest logit difference in the table).

    python benchmarks/inference.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import measure, parse_args, round_to, write_result

MODELS = [
    # name, arch, input side, k
    ("student tiny 32", "hrnet_w8_tiny", 32, 2.0),
    ("student tiny 64", "hrnet_w8_tiny", 64, 2.0),
    ("student W32 32", "hrnet_w32", 32, 2.0),
    ("student W32 64", "hrnet_w32", 64, 3.0),
    ("teacher W32 256", "hrnet_w32", 256, 3.0),
]
JOINTS = 17


def redraw_weights_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights whose logits depend on the image, with realistic activation scales.

    The official init leaves ``final_layer`` at std 0.001: the logits are then nearly the head's
    biases whatever the input, and the export check below would compare constants. Here every
    weight is He-initialised (biases N(0, 0.1)) and the BatchNorm statistics are then measured on
    two random batches (cumulative average), so that activations stay of order one in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / p[0].numel()) ** 0.5)
            elif "bn" not in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        h, w = model.input_size
        for _ in range(2):
            model(torch.randn(4, 3, h, w, generator=generator))
        for m in norms:
            m.momentum = 0.1
    return model.eval()


def ort_session(path: Path, device: str):
    """An ONNX Runtime session with as many intra-op threads as torch uses, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime is not installed"
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return None, "onnxruntime has no CUDAExecutionProvider here"
        providers = ["CUDAExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers), None


def plan(quick: bool, device: str) -> list[tuple[str, int]]:
    """(model name, batch) pairs; on a quick CPU run the teacher at batch 64 (about 10 s per call) is left out."""
    out = []
    for name, _, side, _ in MODELS:
        for batch in (1, 64):
            if quick and device == "cpu" and side >= 256 and batch > 1:
                continue
            out.append((name, batch))
    return out


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(__doc__.split("\n")[0], argv)
    from cdkd.export import export_onnx, export_torchscript, verify_onnx, verify_torchscript
    from cdkd.flops import size_report
    from cdkd.models import build_pose_model

    device = torch.device(args.device)
    wanted = plan(args.quick, args.device)
    rows, notes, summary = [], [], {}
    with tempfile.TemporaryDirectory(prefix="cdkd_bench_infer_") as tmp:
        for name, arch, side, k in MODELS:
            batches = [b for n, b in wanted if n == name]
            if not batches:
                continue
            torch.manual_seed(0)
            model = redraw_weights_(build_pose_model(arch, JOINTS, (side, side), k)).eval()
            size = size_report(model)
            onnx_path = export_onnx(model, Path(tmp) / f"{arch}_{side}.onnx")
            ts_path = export_torchscript(model, Path(tmp) / f"{arch}_{side}.pt")
            diffs = {"onnxruntime": verify_onnx(model, onnx_path, batch_sizes=(2,)).get("max_abs_diff_logits"),
                     "torchscript": verify_torchscript(model, ts_path, batch_sizes=(2,))["max_abs_diff_logits"]}
            with torch.no_grad():
                logits = model(torch.randn(2, 3, side, side)).x
            scale = float(logits.abs().max())
            model = model.to(device)
            scripted = torch.jit.load(str(ts_path), map_location=device)
            session, why = ort_session(onnx_path, args.device)
            if session is None:
                notes.append(f"{name}: ONNX Runtime not timed ({why}).")
            for batch in batches:
                image = torch.randn(batch, 3, side, side, device=device)  # [B, 3, H, W]
                feed = {"image": image.cpu().numpy()}
                fns = {"eager": lambda m=model, x=image: m(x), "torchscript": lambda m=scripted, x=image: m(x)}
                if session is not None:
                    fns["onnxruntime"] = lambda s=session, f=feed: s.run(None, f)
                heavy = size["gmacs"] * batch > 20 and args.device == "cpu"
                warmup, iters = (1, 3) if heavy else (3, 10 if args.quick else 30)
                with torch.no_grad():
                    times = measure(fns, device, warmup, iters)
                for backend, t in times.items():
                    ms = 1e3 * t["median_s"]
                    diff = diffs.get(backend, 0.0)
                    rows.append([name, f"{side}x{side}", f"{k:g}", batch, backend, round_to(ms),
                                 round_to(batch / t["median_s"]), round_to(size["params_m"]),
                                 round_to(size["gmacs"]), "-" if diff is None else round_to(diff, 2),
                                 round_to(scale, 2), iters])
                    if batch == 1 and backend in ("eager", "onnxruntime") and "W32" in name:
                        summary[f"{name} batch 1 {backend} (ms)"] = round_to(ms)
                print(f"{name} batch {batch}: " + ", ".join(f"{b} {1e3 * t['median_s']:.1f} ms"
                                                           for b, t in times.items()), file=sys.stderr)
    if args.quick and args.device == "cpu":
        notes.append("Quick CPU run: the teacher at batch 64 is left out (about 10 s per forward on one core).")
    notes += [
        "Latency = median time of one forward call (batch 1: per image); throughput = batch / median.",
        "Forward only (logits + feature), no decoding or flip test; the flip test doubles the time.",
        ("max |dlogit|: largest absolute difference of the x/y logits between the export and eager PyTorch "
        "(random inputs, batch 2; 0 for eager itself); max |logit| gives the scale. Weights are He-initialised "
        "at random with calibrated BatchNorm statistics (redraw_weights_), so that the logits depend on the input."),
        f"ONNX Runtime uses intra_op_num_threads = torch.get_num_threads() ({torch.get_num_threads()}).",
    ]
    write_result(
        args, "inference", "inference.py", started,
        title="Inference latency and throughput (students and teacher)",
        description=__doc__.split("\n\n")[0],
        settings={"joints": JOINTS, "models": [list(m) for m in MODELS], "plan": wanted},
        summary=summary,
        tables=[{"title": "Forward pass: latency (ms) and throughput (images/s)",
                 "columns": ["model", "input", "k", "batch", "backend", "ms (median)", "images/s", "params M",
                             "GMACs", "max |dlogit|", "max |logit|", "rounds"],
                 "rows": rows}],
        notes=notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
