"""Real-browser check of notebook 05 in JupyterLab (not part of the test suite).

Opens ``notebooks/05_visualize.ipynb`` (parameters set to the tiny preset, folders under a scratch
directory) in JupyterLab bound to 127.0.0.1, runs all cells from the browser (headless Chromium driven
by Playwright), checks that the figures are shown as images, moves each explorer control (sample,
joint, resolution, tau) and checks that the explorer's image changes, and saves a screenshot after
each step.

Needs Chromium from the system packages (Debian: ``apt-get install chromium``) and ``pip install
playwright`` (its own browser download is not used)::

    python benchmarks/browser_check.py --out /tmp/cdkd_browser    # screenshots in /tmp/cdkd_browser/shots

Exit status 0 when every check passed; the checks and the screenshot paths are printed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(out: Path) -> Path:
    """A copy of notebook 05 with the tiny preset's parameters injected, under ``out/lab/notebooks``."""
    import papermill

    lab = out / "lab" / "notebooks"
    lab.mkdir(parents=True, exist_ok=True)
    target = lab / "05_visualize.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "05_visualize.ipynb"), str(target), prepare_only=True,
                               parameters={"preset": "tiny", "data_root": str(out / "data"),
                                           "out_dir": str(out / "runs"), "n_train": 30, "n_val": 20,
                                           "num_samples": 4})
    return target


def start_lab(root_dir: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root_dir}", "--ServerApp.open_browser=False", "--allow-root",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise RuntimeError(f"JupyterLab did not start; see {log}")


def explorer_image(page) -> str:
    """The src of the explorer's image (the last widget output's <img>), or ''."""
    images = page.locator(".widget-vbox .jp-OutputArea-output img")
    return images.last.get_attribute("src") if images.count() else ""


def wait_new_image(page, old: str, timeout: float = 60.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        src = explorer_image(page)
        if src and src != old:  # changed: wait until it settles (a key held down sends several values)
            while True:
                page.wait_for_timeout(1500)
                latest = explorer_image(page)
                if latest == src:
                    return src
                src = latest
        page.wait_for_timeout(250)
    return explorer_image(page)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="JupyterLab + headless Chromium check of the explorer in notebook 05")
    p.add_argument("--out", type=Path, default=Path("/tmp/cdkd_browser"), help="scratch folder (data, runs, shots)")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                   help="Chromium executable (default: the system's)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for all cells to run")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    shots = args.out / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    prepare(args.out)
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(args.out / "lab", port, token, args.out / "jupyterlab.log")
    results: list[tuple[str, bool]] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/notebooks/05_visualize.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'], .jp-KernelStatus", timeout=120_000)
            page.wait_for_timeout(3000)
            no_news = page.get_by_role("button", name="No", exact=True)
            if no_news.count():  # JupyterLab's "notified about news?" toast covers part of the output
                no_news.first.click()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            page.wait_for_selector(".widget-vbox .jp-OutputArea-output img", timeout=args.timeout * 1000)
            page.wait_for_timeout(1500)
            figures = page.locator(".jp-OutputArea-output img").count()
            texts = page.locator(".jp-OutputArea-output", has_text="<Figure size").count()
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                  has_text="Error").count()
            results.append((f"{figures} images in the outputs (the figures and the explorer)", figures >= 7))
            results.append((f"{texts} outputs are '<Figure size ...>' text", texts == 0))
            results.append((f"{errors} error outputs", errors == 0))
            explorer = page.locator(".widget-vbox").last
            explorer.scroll_into_view_if_needed()
            explorer.screenshot(path=str(shots / "0_first_view.png"))
            page.screenshot(path=str(shots / "page_after_run_all.png"), full_page=False)
            src = explorer_image(page)
            controls = explorer.locator(".widget-slider .noUi-handle, .widget-slider input[type='range']")
            steps = [
                ("1_sample", lambda: (controls.nth(0).focus(), page.keyboard.press("ArrowRight"))),
                ("2_joint", lambda: explorer.locator("select").first.select_option(label="l_wrist")),
                ("3_resolution", lambda: explorer.get_by_role("button", name="teacher").click()),
                ("4_tau", lambda: (controls.nth(1).focus(), *[page.keyboard.press("ArrowRight") for _ in range(8)])),
            ]
            for name, action in steps:
                action()
                new = wait_new_image(page, src)
                results.append((f"{name}: the explorer's image changed", bool(new) and new != src))
                src = new
                explorer.screenshot(path=str(shots / f"{name}.png"))
            browser.close()
    finally:
        lab.terminate()
        lab.wait(timeout=30)
    for text, ok in results:
        print(f"[{'ok' if ok else 'FAIL'}] {text}")
    print(f"screenshots: {shots}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
