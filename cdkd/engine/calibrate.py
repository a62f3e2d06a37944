"""Measuring Eq. 8's update shares on a built run, and the calibration rule ``distill.calibrate_share``.

Beyond the paper. :func:`measure` averages the gradient norms and update shares of
:mod:`cdkd.distill.shares` over a run's first training batches (``python -m cdkd diagnose``);
:func:`calibrate` chooses alpha and beta so that each distillation term has a given share of the
update (used by :func:`cdkd.engine.train.build_training`). Both take a
:class:`cdkd.engine.train.Training` and use its own ``loader`` and ``losses``, so this module does
not import the training module.
"""

from __future__ import annotations

import contextlib
import math
import random

import numpy as np
import torch
from torch import Tensor, nn

from cdkd.config import ConfigError
from cdkd.distill.shares import PARTS, part_gradients, shares_from
from cdkd.engine.run import seed_everything


def student_parameters(t) -> list[nn.Parameter]:
    """The trained student's parameters (not the distiller's)."""
    return [p for p in t.bare_model.parameters() if p.requires_grad]


def measure(t, batches: int = 4, loader=None) -> dict:
    """Gradient norms and update shares of Eq. 8's terms over the first ``batches`` training batches.

    Args:
        t: a :class:`cdkd.engine.train.Training` (built, not yet trained, or loaded).
        batches: number of batches to average over.
        loader: batches to use (default: epoch 0's training loader, drawn as :func:`calibrate`
            draws them, so both see the same batches).

    Returns:
        :func:`shares_from`'s dict (norms averaged over the batches, v = mean squared total
        gradient), plus 'batches', 'alpha', 'beta', 'loss_weight' and the per-batch shares.
    """
    params = student_parameters(t)
    per_batch = batch_gradients(t, params, batches, loader)
    second = [torch.stack([sum(g[k][j] for k in PARTS) ** 2 for g in per_batch]).mean(0) for j in range(len(params))]
    norms = [shares_from(g, second) for g in per_batch]
    mean = {key: {k: sum(n[key][k] for n in norms) / len(norms) for k in norms[0][key]}
            for key in ("grad_norm", "update_norm")}
    total = sum(mean["update_norm"].values())
    result = {
        "grad_norm": mean["grad_norm"],
        "grad_norm_ratio": {k: _ratio(mean["grad_norm"][k], mean["grad_norm"]["task"]) for k in ("feature", "logit")},
        "update_norm": mean["update_norm"],
        "shares": {k: _ratio(mean["update_norm"][k], total) for k in PARTS},
        "shares_per_batch": [n["shares"] for n in norms],
        "batches": len(per_batch),
        "loss_weight": t.cfg.loss.weight,
        "alpha": t.cfg.distill.alpha if t.distiller is not None else 0.0,
        "beta": t.cfg.distill.beta if t.distiller is not None else 0.0,
    }
    t.optimizer.zero_grad(set_to_none=True)
    return result


def _ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (a zero task gradient; ``python -m cdkd diagnose`` refuses non-finite results)."""
    return a / b if b else math.nan


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with python, numpy and torch seeded from ``seed``; their states are restored after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        seed_everything(seed * 100_003 + 424_242, deterministic=False)
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def batch_gradients(t, params: list[nn.Parameter], batches: int, loader=None) -> list[dict[str, list[Tensor]]]:
    """:func:`part_gradients` of the first ``batches`` training batches, in training mode.

    The default batches are epoch 0's, drawn under :func:`seeded` from ``train.seed``, so the same
    config always measures the same batches (``diagnose`` and :func:`calibrate` agree, and a resumed
    run recomputes the same calibrated weights).
    """
    t.model.train()
    if t.distiller is not None:
        t.distiller.train()
    out = []
    with seeded(t.cfg.train.seed) if loader is None else contextlib.nullcontext():
        for i, batch in enumerate(loader if loader is not None else t.loader(0)):
            if i >= batches:
                break
            _, _, parts = t.losses(batch)
            out.append(part_gradients(parts, params))
    if not out:
        raise ValueError("diagnose: the training set gave no batch")
    return out


# --- calibration guards: called by calibrate at its start and on its measured norms --------------------
def check_calibration_share(share: float) -> None:
    """A non-finite ``distill.calibrate_share`` is refused (one line), never trained uncalibrated."""
    if not isinstance(share, (int, float)) or not math.isfinite(share):
        raise ConfigError(f"config key 'distill.calibrate_share' is {share!r}; it must be a finite number")


def check_calibration_norms(norms: dict[str, float], loss_weight: float) -> None:
    """The measured update norms must be finite and the task term's non-zero: alpha = beta = 0 (a
    student without a gradient) or NaN weights are refused with one line naming the cause."""
    bad = {k: v for k, v in norms.items() if not math.isfinite(v)}
    if bad:
        raise ConfigError(f"distill.calibrate_share: non-finite gradient norms {bad} on the first training batches "
                          f"(loss.weight = {loss_weight!r}); check loss.weight, distill.alpha/beta and the data")
    if norms["task"] <= 0:
        raise ConfigError(f"distill.calibrate_share: the task term has zero gradient on the student (loss.weight = "
                          f"{loss_weight!r}), so no share can be calibrated; give loss.weight > 0")


def calibrate(t, share: float, batches: int = 4) -> tuple[float, float]:
    """alpha and beta such that each distillation term has ``share`` of the update (a rule fixed a
    priori, from the first training batches; never from validation).

    With unit weights, let T, F, L be the preconditioned gradient norms of the task, feature and
    logit terms (v from the task gradient alone, as Adam's v is before distillation has moved
    anything). alpha*F = beta*L = x with x / (T + n*x) = share, n the number of distillation terms,
    gives x = share*T / (1 - n*share).

    Args:
        t: a built :class:`cdkd.engine.train.Training` in distill mode.
        share: the target share of each distillation term, in (0, 1/n).
        batches: batches to average over.

    Returns:
        (alpha, beta); a term that is off keeps its configured weight.
    """
    check_calibration_share(share)
    d = t.cfg.distill
    active = [k for k, on in (("feature", d.feature != "none"), ("logit", d.logit != "none")) if on]
    if not active or t.distiller is None:
        raise ConfigError("config key 'distill.calibrate_share' needs train.mode=distill with a feature or logit term")
    if not 0.0 < share < 1.0 / len(active):
        raise ConfigError(f"config key 'distill.calibrate_share' is {share}; with {len(active)} distillation "
                          f"term(s) it must lie in (0, {1.0 / len(active):g})")
    if t.distiller.alpha_weight is not None or t.distiller.beta_weight is not None:
        raise ConfigError("config key 'distill.calibrate_share' cannot be combined with learned alpha/beta (distill.learn)")
    params = student_parameters(t)
    unit = {"feature": d.alpha, "logit": d.beta}
    for name in active:
        if unit[name] == 0:
            raise ConfigError(f"config key 'distill.calibrate_share' needs a non-zero distill.{'alpha' if name == 'feature' else 'beta'}")
    grads = batch_gradients(t, params, batches)
    second = [torch.stack([g["task"][j] ** 2 for g in grads]).mean(0) for j in range(len(params))]
    norms = [shares_from(g, second)["update_norm"] for g in grads]
    mean = {k: sum(n[k] for n in norms) / len(norms) for k in PARTS}
    check_calibration_norms(mean, t.cfg.loss.weight)
    x = share * mean["task"] / (1.0 - len(active) * share)
    alpha, beta = d.alpha, d.beta
    for name in active:
        raw = mean[name] / abs(unit[name])  # the norm at weight 1
        if raw <= 0:
            raise ConfigError(f"distill.calibrate_share: the {name} term has no gradient on the student "
                              f"(fidelity '{d.fidelity}' detaches it?); calibrate the other term only")
        if name == "feature":
            alpha = x / raw
        else:
            beta = x / raw
    t.optimizer.zero_grad(set_to_none=True)
    return float(alpha), float(beta)
