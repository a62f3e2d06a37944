"""Real-browser check of notebook 05 in JupyterLab, driven by the mouse (not part of the test suite).

What a user does, in headless Chromium driven by Playwright: open a copy of ``notebooks/05_visualize.ipynb``
in JupyterLab (bound to 127.0.0.1, a random token), type the tiny parameters into the parameters
cell, Run All Cells from the menu, check that the figures are shown as images, then move each
explorer control with the mouse (drag the sample slider, pick a joint, click the resolution, drag
the tau slider twice in quick succession) and, after each move, read the controls' readouts from
the page and the values the explorer's figure states (the PNG's ``Description``, the same values
its title shows: :func:`cdkd.viz.png_description`), and check that they are equal. A screenshot of
the explorer is saved after each step: look at them.

Needs Chromium from the system packages (Debian: ``apt-get install chromium``) and ``pip install
playwright`` (its own browser download is not used). Run it from the repository root::

    python benchmarks/browser_check.py --out /tmp/cdkd_browser    # screenshots in /tmp/cdkd_browser/shots

Exit status 0 when every check passed; the checks and the screenshot paths are printed. JupyterLab and
its kernels are stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdkd.viz import png_description  # noqa: E402  (the checkout's package, as the kernel imports it)

STATUS_CLASS = "cdkd-explorer-status"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(out: Path) -> tuple[Path, str]:
    """An untouched copy of notebook 05 under ``out/lab/notebooks`` and the parameters a user types in."""
    import nbformat

    lab = out / "lab" / "notebooks"
    lab.mkdir(parents=True, exist_ok=True)
    target = lab / "05_visualize.ipynb"
    shutil.copyfile(ROOT / "notebooks" / "05_visualize.ipynb", target)
    nb = nbformat.read(target, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {"preset": '"tiny"', "data_root": f'"{out / "data"}"', "out_dir": f'"{out / "runs"}"',
              "n_train": "30", "n_val": "20", "num_samples": "4"}
    text = cell.source
    for name, value in values.items():
        text, count = re.subn(rf"^{name} = [^#\n]*?(\s*#|$)", rf"{name} = {value}\1", text, count=1, flags=re.M)
        if count != 1:
            raise KeyError(f"{target}: the parameters cell has no '{name} = ...' line")
    return target, text


def start_lab(root_dir: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--config", str(ROOT / ".jupyter" / "jupyter_server_config.py"),
           "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root_dir}", "--ServerApp.open_browser=False",
           "--allow-root", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(1)
    stop_lab(proc)
    raise RuntimeError(f"JupyterLab did not start; see {log}")


def stop_lab(proc: subprocess.Popen) -> None:
    """Stop the JupyterLab server this script started (it shuts its kernels down on SIGTERM)."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def edit_parameters(page, text: str) -> None:
    """Click into the parameters cell (the first code cell), select its text and type the new values."""
    editor = page.locator(".jp-CodeCell .jp-InputArea-editor").first
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)
    page.keyboard.press("Escape")


def drag(page, handle, dx: float) -> None:
    """Press the mouse on a slider's handle, move it by ``dx`` pixels, release."""
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=12)
    page.mouse.up()


class Explorer:
    """The explorer widget on the page: its controls, their readouts and its figure's stated values."""

    def __init__(self, page):
        self.page = page
        self.box = page.locator(".widget-vbox", has=page.locator(f".{STATUS_CLASS}")).last
        self.sliders = self.box.locator(".widget-slider")

    def handle(self, i: int):
        return self.sliders.nth(i).locator(".noUi-handle")

    def readouts(self) -> dict[str, str]:
        """What the page shows: the slider readouts, the selected joint, the pressed resolution button."""
        read = lambda i: self.sliders.nth(i).locator(".widget-readout").inner_text().strip()  # noqa: E731
        joint = self.box.locator("select").first.evaluate("el => el.options[el.selectedIndex].text")
        resolution = self.box.locator("button.mod-active").first.inner_text().strip()
        return {"sample": read(0), "joint": joint, "resolution": resolution, "tau": read(1)}

    def status(self) -> str:
        return self.box.locator(f".{STATUS_CLASS}").inner_text().strip()

    def stated(self) -> dict[str, str]:
        """The values the shown figure states (its PNG's Description), or {} without an image."""
        images = self.box.locator(".jp-OutputArea-output img")
        if not images.count():
            return {}
        src = images.last.get_attribute("src") or ""
        if not src.startswith("data:image/png;base64,"):
            return {}
        return png_description(base64.b64decode(src.split(",", 1)[1]))

    def settle(self, timeout: float = 90.0) -> tuple[dict[str, str], dict[str, str], str]:
        """Wait until the figure shown states what the readouts show (or ``timeout``); return both."""
        deadline = time.time() + timeout
        while True:
            readouts, stated, status = self.readouts(), self.stated(), self.status()
            if (stated == readouts and status.startswith("shown:")) or time.time() > deadline:
                return readouts, stated, status
            self.page.wait_for_timeout(300)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="JupyterLab + headless Chromium check of the explorer in notebook 05")
    p.add_argument("--out", type=Path, default=Path("/tmp/cdkd_browser"), help="scratch folder (data, runs, shots)")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                   help="Chromium executable (default: the system's)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for all cells to run")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out = args.out.resolve()
    shots = out / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    _, parameters = prepare(out)
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(out / "lab", port, token, out / "jupyterlab.log")
    results: list[tuple[str, bool]] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/notebooks/05_visualize.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'], .jp-KernelStatus",
                                   timeout=120_000)
            page.wait_for_timeout(3000)
            no_news = page.get_by_role("button", name="No", exact=True)
            if no_news.count():  # JupyterLab's "notified about news?" toast covers part of the output
                no_news.first.click()
            edit_parameters(page, parameters)
            page.screenshot(path=str(shots / "0_parameters.png"))
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            page.wait_for_selector(f".{STATUS_CLASS}", timeout=args.timeout * 1000)
            explorer = Explorer(page)
            explorer.box.scroll_into_view_if_needed()
            readouts, stated, status = explorer.settle()
            figures = page.locator(".jp-OutputArea-output img").count()
            texts = page.locator(".jp-OutputArea-output", has_text="<Figure size").count()
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                  has_text="Error").count()
            results.append((f"{figures} images in the outputs (the figures and the explorer)", figures >= 7))
            results.append((f"{texts} outputs are '<Figure size ...>' text", texts == 0))
            results.append((f"{errors} error outputs", errors == 0))
            results.append((f"first view: readouts {readouts}, figure states {stated}", stated == readouts))
            explorer.box.screenshot(path=str(shots / "1_first_view.png"))
            page.screenshot(path=str(shots / "page_after_run_all.png"))
            steps = [
                ("2_sample", lambda: drag(page, explorer.handle(0), 60)),
                ("3_joint", lambda: (explorer.box.locator("select").first.click(),
                                     explorer.box.locator("select").first.select_option(label="l_wrist"))),
                ("4_resolution", lambda: explorer.box.get_by_role("button", name="teacher").click()),
                ("5_tau", lambda: drag(page, explorer.handle(1), 25)),
                # two drags in quick succession: the second supersedes the first one's render
                ("6_tau_twice", lambda: (drag(page, explorer.handle(1), 20), drag(page, explorer.handle(1), -35))),
            ]
            previous = readouts
            for name, action in steps:
                action()
                readouts, stated, status = explorer.settle()
                moved = readouts != previous
                results.append((f"{name}: readouts {readouts}, figure states {stated} ({status!r})",
                                moved and stated == readouts and status.startswith("shown:")))
                previous = readouts
                explorer.box.screenshot(path=str(shots / f"{name}.png"))
            browser.close()
    finally:
        stop_lab(lab)
    for text, ok in results:
        print(f"[{'ok' if ok else 'FAIL'}] {text}")
    print(f"screenshots: {shots}")
    return 0 if results and all(ok for _, ok in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
