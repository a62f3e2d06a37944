"""Checkpoints: round trip, official SimCC state dicts, clear errors, ImageNet backbone loading.

The "official" state dicts here are generated from the naming rules of the official pose HRNet
(``lib/models/pose_hrnet.py``: stem, layer1 Bottlenecks, transitions, stages of
HighResolutionModules with ``branches`` and ``fuse_layers``) and SimCC's head names, not from our
own model's ``state_dict``.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from cdkd.checkpoint import CheckpointError, load_checkpoint, load_pretrained_backbone
from cdkd.models import ARCHS, build_pose_model
from cdkd.models.load import load_model, load_weights, save_checkpoint
from cdkd.models.simcc import from_official_keys, to_official_keys

pytestmark = pytest.mark.timeout(120)

# The official HRNet-W32 (w32_256x256_adam_lr1e-3.yaml) and the tiny CPU variant, as plain numbers.
W32 = {"stem": 64, "planes": 64, "layer1": 4, "modules": (1, 4, 3), "blocks": 4, "widths": (32, 64, 128, 256)}
TINY = {"stem": 16, "planes": 8, "layer1": 1, "modules": (1, 1, 1), "blocks": 1, "widths": (8, 16, 32, 64)}


def _conv(keys, name, cout, cin, k):
    keys[f"{name}.weight"] = (cout, cin, k, k)


def _bn(keys, name, c):
    for p in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{name}.{p}"] = (c,)
    keys[f"{name}.num_batches_tracked"] = ()


def official_hrnet_keys(net: dict, classification: bool = False) -> dict[str, tuple]:
    """Key -> shape of the official pose HRNet backbone (``classification``: the last module of
    stage 4 fuses into all four branches, as in the ImageNet HRNet)."""
    keys: dict[str, tuple] = {}
    stem, planes = net["stem"], net["planes"]
    _conv(keys, "conv1", stem, 3, 3)
    _bn(keys, "bn1", stem)
    _conv(keys, "conv2", stem, stem, 3)
    _bn(keys, "bn2", stem)
    for b in range(net["layer1"]):
        cin = stem if b == 0 else 4 * planes
        p = f"layer1.{b}"
        _conv(keys, f"{p}.conv1", planes, cin, 1)
        _bn(keys, f"{p}.bn1", planes)
        _conv(keys, f"{p}.conv2", planes, planes, 3)
        _bn(keys, f"{p}.bn2", planes)
        _conv(keys, f"{p}.conv3", 4 * planes, planes, 1)
        _bn(keys, f"{p}.bn3", 4 * planes)
        if b == 0 and cin != 4 * planes:
            _conv(keys, f"{p}.downsample.0", 4 * planes, cin, 1)
            _bn(keys, f"{p}.downsample.1", 4 * planes)
    previous = [4 * planes]
    for s, num_modules in enumerate(net["modules"]):
        stage, transition = s + 2, s + 1
        current = list(net["widths"][:stage])
        for i, c in enumerate(current):
            if i < len(previous):
                if previous[i] != c:
                    _conv(keys, f"transition{transition}.{i}.0", c, previous[i], 3)
                    _bn(keys, f"transition{transition}.{i}.1", c)
            else:
                _conv(keys, f"transition{transition}.{i}.0.0", c, previous[-1], 3)
                _bn(keys, f"transition{transition}.{i}.0.1", c)
        for m in range(num_modules):
            p = f"stage{stage}.{m}"
            for br, c in enumerate(current):
                for b in range(net["blocks"]):
                    _conv(keys, f"{p}.branches.{br}.{b}.conv1", c, c, 3)
                    _bn(keys, f"{p}.branches.{br}.{b}.bn1", c)
                    _conv(keys, f"{p}.branches.{br}.{b}.conv2", c, c, 3)
                    _bn(keys, f"{p}.branches.{br}.{b}.bn2", c)
            last = stage == 4 and m == num_modules - 1 and not classification
            for i in range(1 if last else len(current)):
                for j in range(len(current)):
                    if j > i:
                        _conv(keys, f"{p}.fuse_layers.{i}.{j}.0", current[i], current[j], 1)
                        _bn(keys, f"{p}.fuse_layers.{i}.{j}.1", current[i])
                    elif j < i:
                        for k in range(i - j):
                            out = current[i] if k == i - j - 1 else current[j]
                            _conv(keys, f"{p}.fuse_layers.{i}.{j}.{k}.0", out, current[j], 3)
                            _bn(keys, f"{p}.fuse_layers.{i}.{j}.{k}.1", out)
        previous = current
    return keys


def official_simcc_keys(net: dict, joints: int, size: int, k: float) -> dict[str, tuple]:
    keys = official_hrnet_keys(net)
    keys["final_layer.weight"] = (joints, net["widths"][0], 1, 1)
    keys["final_layer.bias"] = (joints,)
    plane = (size // 4) ** 2
    for axis in ("x", "y"):
        keys[f"mlp_head_{axis}.weight"] = (int(size * k), plane)
        keys[f"mlp_head_{axis}.bias"] = (int(size * k),)
    return keys


def random_state_dict(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.05
    return out


def test_official_w32_layout_loads_strict_and_with_module_prefix():
    shapes = official_simcc_keys(W32, joints=16, size=64, k=3)
    params = sum(
        torch.Size(s).numel()
        for key, s in shapes.items()
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert params == 28_634_768  # the paper's MPII HRNet-W32 64x64 k=3 model
    official = random_state_dict(shapes)
    model = build_pose_model("hrnet_w32", 16, 64, 3.0)
    assert {k: tuple(v.shape) for k, v in to_official_keys(model.state_dict()).items()} == shapes
    model.load_state_dict(from_official_keys(official), strict=True)
    torch.testing.assert_close(
        model.backbone.stage4[2].fuse_layers[0][3][0].weight, official["stage4.2.fuse_layers.0.3.0.weight"]
    )

    fresh = build_pose_model("hrnet_w32", 16, 64, 3.0)
    report = load_weights(fresh, {f"module.{k}": v for k, v in official.items()}, strict=True)
    assert report["missing"] == [] and report["unexpected"] == [] and len(report["loaded"]) == len(shapes)
    torch.testing.assert_close(fresh.head.mlp_head_y.weight, official["mlp_head_y.weight"])


def test_raw_official_file_needs_settings_then_loads(tmp_path):
    official = random_state_dict(official_simcc_keys(TINY, joints=16, size=64, k=2), seed=3)
    path = tmp_path / "model_best.pth"
    torch.save({f"module.{k}": v for k, v in official.items()}, path)
    with pytest.raises(CheckpointError, match="model_best.pth.*pass arch, num_joints, input_size, split_ratio"):
        load_model(path)
    model = load_model(path, arch="hrnet_w8_tiny", num_joints=16, input_size=64, split_ratio=2.0)
    assert not model.training
    torch.testing.assert_close(model.backbone.conv1.weight, official["conv1.weight"])
    # an official training checkpoint keeps the weights under 'state_dict'
    torch.save({"epoch": 3, "perf": 0.5, "state_dict": official}, path)
    model = load_model(path, arch="hrnet_w8_tiny", num_joints=16, input_size=(64, 64), split_ratio=2)
    torch.testing.assert_close(model.head.final_layer.bias, official["final_layer.bias"])


def test_shape_mismatch_names_the_key_and_both_shapes():
    official = random_state_dict(official_simcc_keys(TINY, joints=16, size=64, k=3))
    model = build_pose_model("hrnet_w8_tiny", 16, 64, 2.0)  # k=2: heads of 128 classes, file has 192
    with pytest.raises(CheckpointError, match=r"'mlp_head_x.weight' has shape \(192, 256\) .* but \(128, 256\)"):
        load_weights(model, official)
    del official["stage2.0.branches.1.0.bn2.running_var"]
    model = build_pose_model("hrnet_w8_tiny", 16, 64, 3.0)
    with pytest.raises(CheckpointError, match="missing key 'stage2.0.branches.1.0.bn2.running_var'"):
        load_weights(model, official)
    report = load_weights(model, official, strict=False)
    assert report["missing"] == ["stage2.0.branches.1.0.bn2.running_var"]
    official["stage2.0.branches.1.0.bn2.running_var"] = torch.ones(16)
    official["incre_modules.0.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="unexpected key 'incre_modules.0.weight'"):
        load_weights(model, official)


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_pose_model("hrnet_w8_tiny", 16, (64, 32), 2.0)
    with torch.no_grad():  # move BN running statistics and weights away from their init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.train()(torch.randn(4, 3, 64, 32))
    model.eval()
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = model(images)
    config = {"model": {"arch": "hrnet_w8_tiny", "input_size": [64, 32]}, "train": {"lr": 0.001}}
    path = save_checkpoint(tmp_path / "run" / "last.pth", model, config, epoch=5, metrics={"PCKh": 12.5})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pth"]  # no temporary file left
    raw = load_checkpoint(path)
    assert raw["format"] == "cdkd-checkpoint-v1"
    assert raw["model"] == {"arch": "hrnet_w8_tiny", "num_joints": 16, "input_size": [64, 32], "split_ratio": 2.0}
    assert raw["config"] == config and raw["epoch"] == 5 and raw["metrics"] == {"PCKh": 12.5}
    restored = load_model(path)
    assert restored.settings() == model.settings()
    with torch.no_grad():
        got = restored(images)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="stores num_joints=16 but num_joints=17"):
        load_model(path, num_joints=17)


def test_save_rejects_non_plain_values_and_reserved_keys(tmp_path):
    model = build_pose_model("hrnet_w8_tiny", 16, 64, 2.0)
    with pytest.raises(TypeError, match="'metrics.ap' is a numpy"):
        import numpy as np

        save_checkpoint(tmp_path / "a.pth", model, metrics={"ap": np.float64(1.0)})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "a.pth", model, state_dict={})
    assert not (tmp_path / "a.pth").exists()


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_checkpoint(tmp_path / "nothere.pth")
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_model(bad)
    weird = tmp_path / "weird.pth"
    torch.save({"epoch": 1, "note": "no weights"}, weird)
    with pytest.raises(CheckpointError, match="weird.pth.*not a state dict"):
        load_model(weird, arch="hrnet_w8_tiny", num_joints=16, input_size=64, split_ratio=2.0)


def test_imagenet_hrnet_loader_reports_classification_keys(tmp_path):
    shapes = official_hrnet_keys(TINY, classification=True)
    weights = random_state_dict(shapes, seed=5)
    # classification-only parts of the ImageNet HRNet
    weights["incre_modules.0.0.conv1.weight"] = torch.randn(32, 8, 1, 1)
    weights["downsamp_modules.0.0.weight"] = torch.randn(256, 128, 3, 3)
    weights["final_layer.0.weight"] = torch.randn(2048, 1024, 1, 1)
    weights["classifier.weight"] = torch.randn(1000, 2048)
    weights["classifier.bias"] = torch.randn(1000)
    weights["conv2.weight"] = torch.randn(16, 16, 5, 5)  # one backbone key with the wrong shape
    path = tmp_path / "hrnet_tiny_imagenet.pth"
    torch.save(weights, path)

    backbone = ARCHS["hrnet_w8_tiny"]()
    report = load_pretrained_backbone(backbone, path)
    assert report["mismatched"] == ["conv2.weight"]
    assert report["missing"] == []  # conv2.weight is in the file, listed as mismatched
    stage4_extra = [
        k for k in shapes if k.startswith("stage4.0.fuse_layers.") and not k.startswith("stage4.0.fuse_layers.0.")
    ]
    assert stage4_extra  # fuse layers into branches 1-3 exist only in the classification net
    assert set(report["unexpected"]) == set(stage4_extra) | {
        "incre_modules.0.0.conv1.weight",
        "downsamp_modules.0.0.weight",
        "final_layer.0.weight",
        "classifier.weight",
        "classifier.bias",
    }
    assert len(report["loaded"]) == len(backbone.state_dict()) - 1
    torch.testing.assert_close(
        backbone.stage3[0].branches[2][0].conv1.weight, weights["stage3.0.branches.2.0.conv1.weight"]
    )
    assert not torch.equal(backbone.conv2.weight, weights["conv2.weight"][:, :, :3, :3])

    model = build_pose_model("hrnet_w8_tiny", 16, 64, 2.0, pretrained=str(path))
    assert model.pretrained_report["unexpected"] == report["unexpected"]
    torch.testing.assert_close(model.backbone.layer1[0].conv3.weight, weights["layer1.0.conv3.weight"])

    unrelated = tmp_path / "unrelated.pth"
    torch.save({"classifier.weight": torch.zeros(3, 3)}, unrelated)
    with pytest.raises(CheckpointError, match="unrelated.pth.*none of its 1 keys"):
        load_pretrained_backbone(ARCHS["hrnet_w8_tiny"](), unrelated)


def test_imagenet_resnet_file_loads_into_pose_resnet(tmp_path):
    torch.manual_seed(0)
    torchvision_weights = torchvision.models.resnet18(weights=None).state_dict()  # conv1 ... fc
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision_weights, path)
    model = build_pose_model("resnet18", 17, 64, 2.0, pretrained=str(path))
    report = model.pretrained_report
    assert report["unexpected"] == ["fc.weight", "fc.bias"]
    assert report["mismatched"] == []
    assert report["missing"] and all(k.startswith("deconv_layers.") for k in report["missing"])
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, torchvision_weights["layer4.1.conv2.weight"])


def test_saved_files_keep_the_official_key_names(tmp_path):
    model = build_pose_model("hrnet_w8_tiny", 16, 64, 2.0)
    path = save_checkpoint(tmp_path / "best.pth", model)
    keys = set(load_checkpoint(path)["state_dict"])
    assert keys == set(official_simcc_keys(TINY, joints=16, size=64, k=2))
    assert set(model.state_dict()) == {f"backbone.{k}" for k in keys if not k.startswith(("final_layer", "mlp_head"))} | {
        f"head.{k}" for k in keys if k.startswith(("final_layer", "mlp_head"))
    }


def test_checkpoint_module_is_a_leaf():
    """cdkd.checkpoint imports nothing from cdkd.models (cdkd.models.load sits above both)."""
    import ast
    import inspect

    import cdkd.checkpoint

    tree = ast.parse(inspect.getsource(cdkd.checkpoint))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("cdkd.models")], imported
