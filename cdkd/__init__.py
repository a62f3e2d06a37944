"""cdkd: Cross-Domain Knowledge Distillation for low-resolution human pose estimation.

``cdkd.predict(image, boxes, checkpoint)`` is :func:`cdkd.inference.predict`.
"""

from cdkd.inference import predict

__version__ = "0.1.0"

__all__ = ["predict", "__version__"]
