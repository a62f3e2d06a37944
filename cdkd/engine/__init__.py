"""Training and evaluation engine.

Re-exported here: :func:`fit`, :func:`build_training`, :func:`train_one_epoch` (``train.py``),
:func:`predict_dataset` (``evaluate.py``), :func:`setup_run`, :func:`seed_everything` (``run.py``).
The function ``evaluate`` is not re-exported: it would hide the submodule ``cdkd.engine.evaluate``
of the same name; use ``from cdkd.engine.evaluate import evaluate``.
"""

from cdkd.engine.evaluate import predict_dataset
from cdkd.engine.run import seed_everything, setup_run
from cdkd.engine.train import build_training, fit, train_one_epoch

__all__ = ["build_training", "fit", "predict_dataset", "seed_everything", "setup_run", "train_one_epoch"]
