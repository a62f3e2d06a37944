"""SimCC task loss L_ori: the first term of the CDKD objective (Eq. 8).

CDKD trains its student (and its teacher before that) with the classification loss of SimCC
(Li et al., "SimCC: a Simple Coordinate Classification Perspective for Human Pose Estimation",
ECCV 2022). Each joint's x and y coordinates are classified into ``W*k`` and ``H*k`` bins; the
target is a label-smoothed one-hot vector and the loss is KL(q || softmax(z)).

The released code (leeyegy/SimCC ``lib/core/loss.py``, reused by CDKD) has two variants, kept
here as ``kind``:

``'mean'`` -- ``NMTNORMCritierion`` (MPII configs, smoothing 0.2). Per joint ``j`` it takes, for
    each sample, the KL divergence *averaged over the classes* (``torch.mean(..., dim=1)``),
    multiplies it by the joint's target weight, averages over the batch, adds the x and y terms,
    and finally divides the sum over joints by J. In closed form::

        L_mean = 1 / (B * J) * sum_{b,j} w_bj * (KL_x[b,j] / Cx + KL_y[b,j] / Cy)

``'sum'`` -- ``NMTCritierion`` (COCO configs, smoothing 0.1). The KL is *summed* over the
    classes, weighted, summed over batch and joints and divided by the batch size::

        L_sum = 1 / B * sum_{b,j} w_bj * (KL_x[b,j] + KL_y[b,j])

    so with Cx = Cy = C the two relate exactly as ``L_sum = J * C * L_mean``.

Here ``KL[b, j] = sum_c q_c * (log q_c - log softmax(z[b, j])_c)`` and the smoothed target is
``q_t = 1 - s`` on the target class t and ``q_c = s / (C - 1)`` elsewhere (the released
``_smooth_label``; note it spreads s over C - 1 classes, not C).

Differences from the released code, none of which changes a value it can compute:
- vectorised over joints and batch instead of a Python loop per joint;
- finite and correct at smoothing 0 (the original builds ``NLLLoss`` there and then takes a
  mean over a dimension that does not exist; its KL would also evaluate ``0 * log 0``); here
  ``q log q`` uses :func:`torch.xlogy`, so s = 0 is exactly the cross-entropy;
- batch size 1 works (the original's ``.squeeze()`` drops the batch dimension);
- computed in float32 even inside ``torch.autocast``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_SMOOTHING = {"mean": 0.2, "sum": 0.1}  # released defaults: MPII configs / COCO criterion
KINDS = ("mean", "sum")


def smoothed_kl(logits: Tensor, target: Tensor, smoothing: float) -> Tensor:
    """KL(q || softmax(logits)) summed over the classes, for a label-smoothed one-hot q.

    The target distribution is never materialised: with ``u = s / (C - 1)``,
    ``KL = sum_c q_c log q_c - u * sum_c log p_c - (1 - s - u) * log p_t``.

    Args:
        logits: ``[..., C]`` class scores (any float dtype; computed in float32).
        target: ``[...]`` int64 class indices in ``[0, C)``.
        smoothing: s in [0, 1): probability mass moved off the target class.

    Returns:
        ``[...]`` float32 KL divergence per coordinate (sum over the C classes).
    """
    num_classes = logits.shape[-1]
    if num_classes < 2:
        raise ValueError(f"SimCC loss needs at least 2 classes per axis, got {num_classes}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {smoothing}")
    log_p = F.log_softmax(logits.float(), dim=-1)  # [..., C]
    log_p_target = log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [...]
    off = smoothing / (num_classes - 1)  # q_c for c != t
    on = 1.0 - smoothing  # q_t
    s = torch.tensor(smoothing, dtype=torch.float32, device=logits.device)
    # sum_c q_c log q_c: a constant of s and C (0 * log 0 = 0 through xlogy).
    neg_entropy = torch.xlogy(1.0 - s, 1.0 - s) + torch.xlogy(s, s / (num_classes - 1))
    cross = off * log_p.sum(-1) + (on - off) * log_p_target  # sum_c q_c log p_c, [...]
    return neg_entropy - cross


def _check_inputs(x_logits: Tensor, y_logits: Tensor, target_x: Tensor, target_y: Tensor,
                  target_weight: Tensor) -> Tensor:
    """Validate shapes (and, for CPU tensors, index ranges); return weights as ``[B, J]``."""
    if x_logits.dim() != 3 or y_logits.dim() != 3:
        raise ValueError(f"SimCC logits must be [B, J, C]; got x {tuple(x_logits.shape)}, "
                         f"y {tuple(y_logits.shape)}")
    batch, joints = x_logits.shape[:2]
    if tuple(y_logits.shape[:2]) != (batch, joints):
        raise ValueError(f"x and y logits disagree on [B, J]: {tuple(x_logits.shape)} vs "
                         f"{tuple(y_logits.shape)}")
    for name, t in (("target_x", target_x), ("target_y", target_y)):
        if tuple(t.shape) != (batch, joints):
            raise ValueError(f"{name} must be [B, J] = {(batch, joints)}, got {tuple(t.shape)}")
        if t.dtype != torch.int64:
            raise ValueError(f"{name} must hold int64 class indices, got {t.dtype}")
    weight = target_weight
    if weight.dim() == 3 and weight.shape[-1] == 1:  # released datasets give [B, J, 1]
        weight = weight.squeeze(-1)
    if tuple(weight.shape) != (batch, joints):
        raise ValueError(f"target_weight must be [B, J] = {(batch, joints)}, got "
                         f"{tuple(target_weight.shape)}")
    for name, t, size in (("target_x", target_x, x_logits.shape[-1]),
                          ("target_y", target_y, y_logits.shape[-1])):
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
            raise ValueError(f"{name} has class indices outside [0, {size}): "
                             f"min {int(t.min())}, max {int(t.max())}")
    return weight.float()


def simcc_loss(x_logits: Tensor, y_logits: Tensor, target_x: Tensor, target_y: Tensor,
               target_weight: Tensor, kind: str = "mean",
               label_smoothing: float | None = None) -> Tensor:
    """SimCC classification loss L_ori (CDKD Eq. 8, first term) in a released variant.

    Args:
        x_logits: ``[B, J, Cx]`` horizontal logits, ``Cx = W * k``.
        y_logits: ``[B, J, Cy]`` vertical logits, ``Cy = H * k``.
        target_x: ``[B, J]`` int64 target bins ``round(x * k)``.
        target_y: ``[B, J]`` int64 target bins ``round(y * k)``.
        target_weight: ``[B, J]`` (or ``[B, J, 1]``) visibility weights; 0 drops a joint.
        kind: ``'mean'`` (``NMTNORMCritierion``) or ``'sum'`` (``NMTCritierion``); see the
            module docstring for the exact reductions.
        label_smoothing: s; None takes the released default of ``kind`` (0.2 / 0.1).

    Returns:
        Scalar float32 loss.
    """
    if kind not in KINDS:
        raise ValueError(f"loss kind must be one of {KINDS} (config key 'loss.kind'), got {kind!r}")
    smoothing = DEFAULT_SMOOTHING[kind] if label_smoothing is None else float(label_smoothing)
    weight = _check_inputs(x_logits, y_logits, target_x, target_y, target_weight)  # [B, J]
    batch, joints = weight.shape
    with torch.autocast(device_type=x_logits.device.type, enabled=False):
        kl_x = smoothed_kl(x_logits, target_x, smoothing)  # [B, J]
        kl_y = smoothed_kl(y_logits, target_y, smoothing)  # [B, J]
        if kind == "mean":
            per_joint = kl_x / x_logits.shape[-1] + kl_y / y_logits.shape[-1]  # [B, J]
            return (per_joint * weight).sum() / (batch * joints)
        return ((kl_x + kl_y) * weight).sum() / batch


class SimCCLoss(nn.Module):
    """Module form of :func:`simcc_loss` (no parameters).

    Args:
        kind: ``'mean'`` or ``'sum'`` (config key ``loss.kind``).
        label_smoothing: s, or None for the variant's released default.
    """

    def __init__(self, kind: str = "mean", label_smoothing: float | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"loss kind must be one of {KINDS} (config key 'loss.kind'), "
                             f"got {kind!r}")
        self.kind = kind
        self.label_smoothing = DEFAULT_SMOOTHING[kind] if label_smoothing is None else float(
            label_smoothing)

    @classmethod
    def from_config(cls, loss_cfg) -> SimCCLoss:
        """Build from a :class:`cdkd.config.LossConfig` (its ``weight`` is applied by the caller)."""
        return cls(kind=loss_cfg.kind, label_smoothing=loss_cfg.label_smoothing)

    def forward(self, x_logits: Tensor, y_logits: Tensor, target_x: Tensor, target_y: Tensor,
                target_weight: Tensor) -> Tensor:
        """See :func:`simcc_loss`; returns the scalar loss."""
        return simcc_loss(x_logits, y_logits, target_x, target_y, target_weight,
                          kind=self.kind, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, label_smoothing={self.label_smoothing}"
