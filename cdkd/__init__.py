"""cdkd: Cross-Domain Knowledge Distillation for low-resolution human pose estimation.

Submodules are imported on use; nothing heavy happens at ``import cdkd``.
"""

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Keypoints in image coordinates for person boxes; see :func:`cdkd.predict.predict`."""
    from cdkd.predict import predict as _predict

    return _predict(*args, **kwargs)
