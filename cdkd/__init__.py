"""cdkd: Cross-Domain Knowledge Distillation for low-resolution human pose estimation.

``cdkd.predict_image(image, boxes, checkpoint)`` is :func:`cdkd.inference.predict_image`.
"""

from cdkd.inference import predict_image

__version__ = "0.1.0"

__all__ = ["predict_image", "__version__"]
