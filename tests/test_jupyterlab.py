"""Notebook 03 in a real JupyterLab, driven by a real headless browser: Run ▸ Run All Cells, then the
embedding explorer (a plotly ``FigureWidget`` + ipywidgets) renders, and clicking a point fills the
neighbour panel from the kernel. In the same session, a small notebook of the four teaching views
(issue 17: training timelapse, InfoNCE batch inspector, before/after per query, saliency sanity
checks) runs, each view appears, and each reacts to one interaction: play the timelapse, drag the
temperature slider, click a query in the aligned projection.

What it checks that no kernel-only test can: the front-end extensions (jupyterlab-manager, anywidget,
jupyterlab-plotly) load, the widgets' JavaScript draws, and a click travels browser → kernel →
browser (``plotly_click`` → ``Explorer.on_click`` → new thumbnails).

Needs Debian's chromium at ``/usr/bin/chromium`` (``make browser-deps``) and the ``playwright``
Python package; skipped without them (Playwright's own browser download is not used). The kernel
runs in smoke mode (``CLIPTK_SMOKE=1``), on a copy of the notebook in a temporary folder (JupyterLab
autosaves, and the committed notebook must stay output-free) whose ``data`` links to the repo's
``data/``. Tests never rewrite tracked files: only with ``CLIPTK_REFRESH_SCREENSHOTS=1`` do they save
the README's screenshots, ``docs/img/explorer.png`` (the explorer after the click),
``docs/img/jupyterlab_03.png`` (the whole JupyterLab window), ``docs/img/timelapse.png``,
``docs/img/batch_inspector.png``, ``docs/img/before_after.png`` and ``docs/img/saliency_sanity.png``.

Run alone: ``.venv/bin/python -m pytest -q tests/test_jupyterlab.py -s`` (a few minutes on 2 cores);
``CLIPTK_REFRESH_SCREENSHOTS=1`` in front of it refreshes the screenshots.
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
TEACHING = "teaching_views.ipynb"   # written by the lab fixture (below), not a tracked notebook
IMG = REPO / "docs" / "img"
#: the README's screenshots are written only on request
REFRESH = os.environ.get("CLIPTK_REFRESH_SCREENSHOTS", "").strip().lower() in ("1", "true", "yes", "on")
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
# of screen points {x, y, row, ...}: the one farthest from any other (rows equal to `avoid` skipped),
# with that distance as `gap`: a click target nothing overlaps
LONELIEST_JS = """
  const loneliest = (pts, avoid) => {
    let best = null, bestD = -1;
    for (const p of pts) {
      if (avoid !== undefined && p.row === avoid) continue;
      let d = Infinity;
      for (const q of pts) if (q !== p) d = Math.min(d, Math.hypot(p.x - q.x, p.y - q.y));
      if (d > bestD) { bestD = d; best = p; }
    }
    return best && {...best, gap: bestD};
  };
"""
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
CLICK_TARGET = "() => {" + EXPLORER_JS + LONELIEST_JS + """
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
  return loneliest(pts);
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


# the teaching views' notebook: the smoke players and the bundled tiny CLIP, a short real fit for the
# timelapse and the "after" model, nothing cached and nothing tracked written
TEACHING_CELLS = [
    """import cliptk as ct
from cliptk.explain import sanity
from cliptk.viz.batch_inspector import random_pair_batch
ds = ct.players()                      # CLIPTK_SMOKE=1: the smoke world
test, query, gallery, train = (ds.subset(*s) for s in (("query", "gallery"), ("query",), ("gallery",), ("train",)))
zero_shot = ct.load_model(image_only=True)""",
    """tuned = ct.load_model(image_only=True)
lapse = ct.train.Timelapse(test, max_images=120)
cfg = ct.TrainConfig(batch_size=16, epochs=3, per_epoch="identities", lr=2e-4, eval_before=False, progress=False)
ct.fit(tuned, ds, cfg, callbacks=[lapse])
lapse.figure(title="timelapse")""",
    """seed = next(s for s in range(100) if len(set(train.pids[random_pair_batch(train.pids, 12, s)[:12]])) < 12)
(random_batch, unique_batch), _ = ct.viz.compare_batches(zero_shot, ds, batch_size=12, seed=seed)
ct.viz.batch_inspector([random_batch, unique_batch])""",
    """comparison = ct.diagnose.compare_models(zero_shot, tuned, query, gallery, names=("zero-shot", "fine-tuned"))
comparison.widget(k=4)""",
    """saliency = sanity.compare_saliency(tuned, 0, 0, dataset=(query, gallery), steps=3, n_random=1)
saliency.figure()""",
    """import numpy as np
coords = np.random.default_rng(1).uniform(-1, 1, size=(len(test), 2)).astype(np.float32)   # spread: no overlaps
print(f"webgl rows={len(test)}")
webgl = ct.Explorer(ct.embed(zero_shot, test), test, projection=coords, k=4, backend="webgl")
webgl""",
]

# an output area by a snippet of its cell's source, and a plotly div in it by its title's start (a string) or by
# its number of traces (a number)
OUTPUT_JS = """
const outputOf = (snippet) => {
  const cell = Array.from(document.querySelectorAll('.jp-CodeCell'))
    .find(c => c.querySelector('.jp-InputArea').textContent.includes(snippet));
  return cell && cell.querySelector('.jp-OutputArea');
};
const plotIn = (out, key) => out && Array.from(out.querySelectorAll('.js-plotly-plot'))
  .find(gd => gd._fullLayout && gd.calcdata &&
        (typeof key === 'number' ? gd.data.length === key : (gd._fullLayout.title.text || '').startsWith(key)));
"""
VIEW_STATE = "([snippet, prefix]) => {" + OUTPUT_JS + """
  const gd = plotIn(outputOf(snippet), prefix);
  return gd ? {title: gd._fullLayout.title.text, slider: gd._fullLayout.sliders && gd._fullLayout.sliders.length ?
               gd._fullLayout.sliders[0].active : null, x0: gd._fullData[0].x ? Array.from(gd._fullData[0].x).slice(0, 5) : null}
            : null;
}"""
PLOT_TITLES = "(snippet) => {" + OUTPUT_JS + """
  const out = outputOf(snippet);
  return out ? Array.from(out.querySelectorAll('.js-plotly-plot')).map(gd => [!!gd.calcdata,
    gd._fullLayout ? gd._fullLayout.title.text : null]) : null;
}"""
# the centre of an SVG element of a plot, e.g. the timelapse's first button (play)
CENTRE_OF = "([snippet, prefix, selector]) => {" + OUTPUT_JS + """
  const el = plotIn(outputOf(snippet), prefix).querySelector(selector);
  el.scrollIntoView({block: 'center'});
  const b = el.getBoundingClientRect();
  return [b.left + b.width / 2, b.top + b.height / 2];
}"""
# the loneliest point of trace `trace` (screen pixels) whose customdata[1] is not `avoid`
POINT_OF = "([snippet, prefix, trace, avoid]) => {" + OUTPUT_JS + LONELIEST_JS + """
  const gd = plotIn(outputOf(snippet), prefix);
  const fl = gd._fullLayout, tr = gd._fullData[trace], box = gd.getBoundingClientRect();
  const xa = fl[tr.xaxis.replace('x', 'xaxis')], ya = fl[tr.yaxis.replace('y', 'yaxis')];
  const pts = [];
  for (let j = 0; j < tr.x.length; j++)
    pts.push({x: box.left + xa._offset + xa.l2p(tr.x[j]), y: box.top + ya._offset + ya.l2p(tr.y[j]), j,
              row: tr.customdata[j][1]});
  return loneliest(pts, avoid);
}"""
HOVERING = "([snippet, prefix, trace, j]) => {" + OUTPUT_JS + """
  const gd = plotIn(outputOf(snippet), prefix);
  return (gd._hoverdata || []).some(p => p.curveNumber === trace && p.pointNumber === j);
}"""
WIDGET_TEXT = "(snippet) => {" + OUTPUT_JS + """
  const out = outputOf(snippet);
  return out ? Array.from(out.querySelectorAll('.widget-html')).map(h => h.textContent).join(' | ') : null;
}"""


def _webgl_explorer_click(page) -> None:
    """The teaching notebook's last cell: ``ct.Explorer(..., backend="webgl")`` on spread-out coordinates."""
    import io

    import numpy as np
    from PIL import Image

    snippet = 'backend="webgl"'
    cell = page.locator(".jp-CodeCell", has_text=snippet)
    canvas = cell.locator(".jp-OutputArea canvas").first
    canvas.wait_for(timeout=CLICK_S * 1000)
    canvas.scroll_into_view_if_needed()
    n = int(re.search(r"webgl rows=(\d+)", cell.locator(".jp-OutputArea").inner_text()).group(1))
    coords = np.random.default_rng(1).uniform(-1, 1, size=(n, 2)).astype(np.float32)   # as the cell draws them
    for _ in range(CLICK_S * 3):   # painted: points (dark pixels) on the white canvas; a screenshot every ~0.3 s
        px = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"))
        if (px < 200).sum() > 10 * n:
            break
        page.wait_for_timeout(300)
    else:
        pytest.fail("jupyter-scatter's canvas stayed blank")
    box = canvas.bounding_box()
    # regl-scatterplot's default view: x, y scaled min-max to [-1, 1], the square [-1, 1]^2 fills the canvas height
    ndc = 2 * (coords - coords.min(0)) / (coords.max(0) - coords.min(0)) - 1
    half = min(box["width"], box["height"]) / 2
    xy = np.c_[box["x"] + box["width"] / 2 + ndc[:, 0] * half, box["y"] + box["height"] / 2 - ndc[:, 1] * half]
    gap = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(n) * 1e9
    j = int(gap.min(1).argmax())   # the loneliest point: the click cannot land on another
    assert gap[j].min() > 6, gap[j].min()
    x, y = (float(v) for v in xy[j])
    page.mouse.move(x + 15, y + 15)
    page.mouse.move(x, y, steps=3)
    page.mouse.click(x, y)
    page.wait_for_function(f"([s, j]) => ({WIDGET_TEXT})(s)?.includes(`row ${{j}}pid`)", arg=[snippet, j],
                           timeout=CLICK_S * 1000, polling=300)
    text = page.evaluate(WIDGET_TEXT, snippet)
    assert re.search(rf"Row {j}: \d of 4 nearest neighbours share its identity", text), text
    _shoot(page, snippet, "explorer_webgl.png")


def _write_notebook(path: Path, cells: list[str]) -> None:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                     "source": src} for src in cells],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")


def _shoot(page, snippet: str, name: str) -> None:
    """The output area of the cell holding ``snippet`` as ``docs/img/<name>`` (only on request)."""
    if not REFRESH:
        return
    IMG.mkdir(parents=True, exist_ok=True)
    out = page.locator(".jp-CodeCell", has_text=snippet).locator(".jp-OutputArea")
    height = out.bounding_box()["height"]
    if height > VIEWPORT["height"] - 150:   # JupyterLab scrolls inside its panel: the whole output must be on screen
        page.set_viewport_size({"width": VIEWPORT["width"], "height": int(height) + 300})
        page.wait_for_timeout(1500)
    out.scroll_into_view_if_needed()
    page.mouse.move(5, 5)  # no hover label in the picture
    page.wait_for_timeout(800)
    out.screenshot(path=str(IMG / name))
    page.set_viewport_size(VIEWPORT)
    page.wait_for_timeout(500)


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
    _write_notebook(root / "notebooks" / TEACHING, TEACHING_CELLS)
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


def _wait_notebook_done(page, log: Path, name: str = NOTEBOOK) -> dict:
    """Poll the notebook until every code cell ran and the kernel is idle; fail fast on an error."""
    deadline = time.monotonic() + RUN_ALL_S
    state = None
    while time.monotonic() < deadline:
        state = page.evaluate(NOTEBOOK_STATE, name)
        if state:
            errors = [c["error"] for c in state["cells"] if c["error"]]
            assert not errors, f"a cell of {name} raised: {errors[0]}"
            done = all(c["n"] is not None and c["state"] != "running" for c in state["cells"])
            if done and state["kernel"] == "idle":
                return state
        page.wait_for_timeout(2000)
    pytest.fail(f"{name} did not finish within {RUN_ALL_S} s; last state {state}\n{_log_tail(log)}")


def _open_and_run_all(page, base: str, token: str, name: str) -> int:
    """Open notebook ``name``, wait for its kernel, then Run ▸ Run All Cells as a user would;
    returns the number of code cells."""
    page.goto(f"{base}/lab/tree/{name}?token={token}", timeout=KERNEL_START_S * 1000)
    page.wait_for_function(f"(name) => ({NOTEBOOK_STATE})(name)?.kernel === 'idle'", arg=name,
                           timeout=KERNEL_START_S * 1000, polling=1000)
    n_code = len(page.evaluate(NOTEBOOK_STATE, name)["cells"])
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    return n_code


@pytest.mark.timeout(TOTAL_S)
def test_notebook_03_explorer_in_jupyterlab(browser, lab):
    base, token, log = lab
    k = _notebook_k()
    page = browser.new_page(viewport=VIEWPORT)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        n_code = _open_and_run_all(page, base, token, NOTEBOOK)
        assert n_code > 0
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

        # screenshots for the README, on request
        if REFRESH:
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


def test_teaching_views_in_jupyterlab(browser, lab):
    """Issue 17's four views in one notebook: each appears and reacts to one interaction."""
    base, token, log = lab
    page = browser.new_page(viewport=VIEWPORT)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        _open_and_run_all(page, base, token, TEACHING)
        state = _wait_notebook_done(page, log, TEACHING)
        assert len(state["cells"]) == len(TEACHING_CELLS)
        body = page.locator("body").inner_text()
        assert "Error displaying widget" not in body, "a widget failed to render"

        # 1. the timelapse: drawn on its first frame; "play" runs it to the last frame (slider and points follow)
        view = ["lapse.figure(", "timelapse: "]
        page.wait_for_function(f"(a) => ({VIEW_STATE})(a) !== null", arg=view, timeout=CLICK_S * 1000, polling=500)
        first = page.evaluate(VIEW_STATE, view)
        assert "before training" in first["title"] and first["slider"] == 0, first
        x, y = page.evaluate(CENTRE_OF, [*view, ".updatemenu-button"])
        page.mouse.click(x, y)
        page.wait_for_function(f"(a) => ({VIEW_STATE})(a).slider === 3", arg=view, timeout=CLICK_S * 1000,
                               polling=300)   # before training + 3 epochs
        page.wait_for_timeout(1500)           # the last transition settles
        last = page.evaluate(VIEW_STATE, view)
        assert last["x0"] != first["x0"], "the points did not move"
        assert "epoch 3" in last["title"], last   # the title follows the frames
        _shoot(page, "lapse.figure(", "timelapse.png")

        # 2. the batch inspector: dragging the temperature slider recomputes loss and softmax in the kernel
        snippet = "ct.viz.batch_inspector("
        page.wait_for_function(f"(s) => ({WIDGET_TEXT})(s)?.includes('unique-identity batch')", arg=snippet,
                               timeout=CLICK_S * 1000, polling=500)
        before = page.evaluate(WIDGET_TEXT, snippet)
        handle = page.locator(".jp-CodeCell", has_text=snippet).locator(".widget-slider .noUi-handle").first
        handle.scroll_into_view_if_needed()
        hb = handle.bounding_box()
        page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
        page.mouse.down()
        page.mouse.move(hb["x"] + hb["width"] / 2 + 30, hb["y"] + hb["height"] / 2, steps=4)   # a little warmer
        page.mouse.up()
        page.wait_for_function(f"([s, old]) => {{ const t = ({WIDGET_TEXT})(s); return t && t !== old; }}",
                               arg=[snippet, before], timeout=CLICK_S * 1000, polling=300)
        t_before = float(re.search(r"T=([0-9.]+)", before).group(1))
        t_after = float(re.search(r"T=([0-9.]+)", page.evaluate(WIDGET_TEXT, snippet)).group(1))
        assert t_after > t_before, (before, t_after)   # dragged right: a higher temperature
        _shoot(page, snippet, "batch_inspector.png")

        # 3. before/after per query: clicking a query in the aligned projection shows its top-k under both models
        snippet = "comparison.widget("
        proj = [snippet, 8]   # the projection: 4 traces a panel
        try:
            page.wait_for_function(f"(a) => ({VIEW_STATE})(a) !== null && ({WIDGET_TEXT})(a[0]).includes('(star)')",
                                   arg=proj, timeout=CLICK_S * 1000, polling=500)
        except Exception as e:
            pytest.fail(f"the before/after widget did not appear: {e}\n{page.evaluate(PLOT_TITLES, snippet)}")
        shown = int(re.search(r"(?:^| \| )query (\d+) \(pid", page.evaluate(WIDGET_TEXT, snippet)).group(1))
        page.evaluate(CENTRE_OF, [*proj, ".main-svg"])   # scrolls the projection into view
        page.wait_for_timeout(500)
        target = page.evaluate(POINT_OF, [*proj, 1, shown])   # trace 1: the queries, "before" panel
        assert target and target["gap"] > 4, target
        page.mouse.move(target["x"] + 20, target["y"] + 20)
        page.mouse.move(target["x"], target["y"], steps=4)
        page.wait_for_function(f"(a) => ({HOVERING})(a)", arg=[*proj, 1, target["j"]], timeout=30_000, polling=200)
        page.mouse.click(target["x"], target["y"])
        q = int(target["row"])
        page.wait_for_function(f"([s, q]) => ({WIDGET_TEXT})(s).includes(`query ${{q}} (pid`)",
                               arg=[snippet, q], timeout=CLICK_S * 1000, polling=300)
        assert f"query {q} (star)" in page.evaluate(WIDGET_TEXT, snippet)   # the projection's caption follows
        _shoot(page, snippet, "before_after.png")

        # 4. the saliency sanity checks: three maps of one pair with their AUCs
        view = ["saliency.figure()", "cos(A, B)"]
        page.wait_for_function(f"(a) => ({VIEW_STATE})(a) !== null", arg=view, timeout=CLICK_S * 1000, polling=500)
        _shoot(page, "saliency.figure()", "saliency_sanity.png")

        # 5. the explorer's WebGL plot (jupyter-scatter, used above LARGE_FIGURE points): it paints, and a click on a
        # point reaches the kernel and fills the neighbour panel with that row's neighbours
        _webgl_explorer_click(page)
        if page_errors:
            print("page errors (not failing the test):", *page_errors, sep="\n  ")
        assert "Error displaying widget" not in page.locator("body").inner_text()
    finally:
        page.close()
