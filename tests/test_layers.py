"""The layering of docs/architecture.md as a contract: `lint-imports` (import-linter, configured in
pyproject.toml) passes on the package, fails on an upward import, and no module imports itself
back through others."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

from cdkd.config import ARCH_NAMES
from cdkd.models import ARCHS

REPO = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the contracts of ``root``/pyproject.toml, on the package ``root``/cdkd."""
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = {**os.environ, "PYTHONPATH": str(root)}  # the package under root, not an installed copy
    return subprocess.run(command + ["--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_engine_module_importing_the_diagnose_command_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "cdkd", tmp_path / "cdkd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    train = tmp_path / "cdkd" / "engine" / "train.py"
    train.write_text(train.read_text() + "\nimport cdkd.diagnose  # upward: engine -> entry point\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "cdkd.engine.train -> cdkd.diagnose" in result.stdout, result.stdout
    assert "cdkd layers (docs/architecture.md) BROKEN" in result.stdout


def test_no_import_circle_in_the_package():
    """No module reaches itself again through the modules it imports (lazy imports included)."""
    graph = grimp.build_graph("cdkd", cache_dir=None)
    circles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if graph.chain_exists(importer=imported, imported=importer):
                circles.append(f"{importer} -> {imported} -> ... -> {importer}")
    assert not circles, "\n".join(circles)


def test_config_knows_the_model_archs():
    """config.py sits below the models, so it lists their names itself; they must be ARCHS' keys."""
    assert sorted(ARCH_NAMES) == sorted(ARCHS)
