"""Every backbone + SimCC head: forward/backward, output shapes, official key names, errors."""

from __future__ import annotations

import pytest
import torch

from cdkd.models import ARCHS, PoseOutput, build_pose_model, num_bins
from cdkd.models.simcc import from_official_keys, to_official_keys

pytestmark = pytest.mark.timeout(120)

SMALL = ("hrnet_w8_tiny", "hrnet_w16_small", "resnet18")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_backward_every_parameter_gets_gradient(arch):
    torch.manual_seed(0)
    model = build_pose_model(arch, num_joints=5, input_size=(32, 32), split_ratio=2.0).train()
    # batch 2: at 32x32 the lowest HRNet branch (and ResNet layer4) is 1x1, and BatchNorm in
    # training mode needs more than one value per channel.
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, PoseOutput)
    assert out.x.shape == (2, 5, 64) and out.y.shape == (2, 5, 64) and out.feature.shape == (2, 5, 8, 8)
    for name, tensor in out._asdict().items():
        assert torch.isfinite(tensor).all(), f"{arch}: non-finite values in {name}"
    loss = out.x.logsumexp(-1).sum() + out.y.logsumexp(-1).sum() + out.feature.square().sum()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{arch}: no gradient for {name}"
        assert torch.isfinite(param.grad).all(), f"{arch}: non-finite gradient for {name}"
        assert param.grad.abs().sum() > 0, f"{arch}: zero gradient for {name}"


def _shape_cases():
    cases = [(arch, size) for arch in SMALL for size in (32, 64, 128, 256)]
    cases += [(arch, size) for arch in ("hrnet_w32", "hrnet_w48", "resnet34", "resnet50") for size in (32, 64)]
    cases += [("hrnet_w32", 128), ("resnet50", 128), ("hrnet_w32", 256)]
    return cases


@pytest.mark.parametrize("arch,size", _shape_cases())
def test_output_shapes(arch, size):
    k = 3.0 if size >= 64 else 2.0
    model = build_pose_model(arch, num_joints=16, input_size=size, split_ratio=k).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.x.shape == (1, 16, int(size * k))
    assert out.y.shape == (1, 16, int(size * k))
    assert out.feature.shape == (1, 16, size // 4, size // 4)
    assert not any(torch.isnan(t).any() for t in out)


def test_non_square_input_x_follows_width_y_follows_height():
    model = build_pose_model("hrnet_w8_tiny", num_joints=17, input_size=(256, 192), split_ratio=2.0).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 192))
    assert out.x.shape == (1, 17, 384)  # W * k
    assert out.y.shape == (1, 17, 512)  # H * k
    assert out.feature.shape == (1, 17, 64, 48)
    assert model.head.mlp_head_x.in_features == 64 * 48


def test_feature_is_final_layer_output_and_logits_come_from_it():
    torch.manual_seed(1)
    model = build_pose_model("hrnet_w8_tiny", 4, 64, 3.0).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        feature = model.head.final_layer(model.backbone(images))
        flat = feature.flatten(2)
        x = flat @ model.head.mlp_head_x.weight.T + model.head.mlp_head_x.bias
        y = flat @ model.head.mlp_head_y.weight.T + model.head.mlp_head_y.bias
        head_x, head_y = model.head(model.backbone(images))
    torch.testing.assert_close(out.feature, feature)
    torch.testing.assert_close(out.x, x)
    torch.testing.assert_close(out.y, y)
    torch.testing.assert_close(head_x, out.x)
    torch.testing.assert_close(head_y, out.y)


@pytest.mark.parametrize("arch", ["hrnet_w8_tiny", "resnet18"])
def test_state_dict_maps_to_flat_official_names_and_back(arch):
    model = build_pose_model(arch, 16, 64, 3.0)
    own = model.state_dict()
    keys = list(to_official_keys(own))
    assert {"conv1.weight", "final_layer.weight", "final_layer.bias", "mlp_head_x.weight", "mlp_head_y.bias"} <= set(
        keys
    )
    assert not any(k.startswith(("backbone.", "head.")) for k in keys)
    # parameters are listed once, under the same names as in the state dict
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names))
    assert set(names) <= set(own)
    assert len(keys) == len(own) and list(from_official_keys(to_official_keys(own))) == list(own)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in model.backbone.parameters()) + sum(
        p.numel() for p in model.head.parameters()
    )


def test_hrnet_w32_module_layout():
    model = build_pose_model("hrnet_w32", 16, 64, 3.0)
    top = [name for name, _ in model.backbone.named_children()]
    assert top[:12] == [
        "conv1",
        "bn1",
        "conv2",
        "bn2",
        "relu",
        "layer1",
        "transition1",
        "stage2",
        "transition2",
        "stage3",
        "transition3",
        "stage4",
    ]
    net = model.backbone
    assert len(net.layer1) == 4 and len(net.stage2) == 1 and len(net.stage3) == 4 and len(net.stage4) == 3
    assert len(net.stage4[2].fuse_layers) == 1  # the last module outputs the highest resolution only
    assert len(net.stage4[1].fuse_layers) == 4
    assert net.transition1[0] is not None and net.transition2[0] is None


def test_official_initialisation():
    torch.manual_seed(0)
    model = build_pose_model("hrnet_w16_small", 16, 64, 3.0)
    conv_std = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Conv2d)]).std()
    assert 0.0009 < conv_std < 0.0011
    assert (model.head.final_layer.bias == 0).all()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()


def test_settings_and_train_mode_reach_both_parts():
    model = build_pose_model("hrnet_w8_tiny", 17, (128, 96), 2.0)
    assert model.settings() == {"arch": "hrnet_w8_tiny", "num_joints": 17, "input_size": [128, 96], "split_ratio": 2.0}
    assert (model.arch, model.num_joints, model.input_size, model.split_ratio) == ("hrnet_w8_tiny", 17, (128, 96), 2.0)
    model.eval()
    assert not model.backbone.training and not model.head.training and not model.backbone.bn1.training
    model.train()
    assert model.backbone.training and model.head.training and model.backbone.bn1.training


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown arch 'hrnet_w99'.*hrnet_w32.*resnet50"):
        build_pose_model("hrnet_w99", 16, 64, 3.0)
    with pytest.raises(ValueError, match="not a positive integer"):
        build_pose_model("hrnet_w8_tiny", 16, 64, 0.3)  # W*k = 19.2
    with pytest.raises(ValueError, match="multiples of 32"):
        build_pose_model("hrnet_w8_tiny", 16, (64, 48), 2.0)
    with pytest.raises(ValueError, match="unknown build_pose_model option"):
        build_pose_model("hrnet_w8_tiny", 16, 64, 2.0, pretrianed="x.pth")
    model = build_pose_model("hrnet_w8_tiny", 16, 64, 2.0)
    with pytest.raises(ValueError, match="built for input 64x64"):
        model(torch.randn(1, 3, 32, 32))
    assert num_bins(64, 2.5) == 160
    with pytest.raises(ValueError, match="H\\*k"):
        num_bins(33, 0.5, "H")
