"""SimCC task loss L_ori (cdkd.losses): released reductions, smoothing 0, weights, gradients."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cdkd.losses import SimCCLoss, simcc_loss, smoothed_kl

pytestmark = pytest.mark.timeout(60)


def _batch(seed=0, b=3, j=4, cx=12, cy=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, j, cx, generator=g)
    y = torch.randn(b, j, cy, generator=g)
    tx = torch.randint(0, cx, (b, j), generator=g)
    ty = torch.randint(0, cy, (b, j), generator=g)
    w = (torch.rand(b, j, generator=g) > 0.3).float()
    return x, y, tx, ty, w


def _released_loop(x, y, tx, ty, w, s, kind):
    """Per-joint loop written from the released criteria's description (materialised targets)."""
    b, j = tx.shape
    total = torch.zeros(())
    for jj in range(j):
        for logits, target in ((x, tx), (y, ty)):
            c = logits.shape[-1]
            q = torch.full((b, c), s / (c - 1))
            q[torch.arange(b), target[:, jj]] = 1 - s
            kl = F.kl_div(F.log_softmax(logits[:, jj], dim=1), q, reduction="none")  # [B, C]
            if kind == "mean":
                total = total + (kl.mean(1) * w[:, jj]).mean()
            else:
                total = total + (kl.sum(1) * w[:, jj]).sum()
    return total / j if kind == "mean" else total / b


@pytest.mark.parametrize("kind", ["mean", "sum"])
@pytest.mark.parametrize("s", [0.2, 0.1])
def test_matches_released_per_joint_loop(kind, s):
    x, y, tx, ty, w = _batch()
    ours = simcc_loss(x, y, tx, ty, w, kind=kind, label_smoothing=s)
    assert torch.allclose(ours, _released_loop(x, y, tx, ty, w, s, kind), rtol=1e-5, atol=1e-6)


def test_hand_computed_values_and_mean_sum_relation():
    # B = J = 1. x: 3 classes, uniform logits, target 0, s = 0.2 -> q = (0.8, 0.1, 0.1), p = 1/3.
    # y: 3 classes, logits (log 2, 0, 0) -> p = (1/2, 1/4, 1/4), target 2.
    x = torch.zeros(1, 1, 3)
    y = torch.tensor([[[math.log(2.0), 0.0, 0.0]]])
    tx, ty = torch.tensor([[0]]), torch.tensor([[2]])
    w = torch.ones(1, 1)
    kl_x = 0.8 * math.log(0.8 * 3) + 2 * 0.1 * math.log(0.1 * 3)
    kl_y = 0.1 * math.log(0.1 / 0.5) + 0.1 * math.log(0.1 / 0.25) + 0.8 * math.log(0.8 / 0.25)
    mean = simcc_loss(x, y, tx, ty, w, kind="mean", label_smoothing=0.2)
    total = simcc_loss(x, y, tx, ty, w, kind="sum", label_smoothing=0.2)
    assert mean.item() == pytest.approx(kl_x / 3 + kl_y / 3, rel=1e-6)
    assert total.item() == pytest.approx(kl_x + kl_y, rel=1e-6)
    # Documented relation with Cx = Cy = C: L_sum = J * C * L_mean (here on a random batch).
    x, y, tx, ty, w = _batch(seed=3, b=2, j=5, cx=7, cy=7)
    ratio = simcc_loss(x, y, tx, ty, w, "sum", 0.2) / simcc_loss(x, y, tx, ty, w, "mean", 0.2)
    assert ratio.item() == pytest.approx(5 * 7, rel=1e-5)


@pytest.mark.parametrize("kind", ["mean", "sum"])
@pytest.mark.parametrize("s", [0.0, 0.2])
def test_decreases_as_logits_move_toward_targets(kind, s):
    x, y, tx, ty, w = _batch(seed=1)
    one_x = F.one_hot(tx, x.shape[-1]).float()
    one_y = F.one_hot(ty, y.shape[-1]).float()
    losses = [simcc_loss(x + a * one_x, y + a * one_y, tx, ty, w, kind, s).item()
              for a in (0.0, 1.0, 2.0, 4.0)]
    assert all(b < a for a, b in itertools.pairwise(losses)), losses


def test_smoothing_zero_is_finite_cross_entropy_even_when_saturated():
    x, y, tx, ty, w = _batch(seed=2)
    w = torch.ones_like(w)
    # Saturated logits: softmax underflows to exactly 0 away from the target.
    x_sat = 200.0 * F.one_hot(tx, x.shape[-1]).float()
    y_sat = 200.0 * F.one_hot(ty, y.shape[-1]).float()
    zero = simcc_loss(x_sat, y_sat, tx, ty, w, "sum", 0.0)
    assert torch.isfinite(zero) and zero.item() == pytest.approx(0.0, abs=1e-6)
    ce = (F.cross_entropy(x.flatten(0, 1), tx.flatten(), reduction="sum")
          + F.cross_entropy(y.flatten(0, 1), ty.flatten(), reduction="sum")) / x.shape[0]
    assert simcc_loss(x, y, tx, ty, w, "sum", 0.0).item() == pytest.approx(ce.item(), rel=1e-5)
    # Smoothed targets against a saturated prediction: large but finite.
    assert torch.isfinite(simcc_loss(x_sat, y_sat, tx, ty, w, "mean", 0.2))


def test_zero_weight_joints_contribute_nothing():
    x, y, tx, ty, w = _batch(seed=4)
    w[:, 1] = 0.0
    x.requires_grad_(True)
    base = simcc_loss(x, y, tx, ty, w, "mean", 0.2)
    x2, y2 = x.detach().clone(), y.clone()
    x2[:, 1] = 50 * torch.randn_like(x2[:, 1])
    y2[:, 1] = -30.0
    tx2 = tx.clone()
    tx2[:, 1] = 0
    assert simcc_loss(x2, y2, tx2, ty, w, "mean", 0.2).item() == pytest.approx(base.item(), rel=1e-6)
    base.backward()
    assert torch.all(x.grad[:, 1] == 0)
    assert torch.any(x.grad[:, 0] != 0)


@pytest.mark.parametrize("kind", ["mean", "sum"])
def test_gradients_finite_and_float32_under_autocast(kind):
    x, y, tx, ty, w = _batch(seed=5)
    x = x.to(torch.bfloat16).requires_grad_(True)
    y = y.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = SimCCLoss(kind, 0.0)(x, y, tx, ty, w.unsqueeze(-1))  # [B, J, 1] weights accepted
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(x.grad.float()).all() and torch.isfinite(y.grad.float()).all()


def test_batch_of_one_and_module_defaults():
    x, y, tx, ty, w = _batch(seed=6, b=1)
    assert SimCCLoss("mean").label_smoothing == 0.2 and SimCCLoss("sum").label_smoothing == 0.1
    assert torch.isfinite(SimCCLoss("sum")(x, y, tx, ty, w))
    kl = smoothed_kl(x, tx, 0.3)
    assert kl.shape == (1, x.shape[1]) and torch.all(kl >= -1e-6)


def test_bad_inputs_raise_clear_errors():
    x, y, tx, ty, w = _batch()
    with pytest.raises(ValueError, match="loss.kind"):
        simcc_loss(x, y, tx, ty, w, kind="avg")
    with pytest.raises(ValueError, match="target_x"):
        simcc_loss(x, y, tx[:, :2], ty, w)
    with pytest.raises(ValueError, match="outside"):
        simcc_loss(x, y, tx + x.shape[-1], ty, w)
    with pytest.raises(ValueError, match="label_smoothing"):
        simcc_loss(x, y, tx, ty, w, label_smoothing=1.0)
