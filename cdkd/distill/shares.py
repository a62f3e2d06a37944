"""How much each term of Eq. 8 moves the student: the gradient of each term and its share of the update.

Beyond the paper. CDKD's total loss is ``w*L_ori + alpha*L_fea + beta*L_logit`` (Eq. 8), and
whether distillation can change anything depends on how large its terms' gradients are next to
the task term's, on the student's parameters. With the released weights (MPII 64x64: w = 1000,
alpha = 4e-5, beta = 4e-6) they are tiny; this module holds the arithmetic that measures it.

Definitions, for the student's parameters theta (the distiller's own parameters are left out):

* ``g_i = d(part_i)/d(theta)`` for each weighted part i in {task, feature, logit} of Eq. 8.
* ``grad_norm_ratio[i] = ||g_i|| / ||g_task||`` (i = feature, logit).
* Adam moves each parameter by about ``m / (sqrt(v) + eps)``, where v is its running mean of the
  squared *total* gradient. The part of that update owed to term i is ``u_i = g_i / (sqrt(v) + eps)``
  (element-wise; the u_i add up to the whole preconditioned gradient), and its share is
  ``shares[i] = ||u_i|| / sum_j ||u_j||`` (non-negative, sums to 1). For SGD, v is taken as 1
  (the share of the plain gradient).
* In training, v is the optimizer's own ``exp_avg_sq`` (bias-corrected); in
  :func:`cdkd.engine.calibrate.measure` it is the mean of the squared total gradient over the
  measured batches.

Used by the engine (``share_task``, ``share_feature``, ``share_logit`` in ``steps.csv`` every
``train.log_every`` steps), by :mod:`cdkd.engine.calibrate` (``distill.calibrate_share``) and by
``python -m cdkd diagnose``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

PARTS = ("task", "feature", "logit")
EPS = 1e-8


def part_gradients(parts: dict[str, Tensor], params: list[nn.Parameter],
                   skip: tuple[str, ...] = ()) -> dict[str, list[Tensor]]:
    """The gradient of each weighted part of Eq. 8 on ``params`` (graphs kept for a later backward).

    Args:
        parts: weighted parts {'task', 'feature', 'logit'} (scalars with graphs; a part without a
            graph, e.g. the baseline's zeros or a detached feature term, has zero gradient).
        params: the student's parameters.
        skip: parts not to differentiate (their gradient is left out of the result).

    Returns:
        {part: [gradient per parameter]} (zeros where a parameter is not reached).
    """
    out = {}
    for name in PARTS:
        if name in skip:
            continue
        value = parts[name]
        if not value.requires_grad:
            out[name] = [torch.zeros_like(p) for p in params]
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        out[name] = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]
    return out


def adam_second_moment(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> list[Tensor] | None:
    """Bias-corrected ``exp_avg_sq`` of Adam/AdamW for ``params``; None for other optimizers or
    before the first step."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    beta2 = optimizer.param_groups[0]["betas"][1]
    out = []
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            return None
        step = float(state["step"])
        out.append(state["exp_avg_sq"] / (1.0 - beta2**step))
    return out


def _norm(tensors: list[Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def shares_from(grads: dict[str, list[Tensor]], second_moment: list[Tensor] | None) -> dict[str, dict[str, float]]:
    """Gradient norms, their ratios to the task term's, and the shares of the update.

    Args:
        grads: {part: [gradient per parameter]} for 'task', 'feature', 'logit'.
        second_moment: Adam's v per parameter (None: plain gradient, i.e. SGD).

    Returns:
        {'grad_norm': {part: float}, 'grad_norm_ratio': {'feature', 'logit'}, 'update_norm': {part},
        'shares': {part: fraction, summing to 1}}.
    """
    if second_moment is None:
        pre = grads
    else:
        denom = [v.sqrt() + EPS for v in second_moment]
        pre = {k: [g / d for g, d in zip(gs, denom)] for k, gs in grads.items()}
    grad_norm = {k: _norm(gs) for k, gs in grads.items()}
    update_norm = {k: _norm(us) for k, us in pre.items()}
    total = sum(update_norm.values())
    task = grad_norm.get("task", 0.0)
    return {
        "grad_norm": grad_norm,
        "grad_norm_ratio": {k: (grad_norm[k] / task if task > 0 else math.inf) for k in ("feature", "logit")},
        "update_norm": update_norm,
        "shares": {k: (update_norm[k] / total if total > 0 else 0.0) for k in PARTS},
    }
