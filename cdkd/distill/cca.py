"""Cross-class alignment (CCA): logit distillation between SimCC heads of different class counts.

Implements Sec. III-B1 of "Cross-Domain Knowledge Distillation for Low-Resolution Human Pose
Estimation" (CDKD): the teacher's per-axis class probabilities are merged, after the softmax, into
the student's coarser classes (Eq. 6) and the student is pulled towards them with a
temperature-scaled KL divergence (Eq. 7).

A SimCC head at input width W with split ratio k has C = W*k classes on the x axis (H*k on y).
For a 256-pixel teacher and a 64-pixel student with the same k, m = C_t / C_s = 4 teacher classes
fall into each student class. :func:`merge_probs` offers three merges (``distill.merge``):

* ``'integer'`` (:func:`merge_bins`, the paper's Eq. 6, default): student class j receives teacher
  classes j*m .. j*m+m-1 (C_t must be m*C_s).
* ``'overlap'`` (:func:`merge_bins_overlap`, beyond the paper): any ratio; each teacher bin's mass
  goes to the student bins it overlaps, in proportion to the overlap.
* ``'centred'`` (:func:`centred_matrix`, beyond the paper): each teacher class gives its mass to
  the student class whose centre is nearest to its own (split in half on an exact tie).

The first two treat class i of C classes as the interval [i/C, (i+1)/C) of the normalised axis, which
is what Eq. 6 does. But SimCC class c is *centred* on pixel c/k (targets are round(x*k)), so the
merged teacher bin j (teacher classes j*m .. j*m+m-1) is centred (m-1)/(2m) of a student class to the
right of student class j: 0.375 class (0.125 px at k=3) for m=4. The integer merge therefore teaches
the student a target that is shifted right; the centred merge removes that bias (a teacher
one-hot at class t lands within half a student class of t*C_s/C_t, its own position in student
classes, with no offset on average; the integer merge is off by (m-1)/(2m) of a class on average).

Two reductions are offered (``reduction``):

* ``'paper'`` (Eq. 7): KL summed over the classes, ``tau**2 * sum_j w_j * KL_j`` summed over the
  joints j and both axes, averaged over the batch; w_j is the joint's target weight (joints without
  a label or outside the crop do not contribute). Gradients reach ``tau`` through both the student
  and the teacher softmax, as in CTKD.
* ``'official'`` (released code, PAPER_NOTES items 6 and 9): KL averaged over the classes, times
  ``tau**2``, summed over every (sample, joint, axis); target weights ignored; the merged teacher
  distribution is detached, so ``tau`` only gets gradient through the student softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MERGES = ("integer", "overlap", "centred")
REDUCTIONS = ("paper", "official")


def class_ratio(teacher_classes: int, student_classes: int, axis: str = "") -> int:
    """The integer merge factor m = C_t / C_s of Eq. 6.

    Args:
        teacher_classes: C_t, number of teacher classes on one axis.
        student_classes: C_s, number of student classes on the same axis.
        axis: 'x' or 'y', only used in the error message.

    Returns:
        m such that C_t == m * C_s.

    Raises:
        ValueError: naming both class counts when C_s does not divide C_t.
    """
    where = f" on the {axis} axis" if axis else ""
    if student_classes <= 0 or teacher_classes <= 0:
        raise ValueError(f"class counts must be positive{where}: teacher {teacher_classes}, student {student_classes}")
    if teacher_classes % student_classes:
        raise ValueError(
            f"CCA cannot merge {teacher_classes} teacher classes into {student_classes} student classes{where}: "
            f"{teacher_classes}/{student_classes} is not an integer (set distill.merge=overlap to merge at any ratio)"
        )
    return teacher_classes // student_classes


def merge_bins(probs: Tensor, m: int) -> Tensor:
    """Eq. 6: sum every ``m`` adjacent probabilities on the last axis.

    Args:
        probs: teacher probabilities [..., C_t] (after the softmax).
        m: merge factor; must divide C_t.

    Returns:
        Merged probabilities [..., C_t / m]; each row still sums to its input's sum.
    """
    num_in = probs.shape[-1]
    if m <= 0 or num_in % m:
        raise ValueError(
            f"merge_bins: {num_in} teacher classes cannot be grouped by m={m} "
            f"(student classes {num_in}/{m} is not an integer)"
        )
    return probs.reshape(*probs.shape[:-1], num_in // m, m).sum(-1)  # [..., C_t/m]


def overlap_matrix(num_in: int, num_out: int, device=None, dtype=torch.float32) -> Tensor:
    """Share of each input bin that falls into each output bin, both tiling [0, 1).

    Input bin i is [i/num_in, (i+1)/num_in), output bin j is [j/num_out, (j+1)/num_out). The entry
    (i, j) is |bin_i ∩ bin_j| / |bin_i|, computed exactly in integer units of 1/(num_in*num_out).

    Args:
        num_in: C_t, number of input (teacher) bins.
        num_out: C_s, number of output (student) bins.

    Returns:
        [C_t, C_s] matrix whose rows sum to one (mass conservation).
    """
    if num_in <= 0 or num_out <= 0:
        raise ValueError(f"overlap_matrix needs positive class counts, got {num_in} -> {num_out}")
    i = torch.arange(num_in, device=device).unsqueeze(1)  # [C_t, 1]
    j = torch.arange(num_out, device=device).unsqueeze(0)  # [1, C_s]
    lo = torch.maximum(i * num_out, j * num_in)  # in units of 1/(C_t*C_s)
    hi = torch.minimum((i + 1) * num_out, (j + 1) * num_in)
    overlap = (hi - lo).clamp(min=0)  # [C_t, C_s]
    return overlap.to(dtype) / num_out


def merge_bins_overlap(probs: Tensor, num_out: int) -> Tensor:
    """Mass-conserving merge of C_t bins into any number C_s of bins (beyond the paper).

    Equals :func:`merge_bins` when C_s divides C_t.

    Args:
        probs: probabilities [..., C_t].
        num_out: C_s, the number of output bins.

    Returns:
        [..., C_s] probabilities with the same total mass per row.
    """
    matrix = overlap_matrix(probs.shape[-1], num_out, device=probs.device, dtype=probs.dtype)
    return probs @ matrix  # [..., C_s]


def centred_matrix(num_in: int, num_out: int, device=None, dtype=torch.float32) -> Tensor:
    """Nearest-centre assignment of C_t teacher classes to C_s student classes (beyond the paper).

    Teacher class i sits at i/k_t pixels and student class j at j/k_s pixels, so in student-class
    units teacher class i is at p_i = i * C_s / C_t. Its whole mass goes to the nearest student class
    round(p_i); when p_i is exactly halfway between two classes (even m) the mass is split in half.
    Mass beyond the last student class is kept in it (the axis is clamped, mass is conserved).
    Computed in integers, so the assignment is exact for any C_t, C_s.

    Args:
        num_in: C_t, number of teacher classes on one axis.
        num_out: C_s, number of student classes on the same axis.

    Returns:
        [C_t, C_s] matrix whose rows sum to one.
    """
    if num_in <= 0 or num_out <= 0:
        raise ValueError(f"centred_matrix needs positive class counts, got {num_in} -> {num_out}")
    i = torch.arange(num_in, device=device)
    twice = 2 * i * num_out + num_in  # 2*C_t*(p_i + 1/2), in integer units
    nearest = torch.div(twice, 2 * num_in, rounding_mode="floor")  # round half up
    tie = (twice % (2 * num_in)) == 0  # p_i is exactly j - 1/2: split between j - 1 and j
    matrix = torch.zeros(num_in, num_out, device=device, dtype=dtype)
    upper = nearest.clamp(max=num_out - 1)
    lower = torch.where(tie, nearest - 1, nearest).clamp(min=0, max=num_out - 1)
    half = torch.full((num_in,), 0.5, device=device, dtype=dtype)
    matrix.index_put_((i, upper), half, accumulate=True)
    matrix.index_put_((i, lower), half, accumulate=True)
    return matrix  # [C_t, C_s]


def merge_probs(probs: Tensor, num_out: int, merge: str = "integer") -> Tensor:
    """Merge teacher probabilities into the student's classes (Eq. 6 and its bias-free variants).

    Args:
        probs: teacher probabilities [..., C_t] (after the softmax).
        num_out: C_s, the number of student classes on this axis.
        merge: 'integer' (Eq. 6, C_t = m*C_s), 'overlap' (any ratio, by overlap) or 'centred'
            (any ratio, nearest class centre; see the module docstring).

    Returns:
        [..., C_s] probabilities; each row keeps its input's total mass.
    """
    if merge == "integer":
        return merge_bins(probs, class_ratio(probs.shape[-1], num_out))
    if merge == "overlap":
        return merge_bins_overlap(probs, num_out)
    if merge == "centred":
        return probs @ centred_matrix(probs.shape[-1], num_out, device=probs.device, dtype=probs.dtype)
    raise ValueError(f"merge is {merge!r}; choose one of {MERGES}")


def normalised_entropy(probs: Tensor) -> Tensor:
    """Entropy of each distribution on the last axis divided by log C: 1 is uniform, 0 one-hot.

    Measures how much of the teacher a CCA target carries: at a high temperature the merged target
    p~t of Eq. 6-7 tends to the uniform distribution, and L_logit then only smooths the student's
    labels, whatever the teacher knows.

    Args:
        probs: probabilities [..., C] (rows summing to one), C >= 2.

    Returns:
        [...] values in [0, 1].
    """
    classes = probs.shape[-1]
    if classes < 2:
        raise ValueError(f"normalised_entropy needs at least 2 classes, got {classes}")
    return -torch.xlogy(probs, probs).sum(-1) / math.log(classes)  # [...]


def _kl_per_joint(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor, merge: str,
                  detach_teacher: bool) -> tuple[Tensor, Tensor]:
    """KL(merged teacher || student) summed over classes, one value per (sample, joint): [B, J],
    and the merged target's normalised entropy [B, J] (detached)."""
    num_out = student_logits.shape[-1]
    teacher_probs = F.softmax(teacher_logits / tau, dim=-1)  # [B, J, C_t]
    target = merge_probs(teacher_probs, num_out, merge)  # [B, J, C_s]
    if detach_teacher:
        target = target.detach()
    log_student = F.log_softmax(student_logits / tau, dim=-1)  # [B, J, C_s]
    kl = (torch.xlogy(target, target) - target * log_student).sum(-1)  # [B, J]
    return kl, normalised_entropy(target.detach())


def cca_loss(
    student_x: Tensor,
    student_y: Tensor,
    teacher_x: Tensor,
    teacher_y: Tensor,
    tau: float | Tensor,
    target_weight: Tensor | None = None,
    merge: str = "integer",
    reduction: str = "paper",
) -> dict[str, Tensor]:
    """CCA logit distillation loss (Eq. 6-7) for both SimCC axes.

    Computed in float32 whatever the input dtype. The teacher logits are detached.

    Args:
        student_x: student x logits [B, J, W_s*k].
        student_y: student y logits [B, J, H_s*k].
        teacher_x: teacher x logits [B, J, W_t*k] (merged into the student's classes).
        teacher_y: teacher y logits [B, J, H_t*k].
        tau: temperature, a float or a 0-d tensor (gradients flow to it).
        target_weight: [B, J] or [B, J, 1] joint weights ('paper' reduction only); None weighs all 1.
        merge: 'integer' (Eq. 6, C_t = m*C_s per axis), 'overlap' or 'centred' (any ratio).
        reduction: 'paper' or 'official' (see the module docstring).

    Returns:
        dict with 'loss' (scalar, x + y), 'x' and 'y' (scalars), 'per_joint' ([J], both axes,
        same reduction over the samples as 'loss'), and 'target_entropy': the merged teacher
        target's normalised entropy at ``tau`` (:func:`normalised_entropy`, 1 = uniform), averaged
        over the samples, joints and both axes that the loss counts (weighted by the target
        weights in the 'paper' reduction; detached).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"cca_loss reduction is {reduction!r}; choose one of {REDUCTIONS}")
    pairs = {"x": (student_x, teacher_x), "y": (student_y, teacher_y)}
    for axis, (s, t) in pairs.items():
        if s.dim() != 3 or t.dim() != 3 or s.shape[:2] != t.shape[:2]:
            raise ValueError(
                f"cca_loss: {axis} logits must be [B, J, C] with the same B and J; "
                f"student {tuple(s.shape)}, teacher {tuple(t.shape)}"
            )
    batch, joints = student_x.shape[:2]
    tau = torch.as_tensor(tau, dtype=torch.float32, device=student_x.device)
    official = reduction == "official"
    weight = None
    if target_weight is not None and not official:
        weight = target_weight.float().reshape(target_weight.shape[0], -1)
        if weight.shape != (batch, joints):
            raise ValueError(f"cca_loss: target_weight {tuple(target_weight.shape)} does not match [B, J] = [{batch}, {joints}]")

    out: dict[str, Tensor] = {}
    per_joint = 0.0
    entropy_sum = entropy_weight = 0.0
    for axis, (s, t) in pairs.items():
        kl, entropy = _kl_per_joint(s.float(), t.detach().float(), tau, merge, detach_teacher=official)  # [B, J]
        counted = weight if weight is not None else torch.ones_like(entropy)
        entropy_sum = entropy_sum + (entropy * counted).sum()
        entropy_weight = entropy_weight + counted.sum()
        if official:
            kl = kl / s.shape[-1]  # mean over the student classes
            scale = 1.0  # summed over samples
        else:
            if weight is not None:
                kl = kl * weight
            scale = 1.0 / batch  # averaged over samples
        kl = tau**2 * kl
        out[axis] = kl.sum() * scale
        per_joint = per_joint + kl.sum(0) * scale  # [J]
    out["loss"] = out["x"] + out["y"]
    out["per_joint"] = per_joint
    out["target_entropy"] = (entropy_sum / entropy_weight.clamp(min=1e-12)).detach()  # no joint counted: 0
    return out
