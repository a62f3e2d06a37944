"""The paper's reported numbers (validation sets), for printing beside ours. Nothing here is measured.

Sources: Table I (MPII PCKh@0.5), Table II (COCO AP, detector boxes with 56.4 AP), Tables III, V, VI,
VIII, IX, X of "Cross-Domain Knowledge Distillation for Low-Resolution Human Pose Estimation".
"""

MPII_PCKH_MEAN = {
    # (arch, resolution, method) -> Mean PCKh@0.5
    ("hrnet_w32", 32, "simcc"): 59.560,
    ("hrnet_w32", 32, "cdkd"): 61.442,
    ("hrnet_w32", 64, "simcc"): 78.340,
    ("hrnet_w32", 64, "cdkd"): 79.362,
}

COCO_AP = {
    # detector boxes (56.4 AP person detector), as SimCC and CAL report
    ("hrnet_w32", 32, "simcc"): 29.8,
    ("hrnet_w32", 32, "cdkd"): 30.7,
    ("hrnet_w48", 64, "simcc"): 58.6,
    ("hrnet_w48", 64, "cdkd"): 60.3,
    ("resnet50", 64, "simcc"): 40.0,  # Table IX
    ("resnet50", 64, "cca"): 42.0,  # Table IX, HRNet-W48@256 teacher (76.4 AP)
}

SIZES = {
    # (arch, resolution) -> (Params in M, "GFLOPs" under the SimCC summary convention)
    ("hrnet_w32", 32): (28.5, 0.148),
    ("hrnet_w32", 64): (28.6, 0.593),
    ("hrnet_w48", 64): (63.7, 1.218),
}

MPII_64_ABLATIONS = {
    # Table III (modules), Table V (alignment), Table VI (projectors); MPII 64x64 PCKh@0.5 Mean
    "simcc": 78.340,
    "projector ensemble": 78.621,
    "+SAU": 78.717,
    "NECM (fixed-tau CCA)": 78.772,
    "CDKD (all)": 79.362,
    "conv downsample (feature)": 78.207,
    "FC (feature)": 78.249,
    "same class number (logit)": 75.173,
    "FC logits": 77.973,
    "K=1": 78.621,
    "K=2": 79.037,
    "K=3": 79.362,
    "K=4": 76.937,
    "K=5": 76.831,
    "ETHT tau,alpha": 79.053,
    "ETHT tau,alpha,beta": 79.206,
}


def paper_number(dataset: str, arch: str, resolution: int, method: str) -> float | None:
    """The paper's main metric for a row, or None where the paper has no such row."""
    table = MPII_PCKH_MEAN if dataset == "mpii" else COCO_AP
    return table.get((arch, resolution, method))
