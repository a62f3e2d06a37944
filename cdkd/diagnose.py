"""How much each term of Eq. 8 moves the student: gradient norms and shares of the Adam update.

Beyond the paper. CDKD's total loss is ``w*L_ori + alpha*L_fea + beta*L_logit`` (Eq. 8), and
whether distillation can change anything depends on how large its terms' gradients are next to
the task term's, on the student's parameters. With the released weights (MPII 64x64: w = 1000,
alpha = 4e-5, beta = 4e-6) they are tiny; this module measures it.

Definitions, for the student's parameters theta (the distiller's own parameters are left out):

* ``g_i = d(part_i)/d(theta)`` for each weighted part i in {task, feature, logit} of Eq. 8.
* ``grad_norm_ratio[i] = ||g_i|| / ||g_task||`` (i = feature, logit).
* Adam moves each parameter by about ``m / (sqrt(v) + eps)``, where v is its running mean of the
  squared *total* gradient. The part of that update owed to term i is ``u_i = g_i / (sqrt(v) + eps)``
  (element-wise; the u_i add up to the whole preconditioned gradient), and its share is
  ``shares[i] = ||u_i|| / sum_j ||u_j||`` (non-negative, sums to 1). For SGD, v is taken as 1
  (the share of the plain gradient).
* In training, v is the optimizer's own ``exp_avg_sq`` (bias-corrected); in :func:`measure` it is
  the mean of the squared total gradient over the measured batches.

``python -m cdkd diagnose --config PRESET`` prints these for a run's first batches; training logs
``share_task``, ``share_feature``, ``share_logit`` in ``steps.csv`` every ``train.log_every`` steps;
``distill.calibrate_share=S`` uses :func:`calibrate` to choose alpha and beta before training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import warnings

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
    """a / b, NaN when b is 0 (a zero task gradient; :func:`_diagnose` refuses non-finite results)."""
    return a / b if b else math.nan


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with python, numpy and torch seeded from ``seed``; their states are restored after."""
    import random

    import numpy as np

    from cdkd.engine.run import seed_everything

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
    from cdkd.engine.train import compute_losses, make_loader

    t.model.train()
    if t.distiller is not None:
        t.distiller.train()
    out = []
    with seeded(t.cfg.train.seed) if loader is None else contextlib.nullcontext():
        for i, batch in enumerate(loader if loader is not None else make_loader(t.train_set, t.cfg, 0, t.device, t.dist)):
            if i >= batches:
                break
            _, _, parts = compute_losses(t.model, batch, t.cfg, t.device, t.teacher, t.distiller)
            out.append(part_gradients(parts, params))
    if not out:
        raise ValueError("diagnose: the training set gave no batch")
    return out


# --- calibration guards: called by calibrate at its start and on its measured norms --------------------
def check_calibration_share(share: float) -> None:
    """A non-finite ``distill.calibrate_share`` is refused (one line), never trained uncalibrated."""
    from cdkd.config import ConfigError

    if not isinstance(share, (int, float)) or not math.isfinite(share):
        raise ConfigError(f"config key 'distill.calibrate_share' is {share!r}; it must be a finite number")


def check_calibration_norms(norms: dict[str, float], loss_weight: float) -> None:
    """The measured update norms must be finite and the task term's non-zero: alpha = beta = 0 (a
    student without a gradient) or NaN weights are refused with one line naming the cause."""
    from cdkd.config import ConfigError

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
    from cdkd.config import ConfigError

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


def cli(argv: list[str], command: str = "diagnose") -> int:
    """``python -m cdkd diagnose --config PRESET [--set KEY=VALUE ...] [--batches N] [--json]``."""
    p = argparse.ArgumentParser(
        prog="python -m cdkd diagnose",
        description="Measure how much each term of Eq. 8 (task, alpha*L_fea, beta*L_logit) moves the student: "
                    "gradient norms on the student's parameters and each term's share of the Adam update.")
    p.add_argument("--config", "-c", required=True, help="preset name or YAML file (e.g. mpii_w32_64_distill)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--batches", type=int, default=4, help="training batches to average over (default: 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    from cdkd.engine.cli import run_command

    return run_command(command, lambda: _diagnose(args))


def _diagnose(args: argparse.Namespace) -> int:
    """The body of :func:`cli`: measure and print."""
    from cdkd.config import ConfigError, load_config

    if args.batches <= 0:
        raise ConfigError(f"--batches must be positive, got {args.batches}")
    cfg = load_config(args.config, args.overrides)
    with contextlib.redirect_stdout(sys.stderr):  # progress and calibration messages; stdout is the result
        t = build_for_diagnosis(cfg)
        try:
            result = measure(t, args.batches)
        finally:
            shutil.rmtree(t.run_dir.parent, ignore_errors=True)  # the scratch run folder
    check_measured(result)
    result["config"] = args.config
    result["teacher"] = t.teacher_source
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "shares_per_batch"}, indent=2))
        return 0
    print(f"{args.config}: w={result['loss_weight']:g}, alpha={result['alpha']:g}, beta={result['beta']:g}, "
          f"{result['batches']} batches, teacher: {t.teacher_source}")
    print(f"{'term':<10}{'grad norm':>14}{'ratio to task':>16}{'share of update':>18}")
    for k in PARTS:
        ratio = 1.0 if k == "task" else result["grad_norm_ratio"][k]
        print(f"{k:<10}{result['grad_norm'][k]:>14.4g}{ratio:>16.3g}{result['shares'][k]:>18.3%}")
    return 0


def check_measured(result: dict) -> None:
    """Refuse (one line) a measurement that would print ``nan%`` or non-JSON ``NaN``: a zero or
    non-finite task gradient, or any non-finite norm or share."""
    from cdkd.config import ConfigError

    values = {f"{key} {k}": v for key in ("grad_norm", "shares") for k, v in result[key].items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise ConfigError(f"diagnose: non-finite results ({', '.join(f'{k} = {v}' for k, v in bad.items())}) with "
                          f"loss.weight = {result['loss_weight']!r}, alpha = {result['alpha']!r}, beta = "
                          f"{result['beta']!r}; give finite weights")
    if result["grad_norm"]["task"] <= 0:
        raise ConfigError(f"diagnose: the task term has zero gradient on the student (loss.weight = "
                          f"{result['loss_weight']!r}); shares relative to it are undefined; give loss.weight > 0")


def build_for_diagnosis(cfg):
    """The run's Training without a run folder; a missing teacher checkpoint is replaced by a
    randomly initialised teacher (with a warning), so every preset can be diagnosed."""
    import tempfile
    from pathlib import Path

    from cdkd.engine.train import build_training

    source = "none (baseline)"
    if cfg.train.mode == "distill":
        if cfg.teacher.random:
            source = "random (teacher.random)"
        elif cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).exists():
            source = cfg.teacher.checkpoint
        else:
            warnings.warn(f"teacher checkpoint '{cfg.teacher.checkpoint}' not found: using a RANDOMLY INITIALISED "
                          f"{cfg.teacher.arch} teacher; the gradient norms of the distillation terms are not those "
                          "of a trained teacher", stacklevel=2)
            print(f"warning: teacher checkpoint '{cfg.teacher.checkpoint}' not found; using a randomly initialised "
                  f"teacher", file=sys.stderr)
            cfg.teacher.random = True
            source = "random (no checkpoint)"
    tmp = tempfile.mkdtemp(prefix="cdkd-diagnose-")
    try:
        t = build_training(cfg, Path(tmp) / "run")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed diagnosis leaves no scratch folder
        raise
    t.teacher_source = source
    return t
