"""Easy-to-hard training (ETHT): an adversarially learned temperature, after CTKD.

Implements Sec. III-B2 (Eq. 9-12) of the CDKD paper, which follows "Curriculum Temperature for
Knowledge Distillation" (CTKD, Li et al., AAAI 2023):

* the temperature is ``tau = tau_min + tau_range * sigmoid(theta)`` (CTKD: 1 + 20*sigmoid);
* ``theta`` is trained *against* the student: a gradient reversal layer (GRL) between ``theta``
  and the loss flips the gradient's sign, so one optimizer step on the total loss moves ``theta``
  up the distillation loss, ``theta <- theta + eta * xi * dL/d(theta)`` (Eq. 10-11);
* ``xi`` grows with the epoch (Eq. 12, monotonically increasing): a cosine ramp 0 -> xi_max over
  the first ``xi_epochs`` epochs, then flat (CTKD's schedule).

Where xi enters (applied exactly once): the ETHT parameters form their own optimizer group
(:func:`etht_param_group`, no weight decay) whose learning rate is the student's times xi
(:func:`set_etht_lr`, called at every epoch). The GRL itself only reverses. Putting xi into the
GRL instead would be undone by Adam, whose step ignores the gradient's scale, and putting it into
both would give SGD a step of lr*xi^2; with the learning rate the step is lr*xi*(reversed gradient)
under SGD and Adam alike.

The initial ``theta`` is 1.0 as in CTKD's and CDKD's released code (tau starts at
1 + 20*sigmoid(1) = 15.62).

The same mechanism can learn the loss weights alpha and beta (Table VIII): ``LearnableWeight``
keeps a weight positive and bounded as ``base * 2 * sigmoid(phi)`` with ``phi = 0`` at the start,
so it starts at the configured value and the adversary can at most double it (an unbounded
parameterisation such as ``base * exp(phi)`` would let gradient ascent on a positive loss grow
the weight without limit).

Released-code variant (PAPER_NOTES items 2-3, ``Fidelity.reverse_gradient`` and
``Fidelity.xi_schedule``): its "reversal" has no minus sign (the gradient is only scaled by the
coefficient), the coefficient follows a cosine from 1 down to 0 over 210 epochs
(``official_xi_schedule``, hard-to-easy), and ``theta`` is never given to the optimizer, so tau
stays at 15.62. The distiller reproduces that by giving the optimizer nothing in official mode.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

THETA_INIT = 1.0  # CTKD / released CDKD: nn.Parameter(torch.ones(1))
OFFICIAL_XI_EPOCHS = 210  # released CDKD: cosine 1 -> 0 over 210 loops, whatever the epoch count


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = float(scale)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def grad_reverse(x: Tensor) -> Tensor:
    """Gradient reversal layer (Eq. 10): identity forward, ``-grad`` backward.

    The strength xi of Eq. 11 is applied by the ETHT parameter group's learning rate
    (:func:`set_etht_lr`), not here: see the module docstring.

    Args:
        x: any tensor.

    Returns:
        A tensor equal to ``x`` whose gradient is reversed.
    """
    return _ScaleGradient.apply(x, -1.0)


def grad_scale(x: Tensor, coeff: float) -> Tensor:
    """The released code's "reversal": identity forward, ``+coeff * grad`` backward (no minus sign)."""
    return _ScaleGradient.apply(x, float(coeff))


def xi_schedule(epoch: int, xi_epochs: int, xi_max: float = 1.0) -> float:
    """ETHT strength xi at a 0-based epoch (Eq. 12): cosine ramp 0 -> xi_max, then flat.

    Args:
        epoch: current epoch, 0-based.
        xi_epochs: length of the ramp in epochs; 0 gives xi_max from the start.
        xi_max: final value.

    Returns:
        ``xi_max * (1 - cos(pi * epoch / xi_epochs)) / 2`` for epoch < xi_epochs, else xi_max.
    """
    if xi_epochs <= 0 or epoch >= xi_epochs:
        return float(xi_max)
    t = max(epoch, 0) / xi_epochs
    return float(xi_max) * (1.0 - math.cos(math.pi * t)) / 2.0


def official_xi_schedule(epoch: int, num_epochs: int = OFFICIAL_XI_EPOCHS) -> float:
    """Released-code coefficient: cosine 1 -> 0 over ``num_epochs`` (210), then 0 (hard-to-easy).

    Args:
        epoch: current epoch, 0-based.
        num_epochs: length of the decay (the released code hard-codes 210).

    Returns:
        ``(1 + cos(pi * min(epoch, num_epochs) / num_epochs)) / 2``.
    """
    t = min(max(epoch, 0), num_epochs) / num_epochs
    return (1.0 + math.cos(math.pi * t)) / 2.0


def etht_strength(schedule: str, epoch: int, ramp_epochs: int, xi_max: float = 1.0) -> float:
    """xi for a 0-based epoch under a fidelity's schedule (``Fidelity.xi_schedule``).

    Args:
        schedule: 'ramp' (Eq. 12, :func:`xi_schedule`) or 'decay' (released, :func:`official_xi_schedule`).
        epoch: current epoch, 0-based.
        ramp_epochs: the ramp's length ('ramp' only).
        xi_max: the ramp's final value ('ramp' only).
    """
    if schedule == "decay":
        return official_xi_schedule(epoch)
    return xi_schedule(epoch, ramp_epochs, xi_max)


class LearnableTemperature(nn.Module):
    """tau = tau_min + tau_range * sigmoid(theta), with theta behind a gradient reversal layer.

    Args:
        tau_min: lower bound of tau (CTKD: 1).
        tau_range: width of the range (CTKD: 20).
        theta_init: initial theta (CTKD and the released code: 1.0, tau = 15.62).
        reverse: True for the paper's GRL (``-1``; xi is the optimizer group's), False for the
            released code's ``+xi`` scaling.
    """

    def __init__(self, tau_min: float = 1.0, tau_range: float = 20.0, theta_init: float = THETA_INIT,
                 reverse: bool = True):
        super().__init__()
        self.tau_min = float(tau_min)
        self.tau_range = float(tau_range)
        self.reverse = reverse
        self.theta = nn.Parameter(torch.tensor(float(theta_init)))

    def forward(self, xi: float) -> Tensor:
        """The temperature (0-d tensor) for the current ETHT strength ``xi``."""
        theta = grad_reverse(self.theta) if self.reverse else grad_scale(self.theta, xi)
        return self.tau_min + self.tau_range * torch.sigmoid(theta)


class LearnableWeight(nn.Module):
    """A positive loss weight learned adversarially (Table VIII): ``base * 2 * sigmoid(phi)``.

    Args:
        base: the configured weight (alpha or beta); the module starts at this value (phi = 0).
        reverse: True for the paper's GRL, False for the released code's unreversed scaling.
    """

    def __init__(self, base: float, reverse: bool = True):
        super().__init__()
        self.base = float(base)
        self.reverse = reverse
        self.phi = nn.Parameter(torch.zeros(()))

    def forward(self, xi: float) -> Tensor:
        """The weight (0-d tensor), in (0, 2*base)."""
        phi = grad_reverse(self.phi) if self.reverse else grad_scale(self.phi, xi)
        return self.base * 2.0 * torch.sigmoid(phi)


def etht_param_group(params) -> dict:
    """The optimizer group of the adversarial ETHT parameters (theta of tau, phi of alpha/beta).

    No weight decay; its learning rate is set each epoch by :func:`set_etht_lr`.
    """
    return {"params": list(params), "weight_decay": 0.0, "etht": True}


def set_etht_lr(optimizer: torch.optim.Optimizer, xi: float) -> None:
    """Eq. 11's strength for the epoch: the ETHT group's lr = the student group's lr x xi.

    Args:
        optimizer: an optimizer whose first group is the student's and whose ETHT group was made
            by :func:`etht_param_group`.
        xi: the epoch's ETHT strength (Eq. 12).
    """
    for group in optimizer.param_groups[1:]:
        if group.get("etht"):
            group["lr"] = optimizer.param_groups[0]["lr"] * xi
