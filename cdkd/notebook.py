"""What the notebooks need around the package: the repository root, default folders, progress lines.

JupyterLab starts a kernel in ``notebooks/``, papermill and the CLI in whatever folder they were
called from. So that the same parameters give the same data and run folders everywhere, relative
paths in a notebook's parameters are resolved against the repository root (the folder holding this
project's ``pyproject.toml`` and ``notebooks/``), never against the kernel's working directory.

Folders (all relative to the root unless given absolute):

* ``data_root`` left empty means the synthetic set of the notebook's size, one folder per size
  (``data/synth-n{train}-{val}-s{seed}``, git-ignored; :func:`cdkd.pipeline.ensure_data`);
* ``out_dir`` left empty means ``runs/<preset>`` (git-ignored); ``python -m cdkd reproduce`` passes
  ``results/<preset>`` explicitly, so nothing a user runs by hand writes into the committed ``results/``.

Progress is the engine's setting ``train.progress`` (:mod:`cdkd.engine.progress`): the notebooks pass
their ``progress`` parameter to the pipeline as ``extra=(f"train.progress={progress}",)``; ``bar`` in
JupyterLab, ``lines`` for papermill's ``--log-output`` (a headless run never saves a widget's state).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT_ENV = "CDKD_ROOT"  # set it to force the root (e.g. a checkout elsewhere)


def _is_root(folder: Path) -> bool:
    """True for this project's checkout: ``pyproject.toml`` naming cdkd, beside ``notebooks/``."""
    project = folder / "pyproject.toml"
    if not (project.is_file() and (folder / "notebooks").is_dir()):
        return False
    return 'name = "cdkd"' in project.read_text(errors="ignore")


def repo_root(start: str | Path | None = None) -> Path:
    """The repository root: ``$CDKD_ROOT``, else the first checkout at or above ``start`` (default:
    the working directory), else the checkout this package was imported from, else ``start``.

    Args:
        start: folder to search upwards from.

    Returns:
        Absolute path of the root.
    """
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if _is_root(folder):
            return folder
    package_parent = Path(__file__).resolve().parents[1]
    if _is_root(package_parent):
        return package_parent
    return here


def resolve(path: str | Path, root: str | Path | None = None) -> Path | str:
    """``path`` made absolute: kept when absolute, else taken relative to the repository root. An
    empty ``path`` stays ``""`` (a default chosen later, e.g. :func:`cdkd.pipeline.ensure_data`'s)."""
    if not str(path).strip():
        return ""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(root) if root else repo_root()) / p


def default_out_dir(out_dir: str | Path, preset: str, root: str | Path | None = None) -> Path:
    """A notebook's output folder: ``out_dir`` when given, else ``runs/<preset>`` (git-ignored)."""
    return resolve(out_dir if str(out_dir).strip() else Path("runs") / preset, root)


def folders(preset: str, data_root: str | Path, out_dir: str | Path) -> tuple[Path | str, Path]:
    """The (data_root, out_dir) a notebook works in, absolute; an empty ``data_root`` stays empty
    (:func:`cdkd.pipeline.ensure_data` chooses it by size); see the module docstring."""
    return resolve(data_root), default_out_dir(out_dir, preset)


def shown(value: Any, root: str | Path | None = None) -> Any:
    """``value`` with paths under the repository root written relative to it (for cell outputs:
    an executed notebook should not carry the absolute paths of the machine it ran on).

    Paths and strings become root-relative strings; dicts, lists and tuples are converted item by
    item; anything else is returned unchanged.
    """
    base = Path(root) if root else repo_root()
    if isinstance(value, dict):
        return {k: shown(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(shown(v, base) for v in value)
    if isinstance(value, Path) or (isinstance(value, str) and value.startswith(str(base))):
        p = Path(value)
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            return str(p)
    return value
