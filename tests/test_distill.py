"""Tests of the CDKD distillation parts: CCA (Eq. 6-7), SAPE (Eq. 1-5), ETHT (Eq. 9-12), baselines."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdkd.config import ConfigError, DistillConfig, load_config
from cdkd.distill import (
    SAPE,
    ConvDownsample,
    Distiller,
    LearnableWeight,
    cca_loss,
    class_ratio,
    etht_param_group,
    grad_reverse,
    set_etht_lr,
    grad_scale,
    merge_bins,
    merge_bins_overlap,
    official_xi_schedule,
    overlap_matrix,
    projector_size,
    same_class_split_ratio,
    xi_schedule,
)

pytestmark = pytest.mark.timeout(120)


class Out(NamedTuple):
    """Stand-in for cdkd.models' PoseOutput (the distiller duck-types on these fields)."""

    x: torch.Tensor
    y: torch.Tensor
    feature: torch.Tensor


def make_cfg(**changes) -> DistillConfig:
    return dataclasses.replace(DistillConfig(), **changes)


def random_pair(b, j, s_feat, t_feat, s_cls, t_cls, gen, requires_grad=True):
    """Random student (leaf tensors) and teacher outputs."""
    student = Out(
        torch.randn(b, j, s_cls[0], generator=gen).requires_grad_(requires_grad),
        torch.randn(b, j, s_cls[1], generator=gen).requires_grad_(requires_grad),
        torch.randn(b, j, *s_feat, generator=gen).requires_grad_(requires_grad),
    )
    teacher = Out(
        torch.randn(b, j, t_cls[0], generator=gen) * 3,
        torch.randn(b, j, t_cls[1], generator=gen) * 3,
        torch.randn(b, j, *t_feat, generator=gen),
    )
    return student, teacher


# ----------------------------------------------------------------------------- CCA


def test_merge_bins_sums_to_one_and_equals_explicit_sums():
    gen = torch.Generator().manual_seed(0)
    probs = torch.randn(2, 3, 12, generator=gen).softmax(-1)
    merged = merge_bins(probs, 4)
    assert merged.shape == (2, 3, 3)
    torch.testing.assert_close(merged.sum(-1), torch.ones(2, 3))
    for j in range(3):
        torch.testing.assert_close(merged[..., j], probs[..., 4 * j] + probs[..., 4 * j + 1] + probs[..., 4 * j + 2]
                                   + probs[..., 4 * j + 3])


def test_merge_errors_name_both_class_counts():
    with pytest.raises(ValueError, match="10"):
        merge_bins(torch.ones(10), 4)
    with pytest.raises(ValueError, match=r"770.*192"):
        class_ratio(770, 192, "x")


def test_overlap_matrix_small_case_by_hand():
    m = overlap_matrix(5, 3, dtype=torch.float64)  # teacher bins of 1/5, student bins of 1/3
    expected = torch.tensor([
        [1.0, 0.0, 0.0],  # [0, .2) inside [0, 1/3)
        [2 / 3, 1 / 3, 0.0],  # [.2, .4): 2/15 in the first, 1/15 in the second
        [0.0, 1.0, 0.0],
        [0.0, 1 / 3, 2 / 3],
        [0.0, 0.0, 1.0],
    ], dtype=torch.float64)
    torch.testing.assert_close(m, expected)


def test_overlap_merge_conserves_mass_and_matches_integer_merge():
    gen = torch.Generator().manual_seed(1)
    probs = torch.randn(2, 4, 768, generator=gen, dtype=torch.float64).softmax(-1)
    torch.testing.assert_close(merge_bins_overlap(probs, 192), merge_bins(probs, 4))
    odd = merge_bins_overlap(probs, 144)  # 48*3 student bins under 256*3 teacher bins: ratio 5.33
    assert odd.shape == (2, 4, 144)
    torch.testing.assert_close(odd.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    assert (odd >= 0).all()
    # a point mass in teacher bin i lands only in the student bins overlapping [i/768, (i+1)/768)
    delta = torch.zeros(768, dtype=torch.float64)
    delta[100] = 1.0
    out = merge_bins_overlap(delta, 144)
    lo, hi = 100 / 768 * 144, 101 / 768 * 144
    assert set(out.nonzero().flatten().tolist()) == set(range(int(lo), math.ceil(hi)))


@pytest.mark.parametrize("reduction", ["paper", "official"])
def test_kl_is_zero_for_student_equal_to_merged_teacher(reduction):
    gen = torch.Generator().manual_seed(2)
    tau = 2.5
    tx, ty = torch.randn(3, 5, 48, generator=gen), torch.randn(3, 5, 64, generator=gen)  # m_x = 4, m_y = 2
    sx = tau * merge_bins(F.softmax(tx / tau, -1), 4).log()
    sy = tau * merge_bins(F.softmax(ty / tau, -1), 2).log()
    out = cca_loss(sx, sy, tx, ty, tau, reduction=reduction)
    assert abs(float(out["loss"])) < 1e-5
    shifted = cca_loss(sx.roll(1, -1), sy, tx, ty, tau, reduction=reduction)
    assert float(shifted["loss"]) > 1e-3


def test_kl_gradient_moves_student_towards_teacher():
    gen = torch.Generator().manual_seed(3)
    b, j, tau = 4, 3, 3.0
    tx, ty = torch.randn(b, j, 32, generator=gen), torch.randn(b, j, 32, generator=gen)
    sx = torch.randn(b, j, 8, generator=gen).requires_grad_(True)
    sy = torch.randn(b, j, 16, generator=gen).requires_grad_(True)
    weight = torch.rand(b, j, generator=gen)
    out = cca_loss(sx, sy, tx, ty, tau, target_weight=weight)
    out["loss"].backward()
    # d/dz [tau^2 KL(q || softmax(z/tau))] = tau * (p - q), per sample weighted, averaged over the batch
    q = merge_bins(F.softmax(tx / tau, -1), 4)
    p = F.softmax(sx.detach() / tau, -1)
    torch.testing.assert_close(sx.grad, tau * (p - q) * weight[..., None] / b)
    with torch.no_grad():
        stepped = cca_loss(sx - 0.5 * sx.grad, sy - 0.5 * sy.grad, tx, ty, tau, target_weight=weight)["loss"]
    assert float(stepped) < float(out["loss"].detach())


def test_kl_per_joint_respects_target_weight_and_tau_gets_gradient():
    gen = torch.Generator().manual_seed(4)
    sx, sy = torch.randn(2, 3, 16, generator=gen), torch.randn(2, 3, 16, generator=gen)
    tx, ty = torch.randn(2, 3, 64, generator=gen), torch.randn(2, 3, 64, generator=gen)
    weight = torch.ones(2, 3, 1)
    weight[:, 1] = 0
    tau = torch.tensor(4.0, requires_grad=True)
    out = cca_loss(sx, sy, tx, ty, tau, target_weight=weight)
    per_joint = out["per_joint"].detach()
    assert float(per_joint[1]) == 0.0 and float(per_joint[0]) > 0
    torch.testing.assert_close(out["per_joint"].sum(), out["loss"])
    out["loss"].backward()
    assert tau.grad is not None and torch.isfinite(tau.grad) and float(tau.grad) != 0.0


def test_official_reduction_matches_explicit_formula():
    gen = torch.Generator().manual_seed(5)
    b, j, tau = 2, 3, 15.0
    sx, sy = torch.randn(b, j, 12, generator=gen), torch.randn(b, j, 12, generator=gen)
    tx, ty = torch.randn(b, j, 36, generator=gen), torch.randn(b, j, 36, generator=gen)
    weight = torch.zeros(b, j)  # ignored by the released code
    got = cca_loss(sx, sy, tx, ty, tau, target_weight=weight, reduction="official")["loss"]
    expected = 0.0
    for s, t in ((sx, tx), (sy, ty)):
        q = merge_bins(F.softmax(t / tau, -1), 3)
        kl = F.kl_div(F.log_softmax(s / tau, -1), q, reduction="none").mean(-1)  # [B, J]
        expected = expected + (kl * tau**2).sum()
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("student_hw, teacher_hw, ratios", [
    ((64, 48), (256, 192), (4, 4)),
    ((64, 64), (256, 192), (3, 4)),  # m_x = 3, m_y = 4
])
def test_cca_non_square_inputs(student_hw, teacher_hw, ratios):
    k = 3
    (hs, ws), (ht, wt) = student_hw, teacher_hw
    s_cls, t_cls = (ws * k, hs * k), (wt * k, ht * k)
    assert (t_cls[0] // s_cls[0], t_cls[1] // s_cls[1]) == ratios
    gen = torch.Generator().manual_seed(6)
    student, teacher = random_pair(2, 4, (hs // 4, ws // 4), (ht // 4, wt // 4), s_cls, t_cls, gen)
    out = cca_loss(student.x, student.y, teacher.x, teacher.y, 2.0)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and student.x.grad.abs().sum() > 0 and student.y.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- ETHT


def test_xi_schedules_and_gradient_layers():
    assert xi_schedule(0, 10) == 0.0
    assert xi_schedule(5, 10, 2.0) == pytest.approx(1.0)
    assert xi_schedule(10, 10) == xi_schedule(300, 10) == 1.0
    ramp = [xi_schedule(e, 10) for e in range(12)]
    assert all(a < b for a, b in itertools.pairwise(ramp[:11]))
    assert official_xi_schedule(0) == 1.0 and official_xi_schedule(105) == pytest.approx(0.5)
    assert official_xi_schedule(210) == pytest.approx(0.0) and official_xi_schedule(349) == pytest.approx(0.0)
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    (grad_reverse(x) * torch.tensor([3.0, 5.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-3.0, -5.0]))  # xi is applied by the optimizer group
    x.grad = None
    (grad_scale(x, 0.7) * torch.tensor([3.0, 5.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([2.1, 3.5]))


def test_learnable_weight_starts_at_base_and_stays_positive():
    weight = LearnableWeight(0.3)
    with torch.no_grad():
        assert float(weight(1.0)) == pytest.approx(0.3)
        weight.phi.fill_(-50.0)
        assert 0.0 <= float(weight(1.0)) < 1e-6
        weight.phi.fill_(50.0)
        assert float(weight(1.0)) == pytest.approx(0.6)


def _etht_step(epoch: int, lr: float = 0.5, optimizer_kind: str = "sgd"):
    """One optimizer step of the ETHT temperature, built as the engine builds it (an ETHT group
    whose lr is lr * xi); returns (theta before, theta after, xi, dL/dtheta, loss before, after)."""
    cfg = make_cfg(feature="none", logit="cca", etht=True, learn=("tau",), xi_epochs=10, beta=2.0)
    gen = torch.Generator().manual_seed(7)
    student, teacher = random_pair(2, 3, (4, 4), (8, 8), (16, 16), (64, 64), gen, requires_grad=False)
    weight = torch.ones(2, 3)
    distiller = Distiller(cfg, (3, 4, 4), (3, 8, 8), (16, 16), (64, 64), total_epochs=20)
    distiller.set_epoch(epoch)
    theta0 = distiller.temperature.theta.detach().clone()
    # the ordinary (non-reversed) gradient of the weighted distillation loss w.r.t. theta
    theta = theta0.clone().requires_grad_(True)
    tau = cfg.tau_min + cfg.tau_range * torch.sigmoid(theta)
    plain = cfg.beta * cca_loss(student.x, student.y, teacher.x, teacher.y, tau, weight)["loss"]
    (grad,) = torch.autograd.grad(plain, theta)
    anchor = torch.zeros(1, requires_grad=True)  # the student group (param_groups[0]) sets the base lr
    groups = [{"params": [anchor]}, etht_param_group(distiller.etht_parameters())]
    optimizer = torch.optim.SGD(groups, lr=lr) if optimizer_kind == "sgd" else torch.optim.Adam(groups, lr=lr)
    set_etht_lr(optimizer, distiller.xi)
    step = distiller(student, teacher, weight, torch.zeros(()))
    optimizer.zero_grad()
    step.total.backward()
    optimizer.step()
    theta1 = distiller.temperature.theta.detach().clone()
    loss_after = distiller(student, teacher, weight, torch.zeros(()))
    return theta0, theta1, distiller.xi, grad, step.terms["logit"], loss_after.terms["logit"]


def test_etht_step_increases_the_distillation_loss_scaled_by_xi():
    theta0, half, xi_half, grad, before, after_half = _etht_step(epoch=5)
    _, full, xi_full, _, _, after_full = _etht_step(epoch=10)
    assert xi_half == pytest.approx(0.5) and xi_full == pytest.approx(1.0)
    assert float(grad) != 0.0
    # gradient *ascent* on the loss: theta <- theta + lr * xi * dL/dtheta (Eq. 11)
    torch.testing.assert_close(half - theta0, 0.5 * xi_half * grad)
    torch.testing.assert_close(full - theta0, 0.5 * xi_full * grad)
    torch.testing.assert_close(full - theta0, 2 * (half - theta0))
    assert float(after_half) > float(before) and float(after_full) > float(after_half)


def test_etht_applies_xi_exactly_once_under_sgd_and_adam():
    """Eq. 11: the step is lr * xi * (reversed gradient) whatever the optimizer. (With xi in both the
    reversal layer and the group's lr, SGD stepped lr * xi**2.)"""
    lr = 0.01
    theta0, half, xi_half, grad, _, _ = _etht_step(epoch=5, lr=lr, optimizer_kind="sgd")
    torch.testing.assert_close(half - theta0, lr * xi_half * grad)  # not lr * xi**2 * grad
    theta0, half, xi_half, grad, _, _ = _etht_step(epoch=5, lr=lr, optimizer_kind="adam")
    # Adam's first step is lr * sign(g): lr * xi in the direction that increases the loss
    torch.testing.assert_close(half - theta0, lr * xi_half * torch.sign(grad))


def test_official_temperature_stays_at_released_value():
    cfg = make_cfg(fidelity="official", feature="sape", logit="cca", etht=True, num_projectors=3)
    distiller = Distiller(cfg, (4, 4, 4), (4, 8, 8), (16, 16), (64, 64), total_epochs=350)
    assert distiller.trainable_parameters() == []
    assert all(not p.requires_grad for p in distiller.parameters())
    gen = torch.Generator().manual_seed(8)
    student, teacher = random_pair(2, 4, (4, 4), (8, 8), (16, 16), (64, 64), gen)
    optimizer = torch.optim.SGD([student.x, student.y, student.feature, *distiller.trainable_parameters()], lr=1.0)
    distiller.set_epoch(3)
    step = distiller(student, teacher, torch.ones(2, 4), torch.zeros(()))
    step.total.backward()
    optimizer.step()
    released = 1.0 + 20.0 / (1.0 + math.exp(-1.0))
    assert released == pytest.approx(15.62, abs=5e-3)
    after = distiller(student, teacher, torch.ones(2, 4), torch.zeros(()))
    assert float(after.terms["tau"]) == pytest.approx(released, rel=1e-6)
    assert float(after.terms["xi"]) == pytest.approx(official_xi_schedule(3))


# ----------------------------------------------------------------------------- SAPE


def _backbone_feature(joints: int, size: int, batch: int = 2):
    gen = torch.Generator().manual_seed(9)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, joints, 3, stride=2,
                                                                                           padding=1))
    image = torch.randn(batch, 3, 4 * size, 4 * size, generator=gen)
    return backbone, backbone(image)


def test_paper_feature_loss_trains_student_and_every_sape_parameter():
    joints, size = 5, 4
    cfg = make_cfg(feature="sape", logit="none", num_projectors=3, sau=True, sau_kernels=(3, 5, 7, 7))
    distiller = Distiller(cfg, (joints, size, size), (joints, 8, 8), (16, 16), (64, 64), total_epochs=10)
    backbone, feature = _backbone_feature(joints, size)
    gen = torch.Generator().manual_seed(10)
    student = Out(torch.randn(2, joints, 16), torch.randn(2, joints, 16), feature)
    teacher = Out(torch.randn(2, joints, 64), torch.randn(2, joints, 64), torch.rand(2, joints, 8, 8, generator=gen))
    step = distiller(student, teacher, torch.ones(2, joints), torch.zeros(()))
    assert 0.0 < float(step.terms["feature"]) < 2.0
    assert {"sau_w0", "sau_w1", "sau_w2"} <= set(step.terms) and "sau_w3" not in step.terms
    total_w = sum(float(step.terms[f"sau_w{k}"]) for k in range(3))
    assert total_w == pytest.approx(1.0, abs=1e-5)
    step.total.backward()
    for name, p in backbone.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    sape_params = dict(distiller.sape.named_parameters())
    assert set(map(id, sape_params.values())) <= set(map(id, distiller.trainable_parameters()))
    for name, p in sape_params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_official_feature_loss_sends_no_gradient_to_the_student():
    joints, size = 5, 4
    cfg = make_cfg(fidelity="official", feature="sape", logit="none", num_projectors=3)
    distiller = Distiller(cfg, (joints, size, size), (joints, 8, 8), (16, 16), (64, 64), total_epochs=10)
    assert all(p.kind == "full" for p in distiller.sape.projectors)  # released projectors
    backbone, feature = _backbone_feature(joints, size)
    student = Out(torch.randn(2, joints, 16), torch.randn(2, joints, 16), feature)
    teacher = Out(torch.randn(2, joints, 64), torch.randn(2, joints, 64), torch.rand(2, joints, 8, 8))
    step = distiller(student, teacher, torch.ones(2, joints), torch.zeros((), requires_grad=True))
    assert float(step.terms["feature"]) > 0
    assert {"sau_w0", "sau_w1", "sau_w2", "sau_w3"} <= set(step.terms)  # 3 projectors + their mean
    step.total.backward()
    assert all(p.grad is None for p in backbone.parameters())


def test_sape_without_sau_is_the_mean_of_projectors():
    gen = torch.Generator().manual_seed(11)
    sape = SAPE(3, (4, 4), (8, 8), num_projectors=2, projector="light", sau="none")
    f = torch.randn(2, 3, 4, 4, generator=gen)
    out, weights = sape(f)
    assert weights is None
    torch.testing.assert_close(out, (sape.projectors[0](f) + sape.projectors[1](f)) / 2)
    assert (sape.projectors[0](f) >= 0).all()  # FC + ReLU


def test_projector_size_matches_instantiated_modules():
    for kind in ("light", "full"):
        sape = SAPE(3, (4, 2), (8, 6), num_projectors=3, projector=kind, sau="none")
        counted = sum(p.numel() for p in sape.projectors.parameters())
        assert projector_size(kind, 3, 4, 2, 8, 6, 3)["params"] == counted
    size = projector_size("full", 16, 16, 16, 64, 64, 1)  # released MPII 64x64 projector
    assert size["params"] == 4096 * 65536 + 65536
    assert size["bytes_fp32"] == 4 * size["params"] and size["bytes_train"] == 16 * size["params"]


# ----------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("teacher_hw, student_hw", [((64, 64), (8, 8)), ((64, 64), (16, 16)), ((48, 64), (16, 16)),
                                                    ((12, 8), (4, 8))])
def test_conv_downsample_shapes(teacher_hw, student_hw):
    conv = ConvDownsample(3, teacher_hw, student_hw)
    assert conv(torch.randn(2, 3, *teacher_hw)).shape == (2, 3, *student_hw)


def test_same_class_split_ratio_and_checks():
    assert same_class_split_ratio(3.0, 256, 64) == 12.0
    assert same_class_split_ratio(2.0, (256, 192), (32, 24)) == 16.0
    with pytest.raises(ValueError, match="ratio"):
        same_class_split_ratio(3.0, (256, 192), (64, 64))
    with pytest.raises(ConfigError, match="same_class"):
        Distiller(make_cfg(logit="same_class"), (4, 4, 4), (4, 8, 8), (16, 16), (64, 64), total_epochs=1)
    with pytest.raises(ConfigError, match=r"distill\.merge.*60.*16"):
        Distiller(make_cfg(logit="cca"), (4, 4, 4), (4, 8, 8), (16, 16), (60, 64), total_epochs=1)
    with pytest.raises(ConfigError, match=r"distill\.feature"):  # choices are checked once, at config load
        load_config(None, ["distill.feature=heatmap"])


# ----------------------------------------------------------------------------- every variant at paper shapes

PAPER_SHAPES = {  # student resolution -> (split ratio k, joints) per PAPER_NOTES item 10
    "32->256": (32, 2.0, 16),
    "64->256": (64, 3.0, 17),
}

VARIANTS = {
    "projector_ensemble": {"feature": "sape", "logit": "none", "sau": False},
    "sape": {"feature": "sape", "logit": "none"},
    "necm": {"feature": "none", "logit": "cca", "etht": False, "tau": 4.0},
    "cca_etht": {"feature": "none", "logit": "cca"},
    "cdkd": {},
    "cdkd_tau_alpha_beta": {"learn": ("tau", "alpha", "beta")},
    "cdkd_overlap": {"merge": "overlap"},
    "one_projector": {"num_projectors": 1},
    "five_projectors_3579": {"num_projectors": 5, "sau_kernels": (3, 5, 7, 9)},
    "conv_downsample": {"feature": "conv", "logit": "none"},
    "fc_feature": {"feature": "fc", "logit": "none"},
    "fc_logits": {"feature": "none", "logit": "fc"},
    "same_class": {"feature": "none", "logit": "same_class"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("shape", sorted(PAPER_SHAPES))
def test_every_variant_forward_backward_at_paper_shapes(variant, shape):
    res, k, joints = PAPER_SHAPES[shape]
    changes = dict(VARIANTS[variant])
    cfg = make_cfg(projector="light", **changes)
    t_cls = (int(256 * k), int(256 * k))
    s_k = same_class_split_ratio(k, 256, res) if cfg.logit == "same_class" else k
    s_cls = (int(res * s_k), int(res * s_k))
    s_feat, t_feat = (res // 4, res // 4), (64, 64)
    distiller = Distiller(cfg, (joints, *s_feat), (joints, *t_feat), s_cls, t_cls, total_epochs=210)
    distiller.train()
    distiller.set_epoch(5)
    gen = torch.Generator().manual_seed(12)
    student, teacher = random_pair(2, joints, s_feat, t_feat, s_cls, t_cls, gen)
    weight = torch.ones(2, joints, 1)
    step = distiller(student, teacher, weight, torch.tensor(1.5))
    assert step.total.dtype == torch.float32 and torch.isfinite(step.total)
    for key in ("task", "feature", "feature_weighted", "logit", "logit_weighted", "tau", "xi", "alpha", "beta"):
        assert key in step.terms and torch.isfinite(step.terms[key]), key
    torch.testing.assert_close(step.total.detach(), step.terms["task"] + step.terms["feature_weighted"]
                               + step.terms["logit_weighted"])
    step.total.backward()
    if cfg.feature != "none":
        assert float(step.terms["feature"]) > 0 and student.feature.grad.abs().sum() > 0
    if cfg.logit != "none":
        assert float(step.terms["logit"]) > 0 and student.x.grad.abs().sum() > 0
    params = distiller.trainable_parameters()
    if cfg.feature in ("sape", "conv", "fc") or cfg.logit == "fc" or (cfg.etht and cfg.logit != "none"):
        assert params
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_full_projector_at_32_to_256():
    joints = 16
    cfg = make_cfg(feature="sape", logit="none", projector="full", num_projectors=1, sau=False)
    distiller = Distiller(cfg, (joints, 8, 8), (joints, 64, 64), (64, 64), (512, 512), total_epochs=1)
    counted = sum(p.numel() for p in distiller.sape.parameters())
    assert counted == projector_size("full", joints, 8, 8, 64, 64, 1)["params"] == 1024 * 65536 + 65536
    gen = torch.Generator().manual_seed(13)
    student, teacher = random_pair(2, joints, (8, 8), (64, 64), (64, 64), (512, 512), gen)
    step = distiller(student, teacher, torch.ones(2, joints), torch.zeros(()))
    step.total.backward()
    assert torch.isfinite(step.total) and student.feature.grad.abs().sum() > 0
    del distiller


def test_bf16_channels_last_inputs_give_float32_losses():
    joints = 4
    cfg = make_cfg()
    distiller = Distiller(cfg, (joints, 4, 4), (joints, 16, 16), (48, 48), (192, 192), total_epochs=10)
    distiller.set_epoch(3)
    gen = torch.Generator().manual_seed(14)
    student, teacher = random_pair(2, joints, (4, 4), (16, 16), (48, 48), (192, 192), gen, requires_grad=False)
    ref = distiller(student, teacher, torch.ones(2, joints), torch.zeros(()))

    def low(out):
        return Out(out.x.bfloat16(), out.y.bfloat16(),
                   out.feature.bfloat16().contiguous(memory_format=torch.channels_last))

    got = distiller(low(student), low(teacher), torch.ones(2, joints), torch.zeros(()))
    assert got.total.dtype == torch.float32
    torch.testing.assert_close(got.total, ref.total, rtol=0.05, atol=0.05)
