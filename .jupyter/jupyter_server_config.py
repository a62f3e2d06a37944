"""JupyterLab for this repository: save the tracked notebooks as git stores them.

Start JupyterLab from the repository root with this file::

    jupyter lab --config .jupyter/jupyter_server_config.py

A notebook that git reads through the nbstripout filter (``notebooks/*.ipynb``, see
``.gitattributes``) is written to disk through the same ``nbstripout`` command, so that opening,
running and saving it leaves ``git status`` clean: git compares file sizes before it runs a clean
filter, so a saved notebook carrying outputs shows as modified although ``git diff`` is empty.
The outputs stay on screen while the notebook is open; every figure is also saved as a PNG under
``out_dir/figures/``. Notebooks git does not filter (the executed copies under ``results/``, your own)
are saved as they are.
"""

import json
import subprocess
import sys
from pathlib import Path

# what the README's install configures git to store: nbstripout with the kernel's language_info removed
STRIP = [sys.executable, "-m", "nbstripout", "-t", "--extra-keys", "metadata.language_info"]


def _filtered_by_nbstripout(path: Path) -> bool:
    """Whether git reads ``path`` through the nbstripout filter (False outside a repository)."""
    try:
        out = subprocess.run(["git", "check-attr", "filter", "--", path.name], cwd=path.parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip().endswith(": filter: nbstripout")


def save_as_git_stores(model, path, contents_manager, **kwargs):
    """``FileContentsManager.pre_save_hook``: strip a filtered notebook's model before it is written."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    target = Path(contents_manager.root_dir, path.lstrip("/")).resolve()
    if not _filtered_by_nbstripout(target):
        return
    stripped = subprocess.run(STRIP, input=json.dumps(model["content"]), capture_output=True, text=True)
    if stripped.returncode != 0:  # never lose the user's notebook: save it unstripped and say why
        contents_manager.log.warning("nbstripout failed on %s, saved with outputs: %s", path, stripped.stderr.strip())
        return
    model["content"] = json.loads(stripped.stdout)


c = get_config()  # noqa: F821 - provided by Jupyter when it loads this file
c.FileContentsManager.pre_save_hook = save_as_git_stores
