"""A real browser runs notebook 02 in JupyterLab: the ladder widget and the throughput plot render.

JupyterLab starts headless on 127.0.0.1 (random port, a known token) in a temporary copy of the
notebooks; Debian's Chromium, driven by Playwright (its bundled driver; no browser download), opens
02-handshake.ipynb, runs all cells from the Run menu and waits for the widgets.  Screenshots go to
test-artifacts/browser/.  The lab runs in simulated mode (as on Binder), with the course's JupyterLab
settings exactly as the README's launch command and binder/start give them (JUPYTER_CONFIG_PATH=
binder/jupyter): no "Would you like to get notified about official Jupyter news?" pop-up may appear.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import IN_CI, require_tool

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    pytest.importorskip("jupyterlab")
    work = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", work)
    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    port, token = _free_port(), "vpnedu-test-token"
    env = {**os.environ, "VPNEDU_MODE": "sim", "JUPYTER_PATH": str(tmp_path / "jupyter"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_PATH": str(ROOT / "binder" / "jupyter"), "HOME": str(tmp_path)}
    log = open(tmp_path / "jupyterlab.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
                             f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}",
                             "--ServerApp.port_retries=0", "--allow-root"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > end:
                    raise AssertionError("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.3)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_notebook_02_renders_ladder_and_plot_in_chromium(jupyterlab):
    chromium = require_tool("chromium")
    try:
        from playwright import sync_api
    except ImportError:
        msg = "the playwright Python package is missing (the test command installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    url, token = jupyterlab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/02-handshake.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            # The kernel must be up before "Run All" (the status bar says Idle).
            page.wait_for_function("() => (document.querySelector('#jp-main-statusbar') || {innerText: ''})"
                                   ".innerText.includes('Idle')", timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "02-opened.png"))
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
            ladder = page.wait_for_selector(".vpnedu-ladder .vpnedu-ladder-status:has-text('HANDSHAKE COMPLETE')",
                                            timeout=90_000)
            ladder.scroll_into_view_if_needed()
            page.locator(".vpnedu-ladder").first.screenshot(path=str(ARTIFACTS / "02-ladder.png"))
            # The whole diagram fits its output area (nothing cut off on the right).
            svg = page.locator(".vpnedu-ladder svg").first.bounding_box()
            area = page.locator(".jp-OutputArea-output", has=page.locator(".vpnedu-ladder")).first.bounding_box()
            assert svg["x"] + svg["width"] <= area["x"] + area["width"] + 1, (svg, area)
            # The plot: an <img> of the Image widget that has loaded a picture.
            page.wait_for_function(
                "() => [...document.querySelectorAll('img.vpnedu-throughput')]"
                ".some(i => i.complete && i.naturalWidth > 600)", timeout=90_000)
            # The caption under the plot gets its numbers once the traffic cell has drawn real samples.
            page.wait_for_selector(".vpnedu-throughput-caption:has-text('Mbit/s down')", timeout=90_000)
            page.wait_for_function("() => document.querySelector('#jp-main-statusbar').innerText.includes('Idle')",
                                   timeout=60_000)
            # The course's settings turned JupyterLab's news pop-up off: by now (the whole notebook
            # ran) it would have covered the page.
            assert page.get_by_text("notified about official Jupyter news").count() == 0
            page.locator("img.vpnedu-throughput").first.scroll_into_view_if_needed()
            page.locator("img.vpnedu-throughput").first.screenshot(path=str(ARTIFACTS / "02-plot.png"))
            page.screenshot(path=str(ARTIFACTS / "02-after-run-all.png"), full_page=True)
            messages = page.locator(".vpnedu-ladder .vpnedu-ladder-message")
            assert messages.count() == 2
            text = page.locator(".vpnedu-ladder").first.text_content()
            for field in ("encrypted_static", "encrypted_timestamp", "ephemeral", "mac1", "receiver_index"):
                assert field in text
            # The field dump under the ladder is a table that fits its output area (it wraps inside
            # its cells instead of running off to the right), and writes indices as the ladder does.
            table = page.locator("table.vpnedu-fields").first
            table.scroll_into_view_if_needed()
            table.screenshot(path=str(ARTIFACTS / "02-fields.png"))
            box = table.bounding_box()
            area = page.locator(".jp-OutputArea-output", has=table).first.bounding_box()
            assert box["x"] + box["width"] <= area["x"] + area["width"] + 1, (box, area)
            index = page.locator("table.vpnedu-fields tr", has_text="sender_index").first \
                .locator(".vpnedu-field-value").text_content()
            assert re.fullmatch(r"0x[0-9a-f]{8}", index) and index in text, index
            assert page.locator(".jp-OutputArea-output", has_text="Traceback").count() == 0
            assert page.locator(".jp-OutputArea-output", has_text="lab down").count() == 1  # the last cell ran
        finally:
            browser.close()
    for name in ("02-ladder.png", "02-plot.png", "02-fields.png", "02-after-run-all.png"):
        assert (ARTIFACTS / name).stat().st_size > 5000
