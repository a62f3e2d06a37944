"""Export of a SimCC student to ONNX and TorchScript: same logits as PyTorch, any batch, CLI.

A freshly built SimCC model has ``final_layer`` weights of std 0.001 (the official init), so its
logits are almost exactly the head's biases whatever the image: a broken export would still
match. The tests therefore re-draw every weight so that the logits depend on the input (checked).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdkd.models.load import save_checkpoint
from cdkd.export import cli, export_onnx, export_torchscript, verify_onnx, verify_torchscript
from cdkd.models import build_pose_model

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.timeout(180)


def student(size: int, joints: int = 17, k: float = 2.0) -> torch.nn.Module:
    """A tiny student whose logits clearly depend on the image (weights re-drawn, seeded)."""
    torch.manual_seed(size)
    model = build_pose_model("hrnet_w8_tiny", joints, (size, size), k)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0, (2.0 / p[0].numel()) ** 0.5)  # He init: activations keep their scale
            elif "bn" not in name:
                p.normal_(0, 0.1)
    model.eval()
    a, b = model(torch.randn(2, 3, size, size)).x
    assert (a - b).abs().max() > 1e-2  # the logits see the image
    return model


def run_onnx(path, image: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image.numpy()})


@pytest.mark.parametrize("size", [32, 64])
def test_onnx_matches_pytorch_with_dynamic_batch(tmp_path, size):
    model = student(size)
    path = export_onnx(model, tmp_path / f"s{size}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["x", "y", "feature"]
    for batch in (1, 5):
        image = torch.randn(batch, 3, size, size)
        x, y, feature = run_onnx(path, image)
        with torch.no_grad():
            ref = model(image)
        assert x.shape == (batch, 17, size * 2) and y.shape == (batch, 17, size * 2)
        assert feature.shape == (batch, 17, size // 4, size // 4)
        assert np.abs(x - ref.x.numpy()).max() < 1e-4
        assert np.abs(y - ref.y.numpy()).max() < 1e-4
    report = verify_onnx(model, path, batch_sizes=(2, 4))
    assert report["max_abs_diff_logits"] < 1e-4


def test_onnx_fixed_batch_and_logits_only(tmp_path):
    model = student(32, joints=16, k=3.0)
    path = export_onnx(model, tmp_path / "fixed.onnx", batch=2, logits_only=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["x", "y"]
    assert session.get_inputs()[0].shape == [2, 3, 32, 32]
    x, y = run_onnx(path, torch.randn(2, 3, 32, 32))
    assert x.shape == (2, 16, 96) and y.shape == (2, 16, 96)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="dimensions"):
        run_onnx(path, torch.randn(3, 3, 32, 32))  # the batch axis is fixed
    with pytest.raises(ValueError, match="batch"):
        export_onnx(model, tmp_path / "bad.onnx", batch=0)


@pytest.mark.parametrize("size", [32, 64])
def test_torchscript_matches_pytorch(tmp_path, size):
    model = student(size)
    path = export_torchscript(model, tmp_path / f"s{size}.pt")
    loaded = torch.jit.load(str(path))
    for batch in (1, 4):
        image = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            x, y, _ = loaded(image)
            ref = model(image)
        assert (x - ref.x).abs().max() < 1e-4 and (y - ref.y).abs().max() < 1e-4
    assert verify_torchscript(model, path)["max_abs_diff_logits"] < 1e-4


def test_export_keeps_training_mode(tmp_path):
    model = student(32).train()
    export_torchscript(model, tmp_path / "m.pt", logits_only=True)
    assert model.training


def test_cli_on_a_saved_checkpoint(tmp_path, capsys):
    model = student(32)
    ckpt = save_checkpoint(tmp_path / "best.pth", model)
    assert cli(["--checkpoint", str(ckpt), "--format", "onnx", "--dynamic-batch"], "export") == 0
    printed = capsys.readouterr().out
    assert "max abs diff of logits" in printed
    assert (tmp_path / "best.onnx").is_file()
    x, _, _ = run_onnx(tmp_path / "best.onnx", torch.zeros(3, 3, 32, 32))
    assert x.shape == (3, 17, 64)
    out = tmp_path / "deploy" / "student.pt"
    assert cli(["--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)], "export") == 0
    assert out.is_file() and "max abs diff" in capsys.readouterr().out
    assert cli(["--checkpoint", str(tmp_path / "missing.pth")], "export") == 2  # issue 12: a message, exit 2
    assert "missing.pth" in capsys.readouterr().err
