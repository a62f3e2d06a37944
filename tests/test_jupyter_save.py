"""JupyterLab's saves leave the tracked notebooks as git stores them (``.jupyter/jupyter_server_config.py``)."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".jupyter" / "jupyter_server_config.py"
TOKEN = "cdkd-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(port: int, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/contents/{path}", data=data, method=method,
                                     headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


@pytest.fixture
def clone(tmp_path):
    """A repository with our .gitattributes, the README's install, and one committed notebook."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for name in (".gitattributes", ".gitignore"):
        shutil.copy(REPO / name, tmp_path / name)
    install = next(l for l in (REPO / "README.md").read_text().splitlines() if l.startswith("nbstripout --install"))
    subprocess.run(["bash", "-c", install.split("#")[0]], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "results").mkdir()
    shutil.copy(REPO / "notebooks" / "07_method.ipynb", tmp_path / "notebooks" / "07_method.ipynb")
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    return tmp_path


@pytest.fixture
def server(clone):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "server", "--config", str(CONFIG),
                             f"--ServerApp.root_dir={clone}", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
                             f"--IdentityProvider.token={TOKEN}", "--ServerApp.open_browser=False", "--ServerApp.allow_root=True"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(120):
            try:
                _call(port, "GET", "")
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"jupyter server exited: {proc.stderr.read()[-2000:]}")
                time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_run_and_saved_notebook_leaves_git_status_clean_and_results_keep_outputs(clone, server):
    model = _call(server, "GET", "notebooks/07_method.ipynb?content=1")
    nb = model["content"]
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "a line\n" * 200}]
    code["execution_count"] = 7
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.7"}
    body = {"type": "notebook", "format": "json", "content": nb}
    _call(server, "PUT", "notebooks/07_method.ipynb", body)  # what JupyterLab's save sends
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout
    assert "a line" not in (clone / "notebooks" / "07_method.ipynb").read_text()

    _call(server, "PUT", "results/07_method_executed.ipynb", body)  # evidence, not filtered: kept as saved
    kept = json.loads((clone / "results" / "07_method_executed.ipynb").read_text())
    assert any(c.get("outputs") for c in kept["cells"] if c["cell_type"] == "code")
