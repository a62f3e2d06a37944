"""cdkd: Cross-Domain Knowledge Distillation for low-resolution human pose estimation.

Submodules are imported on use; nothing heavy happens at ``import cdkd``.
``cdkd.predict(image, boxes, checkpoint)`` is :func:`cdkd.inference.predict`.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "predict":
        from cdkd.inference import predict

        return predict
    raise AttributeError(f"module 'cdkd' has no attribute {name!r}")
