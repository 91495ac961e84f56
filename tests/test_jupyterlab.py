"""Notebook 03 in a real JupyterLab, driven by a real headless browser: Run ▸ Run All Cells, then the
embedding explorer (a plotly ``FigureWidget`` + ipywidgets) renders, and clicking a point fills the
neighbour panel from the kernel.

What it checks that no kernel-only test can: the front-end extensions (jupyterlab-manager, anywidget,
jupyterlab-plotly) load, the widgets' JavaScript draws, and a click travels browser → kernel →
browser (``plotly_click`` → ``Explorer.on_click`` → new thumbnails).

Needs Debian's chromium at ``/usr/bin/chromium`` (``make browser-deps``) and the ``playwright``
Python package; skipped without them (Playwright's own browser download is not used). The kernel
runs in smoke mode (``CLIPTK_SMOKE=1``), on a copy of the notebook in a temporary folder (JupyterLab
autosaves, and the committed notebook must stay output-free) whose ``data`` links to the repo's
``data/``. Saves ``docs/img/explorer.png`` (the explorer after the click) and
``docs/img/jupyterlab_03.png`` (the whole JupyterLab window).

Run alone: ``.venv/bin/python -m pytest -q tests/test_jupyterlab.py -s`` (a few minutes on 2 cores).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "03_embedding_space.ipynb"
IMG = REPO / "docs" / "img"
VIEWPORT = {"width": 1440, "height": 1000}
# bounded waits, generous for a loaded 2-core machine (never asserted on: they only stop a hung run)
SERVER_START_S = 120      # JupyterLab answering /api/status
KERNEL_START_S = 120      # the notebook open and its kernel idle
RUN_ALL_S = 420           # smoke mode still trains a tiny model (once; then cached) and compiles UMAP
CLICK_S = 60              # the explorer drawn; click -> kernel -> thumbnails back
TOTAL_S = 690             # the whole test, server shutdown included (pytest-timeout)

# JupyterLab user settings for the test server: every cell in the DOM (no virtual scrolling) and no
# news / update pop-ups in the screenshots
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}

# the notebook panel's state, read from the JupyterLab application object (--LabApp.expose_app_in_browser)
NOTEBOOK_STATE = """(name) => {
  const app = window.jupyterapp;
  if (!app) return null;
  const panel = Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path.endsWith(name));
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code').map(c => {
    const outs = c.model.outputs.toJSON();
    const err = outs.find(o => o.output_type === 'error');
    return {n: c.model.executionCount, state: c.model.executionState,
            error: err ? `${err.ename}: ${err.evalue}` : null};
  });
  return {kernel: kernel ? kernel.status : null, cells};
}"""

# the explorer: the output area of the cell that builds ct.Explorer, its plot and its panels
EXPLORER_JS = """
const explorerOutput = () => {
  const cell = Array.from(document.querySelectorAll('.jp-CodeCell'))
    .find(c => c.querySelector('.jp-InputArea').textContent.includes('ct.Explorer('));
  return cell && cell.querySelector('.jp-OutputArea');
};
const neighbourBox = (out) => {   // the HBox right after the "<k> nearest neighbours" heading
  const head = Array.from(out.querySelectorAll('.widget-html'))
    .find(h => /^\\s*\\d+ nearest neighbours/.test(h.textContent));
  return head && [head, head.nextElementSibling];
};
"""
EXPLORER_STATE = "() => {" + EXPLORER_JS + """
  const out = explorerOutput();
  if (!out) return null;
  const gd = out.querySelector('.js-plotly-plot');
  const nb = neighbourBox(out);
  return {text: out.textContent,
          plot: !!(gd && gd._fullLayout && gd.calcdata),
          svgPoints: out.querySelectorAll('.scatterlayer .point').length,
          heading: nb ? nb[0].textContent : null,
          neighbourImgs: nb && nb[1] ? nb[1].querySelectorAll('img').length : -1};
}"""

# the point farthest (in screen pixels) from any other: a click target nothing overlaps.
# Returns its client x, y, and its dataset row (customdata[:, 0], as cliptk.viz.trace_rows reads it)
CLICK_TARGET = "() => {" + EXPLORER_JS + """
  const gd = explorerOutput().querySelector('.js-plotly-plot');
  const fl = gd._fullLayout, box = gd.getBoundingClientRect(), s = fl._size;
  const pts = [];
  gd._fullData.forEach((tr, i) => {
    if (tr.visible !== true || !tr.x || tr.name === 'neighbours') return;
    for (let j = 0; j < tr.x.length; j++) {
      const px = fl.xaxis.l2p(tr.x[j]), py = fl.yaxis.l2p(tr.y[j]);
      if (px > 15 && px < s.w - 15 && py > 15 && py < s.h - 15)
        pts.push({x: box.left + s.l + px, y: box.top + s.t + py, row: tr.customdata[j][0], trace: i, index: j});
    }
  });
  let best = null, bestD = -1;
  for (const p of pts) {
    let d = Infinity;
    for (const q of pts) if (q !== p) d = Math.min(d, Math.hypot(p.x - q.x, p.y - q.y));
    if (d > bestD) { bestD = d; best = p; }
  }
  return best && {...best, gap: bestD};
}"""

# after the click: the query card, the neighbour cards (pid and border colour), the status line
# and the ring trace
AFTER_CLICK = "() => {" + EXPLORER_JS + """
  const out = explorerOutput();
  const [head, box] = neighbourBox(out);
  const cards = Array.from(box.children).map(c => ({
    label: c.textContent, border: getComputedStyle(c).borderTopColor,
    img: (() => { const i = c.querySelector('img'); return i && i.complete && i.naturalWidth > 0; })()}));
  const gd = out.querySelector('.js-plotly-plot');
  const ring = gd._fullData[gd._fullData.length - 1];
  const query = Array.from(out.querySelectorAll('.widget-html')).find(h => /^\\s*row \\d+/.test(h.textContent));
  const status = Array.from(out.querySelectorAll('.widget-html')).find(h => /^\\s*Row \\d+:/.test(h.textContent));
  return {cards, ringName: ring.name, ringPoints: ring.x ? ring.x.length : 0,
          query: query ? query.textContent : null, status: status ? status.textContent : null};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status


def _log_tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no server log)"


def _notebook_k() -> int:
    """The notebook's ``K`` constant (neighbours shown on click), read from its source."""
    nb = json.loads((REPO / "notebooks" / NOTEBOOK).read_text(encoding="utf-8"))
    src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    m = re.search(r"^K\s*=\s*(\d+)", src, flags=re.M)
    assert m, f"notebooks/{NOTEBOOK}: no `K = <int>` constant; update this test"
    return int(m.group(1))


def _stop(proc: subprocess.Popen, base: str, token: str) -> None:
    """Shut JupyterLab down: ask politely (it shuts its kernels down), then signal its process group,
    then kill whatever it started that is still alive (kernels run in their own sessions)."""
    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # psutil missing or the server already gone
        children = []
    if proc.poll() is None:
        try:
            req = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(req, timeout=10).close()
            proc.wait(timeout=30)
        except Exception:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    for child in children:
        try:
            child.kill()
        except Exception:
            pass


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    """A JupyterLab server on a free local port, serving a copy of notebook 03 in smoke mode.

    Yields ``(base_url, token, log_path)``; the server and its kernels are shut down afterwards.
    """
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK)
    (root / "data").symlink_to(REPO / "data", target_is_directory=True)  # the notebook's "../data/..."
    home = root / "jupyter"
    for rel, value in SETTINGS.items():
        f = home / "settings" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value), encoding="utf-8")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, CLIPTK_SMOKE="1", JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), PYTHONUNBUFFERED="1")
    env.pop("JUPYTER_TOKEN", None)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root / 'notebooks'}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"] + (["--allow-root"] if os.geteuid() == 0 else [])
    log = root / "jupyterlab.log"
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root / "notebooks", env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, f"JupyterLab exited with {proc.returncode}:\n{_log_tail(log)}"
            try:
                if _get(f"{base}/api/status?token={token}") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base} within {SERVER_START_S} s:\n{_log_tail(log)}")
            time.sleep(1)
        yield base, token, log
    finally:
        _stop(proc, base, token)


def _wait_notebook_done(page, log: Path) -> dict:
    """Poll the notebook until every code cell ran and the kernel is idle; fail fast on an error."""
    deadline = time.monotonic() + RUN_ALL_S
    state = None
    while time.monotonic() < deadline:
        state = page.evaluate(NOTEBOOK_STATE, NOTEBOOK)
        if state:
            errors = [c["error"] for c in state["cells"] if c["error"]]
            assert not errors, f"a cell of {NOTEBOOK} raised: {errors[0]}"
            done = all(c["n"] is not None and c["state"] != "running" for c in state["cells"])
            if done and state["kernel"] == "idle":
                return state
        page.wait_for_timeout(2000)
    pytest.fail(f"{NOTEBOOK} did not finish within {RUN_ALL_S} s; last state {state}\n{_log_tail(log)}")


@pytest.mark.timeout(TOTAL_S)
def test_notebook_03_explorer_in_jupyterlab(browser, lab):
    base, token, log = lab
    k = _notebook_k()
    page = browser.new_page(viewport=VIEWPORT)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", timeout=KERNEL_START_S * 1000)
        # the notebook is open and its kernel has started
        page.wait_for_function(f"(name) => ({NOTEBOOK_STATE})(name)?.kernel === 'idle'", arg=NOTEBOOK,
                               timeout=KERNEL_START_S * 1000, polling=1000)
        n_code = len(page.evaluate(NOTEBOOK_STATE, NOTEBOOK)["cells"])
        assert n_code > 0

        # Run ▸ Run All Cells, as a user would
        page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
        state = _wait_notebook_done(page, log)
        assert len(state["cells"]) == n_code
        assert sorted(c["n"] for c in state["cells"]) == list(range(1, n_code + 1))  # each ran once, in one go

        # the explorer rendered: a plotly plot with one SVG path per point, the k-neighbour heading,
        # an empty neighbour box, and no widget that failed to load
        page.wait_for_function(f"({EXPLORER_STATE})()?.plot === true", timeout=CLICK_S * 1000, polling=500)
        page.wait_for_timeout(500)
        ex = page.evaluate(EXPLORER_STATE)
        body = page.locator("body").inner_text()
        assert "Error displaying widget" not in body, "a widget failed to render"
        assert "Loading widget" not in ex["text"]
        assert ex["svgPoints"] > k + 1, ex  # the smoke test set: 180 points, SVG (< 1000 points)
        assert ex["heading"] and ex["heading"].strip().startswith(f"{k} nearest neighbours")
        assert ex["neighbourImgs"] == 0  # nothing clicked yet

        # click the loneliest point: plotly_click -> Explorer.on_click in the kernel -> thumbnails back.
        # The plot must be on screen, and plotly must be hovering that point (its click reports the hover)
        page.evaluate("() => {" + EXPLORER_JS + " explorerOutput().querySelector('.js-plotly-plot')"
                      ".scrollIntoView({block: 'center'}); }")
        page.wait_for_timeout(500)
        target = page.evaluate(CLICK_TARGET)
        assert target and target["gap"] > 4, target
        assert 0 < target["x"] < VIEWPORT["width"] and 0 < target["y"] < VIEWPORT["height"], target
        page.mouse.move(target["x"] + 20, target["y"] + 20)
        page.mouse.move(target["x"], target["y"], steps=4)
        page.wait_for_function(
            "([i, j]) => {" + EXPLORER_JS + " const gd = explorerOutput().querySelector('.js-plotly-plot');"
            " return (gd._hoverdata || []).some(p => p.curveNumber === i && p.pointNumber === j); }",
            arg=[target["trace"], target["index"]], timeout=30_000, polling=200)
        page.mouse.click(target["x"], target["y"])
        try:
            page.wait_for_function(
                f"(() => {{ const s = ({EXPLORER_STATE})(); return s && s.neighbourImgs === {k}; }})()",
                timeout=CLICK_S * 1000, polling=500)
        except Exception as e:  # the kernel's side of a failed callback is in the server log
            pytest.fail(f"no {k} neighbour thumbnails {CLICK_S} s after clicking row {target['row']}: {e}\n"
                        f"{page.evaluate(EXPLORER_STATE)}\n{_log_tail(log)}")
        page.wait_for_function(
            "(() => {" + EXPLORER_JS + "const [, box] = neighbourBox(explorerOutput());"
            " return Array.from(box.querySelectorAll('img')).every(i => i.complete && i.naturalWidth > 0); })()",
            timeout=30_000, polling=500)
        after = page.evaluate(AFTER_CLICK)

        # the kernel answered for the point under the mouse: its row, k cards, the ring of k + 1 points
        row = int(target["row"])
        assert after["query"] and re.match(rf"\s*row {row}(?!\d)", after["query"]), (row, after["query"])
        qpid = int(re.search(r"pid (-?\d+)", after["query"]).group(1))
        assert len(after["cards"]) == k and all(c["img"] for c in after["cards"])
        assert after["ringName"] == "neighbours" and after["ringPoints"] == k + 1
        # green border exactly when the card's pid is the clicked image's pid; the status line agrees
        green, red = "rgb(26, 152, 80)", "rgb(215, 48, 39)"  # cliptk.widgets.explorer's _SAME, _OTHER
        same = 0
        for c in after["cards"]:
            pid = int(re.search(r"\(pid (-?\d+)\)", c["label"]).group(1))
            assert c["border"] == (green if pid == qpid else red), c
            same += pid == qpid
        assert after["status"] and f"{same} of {k} nearest neighbours" in after["status"], after["status"]

        # screenshots for the README
        IMG.mkdir(parents=True, exist_ok=True)
        out = page.locator(".jp-CodeCell", has_text="ct.Explorer(").locator(".jp-OutputArea")
        out.scroll_into_view_if_needed()
        page.mouse.move(5, VIEWPORT["height"] - 5)  # no hover label over the explorer
        page.wait_for_timeout(500)
        out.screenshot(path=str(IMG / "explorer.png"))
        page.locator(".jp-CodeCell", has_text="ct.Explorer(").scroll_into_view_if_needed()
        page.screenshot(path=str(IMG / "jupyterlab_03.png"), full_page=True)
        if page_errors:
            print("page errors (not failing the test):", *page_errors, sep="\n  ")
        assert "Error displaying widget" not in page.locator("body").inner_text()
    finally:
        page.close()
