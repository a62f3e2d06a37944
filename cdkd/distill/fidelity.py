"""Every difference between the CDKD paper and the authors' released code, as one record.

The paper (Sec. III, Eq. 1-12) and the released implementation disagree in a handful of places
(``PAPER_NOTES`` items 1-6). ``distill.fidelity`` names one of two instances of :class:`Fidelity`;
code that depends on a difference reads the one field that describes it, so this table is the
single place where the two versions of the method are told apart.

========================  ==================================  ====================================
field                     ``paper`` (Eq. 1-12)                ``official`` (released code)
========================  ==================================  ====================================
detach_student_feature    False: L_fea trains the student     True: the feature is ``.detach()``-ed
train_distiller           True: projectors, SAU, tau learned  False: none reach the optimizer
reverse_gradient          True: GRL multiplies by -1 (Eq. 10) False: the gradient is only scaled
xi_schedule               'ramp': 0 -> xi_max (Eq. 12)        'decay': cosine 1 -> 0 over 210 ep.
sau                       'paper': Eq. 1-3 (concat, K FCs)    'official': 3 convs summed, K+1
                                                              candidates (projectors and mean)
projector                 None: the config's choice           'full': one Linear J*h*w -> J*H'*W'
kl_reduction              'paper': Eq. 7, sum over classes,   'official': mean over classes,
                          mean over the batch, joint weights  sum over the batch, no weights,
                                                              merged teacher detached
========================  ==================================  ====================================

Evaluation has one more released-code difference that is not part of the distillation and has its
own key, ``eval.flip_shift``: ``official`` flips and shifts the x *logits* by one bin and applies the
softmax afterwards (SimCC/CDKD ``validate``); ``exact`` (our default) shifts the probabilities by
k-1 bins. See :func:`cdkd.inference.predict_crops`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fidelity:
    """Which version of each CDKD detail a run uses (one field per paper/release difference)."""

    name: str
    detach_student_feature: bool  # PAPER_NOTES item 1
    train_distiller: bool  # item 2: projectors, SAU and the ETHT parameters get to the optimizer
    reverse_gradient: bool  # item 3: the GRL's minus sign
    xi_schedule: str  # item 3: 'ramp' (Eq. 12, increasing) | 'decay' (released, 1 -> 0 over 210 epochs)
    sau: str  # item 4: 'paper' | 'official'
    projector: str | None  # item 5: None keeps distill.projector; 'full' forces the released Linear
    kl_reduction: str  # items 6, 9: 'paper' | 'official' (see cdkd.distill.cca.cca_loss)


PAPER = Fidelity("paper", detach_student_feature=False, train_distiller=True, reverse_gradient=True,
                 xi_schedule="ramp", sau="paper", projector=None, kl_reduction="paper")
OFFICIAL = Fidelity("official", detach_student_feature=True, train_distiller=False, reverse_gradient=False,
                    xi_schedule="decay", sau="official", projector="full", kl_reduction="official")

FIDELITIES: dict[str, Fidelity] = {f.name: f for f in (PAPER, OFFICIAL)}
