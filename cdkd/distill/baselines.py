"""Alignment baselines of the CDKD ablations (Table V, and NECM of Table III).

Feature alignment (the student feature F^s [B,J,h,w] vs the teacher feature F^t [B,J,H',W']):

* ``'conv'``, "Conv Downsample" (FitNets-style): learnable strided convolutions bring the
  *teacher* feature down to the student size, then the cosine loss of Eq. 5. One stride-2 3x3 conv
  (J -> J) per factor 2 of the ratio, one conv with stride s and kernel 2s-1 for a remaining odd
  factor s, ReLU between stages (none after the last, so the target can be negative like F^s).
* ``'fc'``, "Fully Connected Layer": one FC layer (no ReLU, no ensemble, no SAU) from the student
  to the teacher size, of the configured projector kind, then the cosine loss.

Logit alignment (student classes C_s per axis vs teacher classes C_t):

* ``'fc'``, "Fully Connected Layer": one FC per axis maps the student logits [.., C_s] to
  [.., C_t]; the KL against the teacher is taken at the teacher's full class count (m = 1).
* ``'same_class'``, "Same Class Number": the student is built with a split ratio that gives the
  teacher's class count (:func:`same_class_split_ratio`, e.g. 3 * 256/64 = 12), so the KL needs no
  merge (m = 1). The distiller checks that the class counts agree.
* NECM ("non-ETHT CCA module", Table III): CCA with a fixed temperature; set ``distill.etht=false``
  and ``distill.tau``. No extra module is needed.
"""

from __future__ import annotations

from torch import Tensor, nn

from cdkd.distill.sape import Projector


def _factor_strides(ratio: int) -> list[int]:
    """Stride-2 stages for the factors 2 of ``ratio``, then one stage for the odd rest."""
    strides = []
    while ratio % 2 == 0 and ratio > 1:
        strides.append(2)
        ratio //= 2
    if ratio > 1:
        strides.append(ratio)
    return strides


class ConvDownsample(nn.Module):
    """Learnable strided convs F^t [B, J, H', W'] -> [B, J, h, w] ("Conv Downsample" of Table V).

    Args:
        joints: J (channels kept).
        teacher_size: (H', W').
        student_size: (h, w); must divide (H', W').
    """

    def __init__(self, joints: int, teacher_size: tuple[int, int], student_size: tuple[int, int]):
        super().__init__()
        ratios = []
        for axis, t, s in zip(("H", "W"), teacher_size, student_size):
            if s <= 0 or t % s:
                raise ValueError(f"conv alignment: teacher feature {axis} {t} is not a multiple of student {axis} {s}")
            ratios.append(t // s)
        sh, sw = _factor_strides(ratios[0]), _factor_strides(ratios[1])
        depth = max(len(sh), len(sw))
        sh, sw = sh + [1] * (depth - len(sh)), sw + [1] * (depth - len(sw))
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sh, sw)):
            kernel, padding = (2 * a - 1, 2 * b - 1), (a - 1, b - 1)
            layers.append(nn.Conv2d(joints, joints, kernel, stride=(a, b), padding=padding))
            if i < depth - 1:
                layers.append(nn.ReLU(inplace=False))
        self.net = nn.Sequential(*layers) if layers else nn.Identity()
        self.student_size = tuple(student_size)

    def forward(self, teacher_feature: Tensor) -> Tensor:
        """[B, J, H', W'] -> [B, J, h, w]."""
        out = self.net(teacher_feature)
        if tuple(out.shape[-2:]) != self.student_size:
            raise ValueError(f"conv alignment produced {tuple(out.shape[-2:])}, expected {self.student_size}")
        return out


def fc_feature_align(projector: str, joints: int, student_size: tuple[int, int],
                     teacher_size: tuple[int, int]) -> Projector:
    """One FC layer (no ReLU) from the student to the teacher feature size ("Fully Connected Layer").

    Args:
        projector: 'light' (per-joint plane map) or 'full' (one Linear over J*h*w).
        joints: J.
        student_size: (h, w).
        teacher_size: (H', W').

    Returns:
        A module mapping [B, J, h, w] -> [B, J, H', W'].
    """
    return Projector(projector, joints, student_size, teacher_size, relu=False)


class LogitFC(nn.Module):
    """One FC per axis mapping student logits to the teacher's class count (logit 'fc' of Table V).

    Args:
        student_classes: (C_x, C_y) of the student.
        teacher_classes: (C_x, C_y) of the teacher.
    """

    def __init__(self, student_classes: tuple[int, int], teacher_classes: tuple[int, int]):
        super().__init__()
        self.fc_x = nn.Linear(student_classes[0], teacher_classes[0])
        self.fc_y = nn.Linear(student_classes[1], teacher_classes[1])

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """[B, J, C_s] logits per axis -> [B, J, C_t] logits per axis."""
        return self.fc_x(x), self.fc_y(y)


def same_class_split_ratio(teacher_split: float, teacher_size: int | tuple[int, int],
                           student_size: int | tuple[int, int]) -> float:
    """Student split ratio k_s giving the teacher's class count: k_s = k_t * size_t / size_s.

    Args:
        teacher_split: the teacher's split ratio k_t.
        teacher_size: teacher input size, an int or (H, W).
        student_size: student input size, an int or (H, W).

    Returns:
        k_s (e.g. 3.0 * 256 / 64 = 12.0).

    Raises:
        ValueError: when the resolution ratio differs between the axes (one k cannot serve both).
    """
    t = (teacher_size, teacher_size) if isinstance(teacher_size, int) else tuple(teacher_size)
    s = (student_size, student_size) if isinstance(student_size, int) else tuple(student_size)
    ratios = {t[i] / s[i] for i in range(2)}
    if len(ratios) != 1:
        raise ValueError(
            f"same-class logit alignment needs one resolution ratio on both axes; teacher {t} vs student {s}"
        )
    return float(teacher_split) * ratios.pop()
