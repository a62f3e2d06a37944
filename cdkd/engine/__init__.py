"""Training and evaluation engine (``fit``, ``train_one_epoch``, ``evaluate``, ``predict``).

Imported lazily so that ``import cdkd.engine`` stays cheap.
"""

_EXPORTS = {
    "fit": "cdkd.engine.train",
    "build_training": "cdkd.engine.train",
    "train_one_epoch": "cdkd.engine.train",
    "evaluate": "cdkd.engine.evaluate",
    "predict": "cdkd.engine.evaluate",
    "setup_run": "cdkd.engine.run",
    "seed_everything": "cdkd.engine.run",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
