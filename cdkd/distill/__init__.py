"""CDKD distillation: SAPE (Eq. 1-5), CCA (Eq. 6-7), ETHT (Eq. 9-12) and the Table V baselines.

Paper: "Cross-Domain Knowledge Distillation for Low-Resolution Human Pose Estimation" (CDKD).
``Distiller`` (``distiller.py``) combines the parts into Eq. 8; each part lives in its own file.
"""

from cdkd.distill.baselines import (
    ConvDownsample,
    LogitFC,
    fc_feature_align,
    same_class_split_ratio,
)
from cdkd.distill.cca import (
    cca_loss,
    class_ratio,
    centred_matrix,
    merge_bins,
    merge_bins_overlap,
    merge_probs,
    normalised_entropy,
    overlap_matrix,
)
from cdkd.distill.distiller import Distiller, DistillStep, roll_teacher, total_loss
from cdkd.distill.fidelity import FIDELITIES, OFFICIAL, PAPER, Fidelity
from cdkd.distill.etht import (
    LearnableTemperature,
    LearnableWeight,
    etht_param_group,
    etht_strength,
    grad_reverse,
    grad_scale,
    official_xi_schedule,
    set_etht_lr,
    xi_schedule,
)
from cdkd.distill.sape import (
    SAPE,
    SAU,
    OfficialSAU,
    Projector,
    feature_cosine_loss,
    projector_size,
)

__all__ = [
    "FIDELITIES",
    "OFFICIAL",
    "PAPER",
    "Fidelity",
    "centred_matrix",
    "merge_probs",
    "normalised_entropy",
    "roll_teacher",
    "total_loss",
    "etht_param_group",
    "etht_strength",
    "set_etht_lr",
    "SAPE",
    "SAU",
    "ConvDownsample",
    "DistillStep",
    "Distiller",
    "LearnableTemperature",
    "LearnableWeight",
    "LogitFC",
    "OfficialSAU",
    "Projector",
    "cca_loss",
    "class_ratio",
    "fc_feature_align",
    "feature_cosine_loss",
    "grad_reverse",
    "grad_scale",
    "merge_bins",
    "merge_bins_overlap",
    "official_xi_schedule",
    "overlap_matrix",
    "projector_size",
    "same_class_split_ratio",
    "xi_schedule",
]
