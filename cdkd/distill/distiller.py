"""The CDKD distiller: L_total = L_ori + alpha * L_fea + beta * L_logit (Eq. 8).

Combines SAPE (feature term, Eq. 1-5, ``cdkd.distill.sape``), CCA (logit term, Eq. 6-7,
``cdkd.distill.cca``) and ETHT (learned temperature and, optionally, loss weights, Eq. 9-12,
``cdkd.distill.etht``) of the CDKD paper, plus the Table V alignment baselines
(``cdkd.distill.baselines``). The student and the teacher are duck-typed: both give ``.x``
[B, J, W*k], ``.y`` [B, J, H*k] and ``.feature`` [B, J, H/4, W/4].

``cfg.feature``: 'sape' | 'conv' | 'fc' | 'none'; ``cfg.logit``: 'cca' | 'fc' | 'same_class' |
'none'. 'none' drops that term (its raw and weighted values are logged as 0), so
feature='none', logit='none' is the plain SimCC baseline with the distiller's bookkeeping.

``cfg.fidelity``:

* ``'paper'`` (default): everything the paper describes is trained. The student feature keeps its
  graph, so L_fea trains the student backbone; the projectors, the SAU, the alignment baselines'
  layers and the ETHT parameters are returned by :meth:`Distiller.trainable_parameters` for the
  optimizer; the temperature is trained through a gradient reversal layer with xi ramping 0 ->
  xi_max (cosine) over ``xi_epochs`` epochs (0: over all ``total_epochs``, Eq. 12 literally);
  the KL is summed over the classes and weighted by the joints' target weights.
* ``'official'``: the released code (PAPER_NOTES items 1-6). The student feature is detached
  before SAPE (L_fea sends no gradient to the student); the projectors are the 'full' kind
  whatever ``cfg.projector`` says; the SAU is the released one (3 summed branches, softmax over the
  K projectors and their mean); the KL is averaged over the classes and summed over every (sample,
  joint, axis), ignoring target weights; the temperature passes an unreversed gradient scaling
  whose coefficient decays 1 -> 0 over 210 epochs, and nothing of the distiller is trained
  (``trainable_parameters()`` is empty, every distiller parameter is frozen, tau stays 15.62).
  The released weighting ``1000*L_simcc + 0.4*ALPHA*L_fea + 0.4*BETA*L_logit`` is expressed by
  the configuration: ``loss.weight = 1000``, ``distill.alpha = 0.4*ALPHA`` and
  ``distill.beta = 0.4*BETA`` (MPII 64x64: alpha = 4e-5, beta = 4e-6); this module only applies
  Eq. 8 with those numbers.

``task_loss`` is L_ori as computed (and weighted) by the engine. Teacher outputs are detached
here even if the engine already ran the teacher under ``no_grad``. All distillation maths runs in
float32 with autocast disabled, so bf16 or channels_last inputs are fine.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from cdkd.config import ConfigError, DistillConfig
from cdkd.distill.baselines import ConvDownsample, LogitFC, fc_feature_align
from cdkd.distill.cca import MERGES, cca_loss, class_ratio
from cdkd.distill.etht import (
    LearnableTemperature,
    LearnableWeight,
    official_xi_schedule,
    xi_schedule,
)
from cdkd.distill.sape import PROJECTOR_KINDS, SAPE, feature_cosine_loss

FEATURES = ("sape", "conv", "fc", "none")
LOGITS = ("cca", "fc", "same_class", "none")
FIDELITIES = ("paper", "official")


class DistillStep(NamedTuple):
    """Result of one distiller call.

    Attributes:
        total: L_total of Eq. 8 (scalar, carries the graph).
        terms: detached scalars for logging: 'task', 'feature', 'feature_weighted', 'logit',
            'logit_weighted', 'tau', 'xi', 'alpha', 'beta' and, with an SAU, 'sau_w0'.. (mean
            weight of each candidate over the batch and the joints).
    """

    total: Tensor
    terms: dict[str, Tensor]


def _check_choice(cfg: DistillConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise ConfigError(f"config key 'distill.{name}' is {value!r}; choose one of {choices}")


class Distiller(nn.Module):
    """CDKD losses and their learnable parts for one student/teacher pair.

    Args:
        cfg: the ``distill`` section of the configuration.
        student_feature_shape: (J, h, w) of the student feature.
        teacher_feature_shape: (J, H', W') of the teacher feature.
        student_classes: (C_x, C_y) of the student's SimCC head.
        teacher_classes: (C_x, C_y) of the teacher's SimCC head.
        total_epochs: number of training epochs (the ETHT ramp length when ``cfg.xi_epochs`` is 0).
    """

    def __init__(self, cfg: DistillConfig, student_feature_shape: tuple[int, int, int],
                 teacher_feature_shape: tuple[int, int, int], student_classes: tuple[int, int],
                 teacher_classes: tuple[int, int], total_epochs: int):
        super().__init__()
        for name, choices in (("fidelity", FIDELITIES), ("feature", FEATURES), ("logit", LOGITS),
                              ("projector", PROJECTOR_KINDS), ("merge", MERGES)):
            _check_choice(cfg, name, choices)
        joints, h, w = student_feature_shape
        t_joints, big_h, big_w = teacher_feature_shape
        if joints != t_joints:
            raise ConfigError(f"student feature has {joints} joints, teacher feature {t_joints}")
        self.cfg = cfg
        self.official = cfg.fidelity == "official"
        self.total_epochs = int(total_epochs)
        self.student_classes, self.teacher_classes = tuple(student_classes), tuple(teacher_classes)

        self.sape = self.conv_align = self.fc_align = None
        if cfg.feature == "sape":
            sau = ("official" if self.official else "paper") if cfg.sau else "none"
            self.sape = SAPE(joints, (h, w), (big_h, big_w), cfg.num_projectors,
                             "full" if self.official else cfg.projector, sau, tuple(cfg.sau_kernels), cfg.sau_hidden)
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

        reverse = not self.official
        learn = set(cfg.learn) if cfg.etht else set()
        has_logit, has_feature = cfg.logit != "none", cfg.feature != "none"
        self.temperature = (LearnableTemperature(cfg.tau_min, cfg.tau_range, reverse=reverse)
                            if has_logit and "tau" in learn else None)
        self.alpha_weight = LearnableWeight(cfg.alpha, reverse) if has_feature and "alpha" in learn else None
        self.beta_weight = LearnableWeight(cfg.beta, reverse) if has_logit and "beta" in learn else None
        if self.official:
            self.requires_grad_(False)  # the released code never gives these to the optimizer
        self.epoch = 0
        self.xi = 0.0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Update the ETHT strength xi for a 0-based epoch (paper: Eq. 12 ramp; official: decay)."""
        self.epoch = int(epoch)
        if self.official:
            self.xi = official_xi_schedule(self.epoch)
        else:
            ramp = self.cfg.xi_epochs if self.cfg.xi_epochs > 0 else self.total_epochs
            self.xi = xi_schedule(self.epoch, ramp, self.cfg.xi_max)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer must get besides the student's (empty in official mode)."""
        if self.official:
            return []
        return [p for p in self.parameters() if p.requires_grad]

    def etht_parameters(self) -> list[nn.Parameter]:
        """The adversarial ETHT parameters (theta of tau, phi of alpha/beta); empty in official mode.

        The engine gives them their own optimizer group with no weight decay and a learning rate
        scaled by xi: Adam's step is invariant to the gradient's scale, so the ``-xi`` of the
        reversal layer alone would only switch ETHT on and off, not ramp it (Eq. 11-12).
        """
        if self.official:
            return []
        mods = (self.temperature, self.alpha_weight, self.beta_weight)
        return [p for m in mods if m is not None for p in m.parameters() if p.requires_grad]

    def _feature_loss(self, student_feature: Tensor, teacher_feature: Tensor, sau_terms: dict) -> Tensor:
        """L_fea (Eq. 5) of the configured feature alignment; SAU weight means go to ``sau_terms``."""
        fs = student_feature.float()  # [B, J, h, w]
        if self.official:
            fs = fs.detach()  # PAPER_NOTES item 1
        ft = teacher_feature.detach().float()  # [B, J, H', W']
        if self.sape is not None:
            aligned, weights = self.sape(fs)  # [B, J, H', W'], [B, K(+1), J] | None
            if weights is not None:
                for k, value in enumerate(weights.detach().mean(dim=(0, 2))):
                    sau_terms[f"sau_w{k}"] = value
            return feature_cosine_loss(aligned, ft)
        if self.conv_align is not None:
            return feature_cosine_loss(fs, self.conv_align(ft))  # teacher brought down to [B, J, h, w]
        return feature_cosine_loss(self.fc_align(fs), ft)

    def forward(self, student, teacher, target_weight: Tensor, task_loss: Tensor) -> DistillStep:
        """Eq. 8 for one batch.

        Args:
            student: student output with ``.x`` [B,J,C_s,x], ``.y`` [B,J,C_s,y], ``.feature`` [B,J,h,w].
            teacher: teacher output with ``.x`` [B,J,C_t,x], ``.y`` [B,J,C_t,y], ``.feature`` [B,J,H',W'].
            target_weight: joint weights [B, J] or [B, J, 1] (used by the paper-mode KL).
            task_loss: L_ori (scalar), already weighted by the engine.

        Returns:
            :class:`DistillStep` with the total loss and the logged terms.
        """
        cfg, xi = self.cfg, self.xi
        with torch.autocast(device_type=task_loss.device.type, enabled=False):
            sau_terms: dict[str, Tensor] = {}
            zero = torch.zeros((), device=task_loss.device)
            alpha = self.alpha_weight(xi) if self.alpha_weight is not None else torch.tensor(cfg.alpha, device=zero.device)
            beta = self.beta_weight(xi) if self.beta_weight is not None else torch.tensor(cfg.beta, device=zero.device)
            tau = self.temperature(xi) if self.temperature is not None else torch.tensor(cfg.tau, device=zero.device)

            feature = zero
            if cfg.feature != "none":
                feature = self._feature_loss(student.feature, teacher.feature, sau_terms)

            logit = zero
            if cfg.logit != "none":
                sx, sy = student.x.float(), student.y.float()  # [B, J, C_s]
                merge = cfg.merge
                if self.logit_fc is not None:
                    sx, sy = self.logit_fc(sx, sy)  # [B, J, C_t]
                    merge = "integer"  # m = 1
                reduction = "official" if self.official else "paper"
                logit = cca_loss(sx, sy, teacher.x, teacher.y, tau, target_weight, merge, reduction)["loss"]

            feature_weighted = alpha * feature
            logit_weighted = beta * logit
            total = task_loss.float() + feature_weighted + logit_weighted  # Eq. 8

        terms = {
            "task": task_loss.detach().float(),
            "feature": feature.detach(),
            "feature_weighted": feature_weighted.detach(),
            "logit": logit.detach(),
            "logit_weighted": logit_weighted.detach(),
            "tau": tau.detach(),
            "xi": torch.tensor(float(xi), device=zero.device),
            "alpha": alpha.detach(),
            "beta": beta.detach(),
            **sau_terms,
        }
        return DistillStep(total, terms)
