"""The CDKD distiller: L_total = L_ori + alpha * L_fea + beta * L_logit (Eq. 8).

Combines SAPE (feature term, Eq. 1-5, ``cdkd.distill.sape``), CCA (logit term, Eq. 6-7,
``cdkd.distill.cca``) and ETHT (learned temperature and, optionally, loss weights, Eq. 9-12,
``cdkd.distill.etht``) of the CDKD paper, plus the Table V alignment baselines
(``cdkd.distill.baselines``). The student and the teacher are duck-typed: both give ``.x``
[B, J, W*k], ``.y`` [B, J, H*k] and ``.feature`` [B, J, H/4, W/4].

``cfg.feature``: 'sape' | 'conv' | 'fc' | 'none'; ``cfg.logit``: 'cca' | 'fc' | 'same_class' |
'none'. 'none' drops that term (its raw and weighted values are logged as 0), so
feature='none', logit='none' is the plain SimCC baseline with the distiller's bookkeeping.

With ``shuffle_teacher`` (config key ``teacher.shuffle``, the study's control B) each crop of the
batch distils from another crop's teacher output: the batch of teacher outputs (features and logits)
is rolled by one (:func:`roll_teacher`), a fixed derangement for B > 1, so the targets keep the
teacher's statistics but carry nothing about this image.

``cfg.fidelity`` names a :class:`cdkd.distill.fidelity.Fidelity` record (``paper``, the default,
or ``official``, the released code); every difference between the two is one field of that table,
and this module reads the fields. The released weighting ``1000*L_simcc + 0.4*ALPHA*L_fea +
0.4*BETA*L_logit`` is expressed by the configuration: ``loss.weight = 1000``, ``distill.alpha =
0.4*ALPHA`` and ``distill.beta = 0.4*BETA`` (MPII 64x64: alpha = 4e-5, beta = 4e-6).

``task_loss`` is L_ori as computed by the engine, ``task_weight`` its weight w; :func:`total_loss`
is Eq. 8, the one place where the three terms are weighted and added (the baseline calls it too). Teacher outputs are detached
here even if the engine already ran the teacher under ``no_grad``. All distillation maths runs in
float32 with autocast disabled, so bf16 or channels_last inputs are fine.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from cdkd.config import ConfigError, DistillConfig
from cdkd.distill.baselines import ConvDownsample, LogitFC, fc_feature_align
from cdkd.distill.cca import cca_loss, class_ratio
from cdkd.distill.etht import LearnableTemperature, LearnableWeight, etht_strength
from cdkd.distill.fidelity import FIDELITIES, Fidelity
from cdkd.distill.sape import SAPE, feature_cosine_loss


def total_loss(task: Tensor, task_weight: float, feature: Tensor | float = 0.0, alpha: Tensor | float = 0.0,
               logit: Tensor | float = 0.0, beta: Tensor | float = 0.0) -> dict[str, Tensor]:
    """Eq. 8: ``L_total = w * L_ori + alpha * L_fea + beta * L_logit``.

    The only place where the terms are weighted and added; the SimCC baseline is the case
    alpha = beta = 0 (its distillation terms are zeros).

    Args:
        task: L_ori, the SimCC task loss (scalar).
        task_weight: w (1 in the paper; the released code uses 1000).
        feature: L_fea (Eq. 5); logit: L_logit (Eq. 7); alpha, beta: their weights.

    Returns:
        dict with 'total' and the weighted parts 'task', 'feature', 'logit' (scalars, graph kept).
    """
    task = task.float()
    parts = {"task": task_weight * task, "feature": alpha * feature, "logit": beta * logit}
    parts = {k: torch.as_tensor(v, dtype=torch.float32, device=task.device) for k, v in parts.items()}
    return {"total": parts["task"] + parts["feature"] + parts["logit"], **parts}


def roll_teacher(teacher, shift: int = 1):
    """The teacher outputs with the batch rolled by ``shift``: sample i gets sample i - shift's
    ``.x``, ``.y`` and ``.feature`` (control B, a shuffled teacher). For a batch of B > 1 and
    0 < shift mod B, no sample keeps its own output.

    Args:
        teacher: teacher output (a NamedTuple with ``.x`` [B,J,C_x], ``.y`` [B,J,C_y], ``.feature``
            [B,J,H',W']).
        shift: how far the batch is rolled.

    Returns:
        an output of the same type with every field rolled along the batch axis.
    """
    return teacher._replace(**{name: torch.roll(getattr(teacher, name), shift, dims=0)
                               for name in ("x", "y", "feature")})


class DistillStep(NamedTuple):
    """Result of one distiller call.

    Attributes:
        total: L_total of Eq. 8 (scalar, carries the graph).
        terms: detached scalars for logging: 'task', 'feature', 'feature_weighted', 'logit',
            'logit_weighted', 'tau', 'xi', 'alpha', 'beta', with a CCA-type logit term
            'target_entropy' (the merged teacher target's normalised entropy at tau, 1 = uniform;
            :func:`cdkd.distill.cca.normalised_entropy`) and, with an SAU, 'sau_w0'.. (mean weight
            of each candidate over the batch and the joints).
        parts: the weighted terms of Eq. 8 with their graphs ('task', 'feature', 'logit'), for
            measuring each term's gradient (:mod:`cdkd.distill.shares`).
    """

    total: Tensor
    terms: dict[str, Tensor]
    parts: dict[str, Tensor] | None = None


class Distiller(nn.Module):
    """CDKD losses and their learnable parts for one student/teacher pair.

    Args:
        cfg: the ``distill`` section of the configuration (validated by :func:`cdkd.config.validate`).
        student_feature_shape: (J, h, w) of the student feature.
        teacher_feature_shape: (J, H', W') of the teacher feature.
        student_classes: (C_x, C_y) of the student's SimCC head.
        teacher_classes: (C_x, C_y) of the teacher's SimCC head.
        total_epochs: number of training epochs (with ``cfg.xi_epochs`` = 0 the ramp reaches xi_max at
            the last epoch).
        shuffle_teacher: distil each crop from another crop's teacher output (:func:`roll_teacher`;
            config key ``teacher.shuffle``).
    """

    def __init__(self, cfg: DistillConfig, student_feature_shape: tuple[int, int, int],
                 teacher_feature_shape: tuple[int, int, int], student_classes: tuple[int, int],
                 teacher_classes: tuple[int, int], total_epochs: int, shuffle_teacher: bool = False):
        super().__init__()
        joints, h, w = student_feature_shape
        t_joints, big_h, big_w = teacher_feature_shape
        if joints != t_joints:
            raise ConfigError(f"student feature has {joints} joints, teacher feature {t_joints}")
        if cfg.fidelity not in FIDELITIES:
            raise ConfigError(f"config key 'distill.fidelity' is {cfg.fidelity!r}; choose one of {tuple(FIDELITIES)}")
        self.cfg = cfg
        self.fidelity: Fidelity = FIDELITIES[cfg.fidelity]
        fid = self.fidelity
        self.total_epochs = int(total_epochs)
        self.shuffle_teacher = bool(shuffle_teacher)
        self.student_classes, self.teacher_classes = tuple(student_classes), tuple(teacher_classes)

        self.sape = self.conv_align = self.fc_align = None
        if cfg.feature == "sape":
            self.sape = SAPE(joints, (h, w), (big_h, big_w), cfg.num_projectors, fid.projector or cfg.projector,
                             fid.sau if cfg.sau else "none", tuple(cfg.sau_kernels), cfg.sau_hidden)
        elif cfg.feature == "conv":
            self.conv_align = ConvDownsample(joints, (big_h, big_w), (h, w))
        elif cfg.feature == "fc":
            self.fc_align = fc_feature_align(cfg.projector, joints, (h, w), (big_h, big_w))

        self.logit_fc = None
        if cfg.logit == "cca" and cfg.merge == "integer":
            try:
                for axis, t, s in zip("xy", self.teacher_classes, self.student_classes):
                    class_ratio(t, s, axis)
            except ValueError as err:
                raise ConfigError(f"config key 'distill.merge' is 'integer': {err}") from None
        elif cfg.logit == "fc":
            self.logit_fc = LogitFC(self.student_classes, self.teacher_classes)
        elif cfg.logit == "same_class" and self.student_classes != self.teacher_classes:
            raise ConfigError(
                f"config key 'distill.logit' is 'same_class' but the student has {self.student_classes} classes "
                f"and the teacher {self.teacher_classes}; set model.split_ratio with same_class_split_ratio()"
            )

        learn = set(cfg.learn) if cfg.etht else set()
        has_logit, has_feature = cfg.logit != "none", cfg.feature != "none"
        reverse = fid.reverse_gradient
        self.temperature = (LearnableTemperature(cfg.tau_min, cfg.tau_range, reverse=reverse)
                            if has_logit and "tau" in learn else None)
        self.alpha_weight = LearnableWeight(cfg.alpha, reverse) if has_feature and "alpha" in learn else None
        self.beta_weight = LearnableWeight(cfg.beta, reverse) if has_logit and "beta" in learn else None
        if not fid.train_distiller:
            self.requires_grad_(False)  # the released code never gives these to the optimizer
        self.epoch = 0
        self.xi = 0.0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Update the ETHT strength xi for a 0-based epoch (Eq. 12; see :func:`etht_strength`)."""
        self.epoch = int(epoch)
        ramp = self.cfg.xi_epochs if self.cfg.xi_epochs > 0 else max(self.total_epochs - 1, 0)
        self.xi = etht_strength(self.fidelity.xi_schedule, self.epoch, ramp, self.cfg.xi_max)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer must get besides the student's (empty in official mode)."""
        if not self.fidelity.train_distiller:
            return []
        return [p for p in self.parameters() if p.requires_grad]

    def etht_parameters(self) -> list[nn.Parameter]:
        """The adversarial ETHT parameters (theta of tau, phi of alpha/beta); empty in official mode.

        They go into their own optimizer group (:func:`cdkd.distill.etht.etht_param_group`), whose
        learning rate carries xi (Eq. 11).
        """
        if not self.fidelity.train_distiller:
            return []
        mods = (self.temperature, self.alpha_weight, self.beta_weight)
        return [p for m in mods if m is not None for p in m.parameters() if p.requires_grad]

    def weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """(alpha, beta, tau) for the current xi: learned (ETHT) or the configured constants."""
        cfg, xi = self.cfg, self.xi
        alpha = self.alpha_weight(xi) if self.alpha_weight is not None else torch.tensor(cfg.alpha)
        beta = self.beta_weight(xi) if self.beta_weight is not None else torch.tensor(cfg.beta)
        tau = self.temperature(xi) if self.temperature is not None else torch.tensor(cfg.tau)
        return alpha, beta, tau

    def _feature_loss(self, student_feature: Tensor, teacher_feature: Tensor, extra_terms: dict) -> Tensor:
        """L_fea (Eq. 5) of the configured feature alignment; SAU weight means go to ``extra_terms``."""
        fs = student_feature.float()  # [B, J, h, w]
        if self.fidelity.detach_student_feature:
            fs = fs.detach()  # PAPER_NOTES item 1
        ft = teacher_feature.detach().float()  # [B, J, H', W']
        if self.sape is not None:
            aligned, weights = self.sape(fs)  # [B, J, H', W'], [B, K(+1), J] | None
            if weights is not None:
                for k, value in enumerate(weights.detach().mean(dim=(0, 2))):
                    extra_terms[f"sau_w{k}"] = value
            return feature_cosine_loss(aligned, ft)
        if self.conv_align is not None:
            return feature_cosine_loss(fs, self.conv_align(ft))  # teacher brought down to [B, J, h, w]
        return feature_cosine_loss(self.fc_align(fs), ft)

    def _logit_loss(self, student, teacher, tau: Tensor, target_weight: Tensor) -> dict[str, Tensor]:
        """L_logit (Eq. 6-7) of the configured logit alignment: :func:`cca_loss`'s dict."""
        sx, sy = student.x.float(), student.y.float()  # [B, J, C_s]
        merge = self.cfg.merge
        if self.logit_fc is not None:
            sx, sy = self.logit_fc(sx, sy)  # [B, J, C_t]
            merge = "integer"  # m = 1
        return cca_loss(sx, sy, teacher.x, teacher.y, tau, target_weight, merge, self.fidelity.kl_reduction)

    def forward(self, student, teacher, target_weight: Tensor, task_loss: Tensor,
                task_weight: float = 1.0) -> DistillStep:
        """Eq. 8 for one batch.

        Args:
            student: student output with ``.x`` [B,J,C_s,x], ``.y`` [B,J,C_s,y], ``.feature`` [B,J,h,w].
            teacher: teacher output with ``.x`` [B,J,C_t,x], ``.y`` [B,J,C_t,y], ``.feature`` [B,J,H',W'].
            target_weight: joint weights [B, J] or [B, J, 1] (used by the paper-mode KL).
            task_loss: L_ori (scalar).
            task_weight: w, the weight of L_ori in Eq. 8.

        Returns:
            :class:`DistillStep` with the total loss, the logged terms and the weighted parts.
        """
        cfg = self.cfg
        if self.shuffle_teacher:
            teacher = roll_teacher(teacher)  # control B: every crop gets another crop's teacher output
        with torch.autocast(device_type=task_loss.device.type, enabled=False):
            extra_terms: dict[str, Tensor] = {}
            zero = torch.zeros((), device=task_loss.device)
            alpha, beta, tau = (v.to(zero.device) for v in self.weights())
            feature = zero
            if cfg.feature != "none":
                feature = self._feature_loss(student.feature, teacher.feature, extra_terms)
            if cfg.logit != "none":
                logit_parts = self._logit_loss(student, teacher, tau, target_weight)
                logit = logit_parts["loss"]
                extra_terms["target_entropy"] = logit_parts["target_entropy"]
            else:
                logit = zero
            parts = total_loss(task_loss, task_weight, feature, alpha, logit, beta)  # Eq. 8

        terms = {
            "task": parts["task"].detach(),
            "feature": feature.detach(),
            "feature_weighted": parts["feature"].detach(),
            "logit": logit.detach(),
            "logit_weighted": parts["logit"].detach(),
            "tau": tau.detach(),
            "xi": torch.tensor(float(self.xi), device=zero.device),
            "alpha": alpha.detach(),
            "beta": beta.detach(),
            **extra_terms,
        }
        total = parts.pop("total")
        return DistillStep(total, terms, parts)
