"""Notebook 05's retrieval explorer in a real browser: a smoke run (notebooks 00-03, one
method), a copy of notebook 05 pointed at it, JupyterLab on 127.0.0.1 (own token, port and
config folders) and headless Chromium driven by Selenium: Run All, wait for the kernel, type
a caption into the explorer's box, Enter, and the result images appear. `make test-browser`
(marker `browser`, left out of `make test`); needs chromium, chromedriver and `.[browser]`."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, SMOKE
from dasd_lib.run import run_notebooks

pytestmark = pytest.mark.browser
try:  # the `browser` extra; without it `make test` still collects (and deselects) this file
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

CAPTION_BOX = "input[placeholder^='a caption in any language']"
RESULT_IMAGES = ".widget-gridbox img"
# the notebook's state, read from JupyterLab's models (window.jupyterapp): kernel status,
# code cells not yet run, and the text of any error output
NOTEBOOK_STATE = """
const app = window.jupyterapp;
const w = app && Array.from(app.shell.widgets('main')).find(w => w.context && w.sessionContext
                                                              && w.context.path.endsWith(arguments[0]));
if (!w) return null;
const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
const cells = w.content.widgets.filter(c => c.model.type === 'code');
const errors = cells.flatMap(c => c.model.outputs.toJSON()).filter(o => o.output_type === 'error')
                    .map(o => o.ename + ': ' + o.evalue);
return {status: kernel ? kernel.status : 'none', pending: cells.filter(c =>
        c.model.executionCount === null || c.promptNode.textContent.includes('*')).length, errors};
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def notebook(work):
    """Notebook 05, parameterized for a fresh smoke run, under the project's git-ignored
    reports/ (JupyterLab serves the project checkout); its path relative to the project."""
    overrides = [f"data.root={work / 'dataset'}", f"web.root={work / 'dataset'}",
                 f"run.reports_dir={work / 'reports'}", "run.device=cpu", "run.settings=[finetune]",
                 "run.methods.finetune=[dasd]", "explore.probe_methods=[dasd]"]
    run_dir = run_notebooks(SMOKE, run_id="browser", only="00,01,02,03", overrides=overrides,
                            notebooks_dir=ROOT / "notebooks", command=["pytest", "browser"])
    (ROOT / "reports").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="browser-test-", dir=ROOT / "reports"))
    source = next((ROOT / "notebooks").glob("05*.ipynb"))
    nb = nbformat.read(source, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = f"params_file = {str(run_dir / 'params.yaml')!r}\nrun_dir = {str(run_dir)!r}\noverrides = []"
    nbformat.write(nb, folder / source.name)
    yield (folder / source.name).relative_to(ROOT).as_posix()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(work):
    """JupyterLab on 127.0.0.1 with its own port, token and config, runtime, settings and
    workspace folders: (base url, token, log path)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    dirs = {name: work / "jupyter" / name for name in ("config", "runtime", "data", "settings",
                                                        "workspaces", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True)
    # every cell in the DOM (no windowing), so the explorer in the last cell can be found
    tracker = dirs["settings"] / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_RUNTIME_DIR":
           str(dirs["runtime"]), "JUPYTER_DATA_DIR": str(dirs["data"]), "JUPYTERLAB_SETTINGS_DIR":
           str(dirs["settings"]), "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
           "IPYTHONDIR": str(dirs["ipython"]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    log = work / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}",
             "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0", "--allow-root"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"JupyterLab did not start:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
    yield base, token, log
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def driver(work):
    if webdriver is None:
        pytest.fail("needs selenium: pip install -e '.[browser]' (make test-browser does)")
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("needs Debian's chromium and chromium-driver (make test-browser installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", f"--user-data-dir={work / 'chromium'}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(chromedriver))
    yield browser
    browser.quit()


def test_explorer_shows_images_for_a_typed_caption(driver, lab, notebook, work):
    base, token, log = lab

    def wait(condition, seconds, what):
        try:
            return WebDriverWait(driver, seconds, poll_frequency=0.5).until(lambda d: condition())
        except TimeoutException:
            problem = f"{what} (waited {seconds} s)"
        except AssertionError as err:
            problem = f"{what}: {err}"
        shot = work / "failure.png"
        driver.save_screenshot(str(shot))
        pytest.fail(f"{problem}\nnotebook state: {state()}\nscreenshot: {shot}\nJupyterLab log:\n"
                    f"{log.read_text(errors='replace')[-6000:]}", pytrace=False)

    def state():
        return driver.execute_script(NOTEBOOK_STATE, Path(notebook).name)

    driver.get(f"{base}/lab/tree/{notebook}?token={token}")
    wait(lambda: (state() or {}).get("status") == "idle", 120, "the notebook's kernel never went idle")
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells'); return 1;")

    def finished():
        now = state()
        assert not now["errors"], f"a cell failed: {now['errors']}"
        return now["pending"] == 0 and now["status"] == "idle"

    wait(finished, 300, "Run All did not finish")
    box = wait(lambda: driver.find_element(By.CSS_SELECTOR, CAPTION_BOX), 30,
               "no caption box (ipywidgets Text) in the explorer")
    first = wait(lambda: driver.find_elements(By.CSS_SELECTOR, RESULT_IMAGES), 30,
                 "the explorer showed no images for its first query")
    driver.execute_script("arguments[0].scrollIntoView()", box)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("a small red circle", Keys.ENTER)

    def new_images():
        try:
            first[0].is_displayed()
            return False  # the first query's images are still there
        except StaleElementReferenceException:  # the explorer replaced them
            pass
        images = driver.find_elements(By.CSS_SELECTOR, RESULT_IMAGES)
        return images if images and all(driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in images) else False

    images = wait(new_images, 60, "no result images after typing a caption and Enter")
    assert box.get_attribute("value") == "a small red circle"
    assert len(images) == len(first)  # search_k images, as for the first query
