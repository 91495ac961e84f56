"""Benchmark :class:`cliptk.Explorer` in JupyterLab at real dataset sizes (not a test).

Issue 16 item 3, the notebook side: for N points (default 10k and 100k) of random 512-d embeddings
over a CSV dataset of 64x128 JPEGs (``bench_export.make_dataset``), a JupyterLab server runs a
notebook whose second cell builds ``ct.Explorer(emb, ds, projection=coords)``; headless Chromium
(Playwright, as ``tests/test_jupyterlab.py`` drives it, whose helpers this reuses) measures

* plot visible: from the moment that cell starts (its printed ``time.time()``) until the explorer's
  plot has drawn in the page (goal <= 5 s): plotly's calcdata exists, or jupyter-scatter's canvas
  (above ``LARGE_FIGURE`` points, ``backend="auto"``) shows points in a screenshot;
* click: from clicking a point until the ``k`` neighbour thumbnails are shown (goal <= 1 s), over
  ``--clicks`` points.

``--backend plotly`` measures the FigureWidget at every size (the explorer before the WebGL switch).

    python benchmarks/bench_explorer.py
    python benchmarks/bench_explorer.py --sizes 100000 --clicks 5
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_jupyterlab as lab  # noqa: E402  (its JupyterLab helpers: state probes, server start/stop)
from conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

CELL_DATA = """import sys, time
sys.path.insert(0, {bench!r})
import numpy as np
import cliptk as ct
from pathlib import Path
from bench_export import make_dataset
N = {n}
ds = make_dataset(Path({work!r}), N)
rng = np.random.default_rng(N)
emb = rng.normal(size=(N, 512)).astype(np.float32)
coords = emb[:, :2] + 0.1 * emb[:, 2:4]
if {full_hover}:   # the explorer as it was before LARGE_FIGURE: every point's metadata in its hover label
    import cliptk.widgets.explorer
    cliptk.widgets.explorer.LARGE_FIGURE = 10 ** 12"""
CELL_EXPLORER = """T0 = time.time(); print(f"T0={{T0:.3f}}")
ex = ct.Explorer(emb, ds, projection=coords, k={k}, backend={backend!r})
print("backend", ex.backend)
ex"""

#: the explorer plot drawn: Date.now() (s) when its calcdata exists and two frames have passed
DRAWN = "async () => {" + lab.EXPLORER_JS + """
  const out = explorerOutput(), gd = out && out.querySelector('.js-plotly-plot');
  if (!(gd && gd._fullLayout && gd.calcdata)) return null;
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return Date.now() / 1000;
}"""
#: jupyter-scatter's canvas laid out in the page: its client box (Date.now() in s as t), else null
CANVAS = "async () => {" + lab.EXPLORER_JS + """
  const out = explorerOutput(), c = out && out.querySelector('canvas');
  if (!c || !c.width || !c.getBoundingClientRect().width) return null;
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const b = c.getBoundingClientRect();
  return {t: Date.now() / 1000, x: b.left, y: b.top, width: b.width, height: b.height};
}"""
#: the client position of point j of the first trace, and its row
POINT = "(j) => {" + lab.EXPLORER_JS + """
  const gd = explorerOutput().querySelector('.js-plotly-plot');
  const fl = gd._fullLayout, box = gd.getBoundingClientRect(), s = fl._size, tr = gd._fullData[0];
  return {x: box.left + s.l + fl.xaxis.l2p(tr.x[j]), y: box.top + s.t + fl.yaxis.l2p(tr.y[j])};
}"""
QUERY_ROW = "() => {" + lab.EXPLORER_JS + """
  const q = Array.from(explorerOutput().querySelectorAll('.widget-html')).find(h => /^\\s*row \\d+/.test(h.textContent));
  return q ? q.textContent.match(/row (\\d+)/)[1] : null;
}"""
NEIGHBOURS_SHOWN = "([k, prev]) => {" + lab.EXPLORER_JS + """
  const out = explorerOutput(), nb = neighbourBox(out);
  const imgs = nb && nb[1] ? Array.from(nb[1].querySelectorAll('img')) : [];
  const q = Array.from(out.querySelectorAll('.widget-html')).find(h => /^\\s*row \\d+/.test(h.textContent));
  const row = q ? q.textContent.match(/row (\\d+)/)[1] : null;
  return imgs.length === k && imgs.every(i => i.complete && i.naturalWidth > 0) && row !== null && row !== prev;
}"""


def _painted(page, box: dict) -> bool:
    """Whether the canvas at ``box`` shows points: a screenshot with more than 200 non-background pixels."""
    import io

    import numpy as np
    from PIL import Image

    png = page.screenshot(clip={k: box[k] for k in ("x", "y", "width", "height")})
    px = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return int((px < 200).sum()) > 200


def _webgl_point(coords, j: int, box: dict) -> dict:
    """Client position of row ``j`` in jupyter-scatter's default view: x and y are scaled min-max to
    [-1, 1] and the square [-1, 1]^2 fills the canvas's height, centred (regl-scatterplot keeps the aspect)."""
    lo, hi = coords.min(0), coords.max(0)
    ndc = 2 * (coords[j] - lo) / (hi - lo) - 1
    half = min(box["width"], box["height"]) / 2
    return {"x": float(box["x"] + box["width"] / 2 + ndc[0] * half), "y": float(box["y"] + box["height"] / 2 - ndc[1] * half)}


def measure(browser, n: int, k: int, clicks: int, work: Path, full_hover: bool = False,
            backend: str = "auto") -> dict:
    root = work / f"lab_{n}{'_full' if full_hover else ''}"
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    name = f"explorer_{n}.ipynb"
    lab._write_notebook(root / "notebooks" / name, [
        CELL_DATA.format(bench=str(ROOT / "benchmarks"), n=n, work=str(work), full_hover=full_hover),
        CELL_EXPLORER.format(k=k, backend=backend)])
    home = root / "jupyter"
    for rel, value in lab.SETTINGS.items():
        f = home / "settings" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value), encoding="utf-8")
    port, token = lab._free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root / 'notebooks'}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
           ] + (["--allow-root"] if os.geteuid() == 0 else [])
    base = f"http://127.0.0.1:{port}"
    log = root / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root / "notebooks", env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    page = None
    try:
        while not _up(base, token):
            time.sleep(1)
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited:\n{lab._log_tail(log)}")
        page = browser.new_page(viewport=lab.VIEWPORT)
        page.set_default_timeout(600_000)
        lab._open_and_run_all(page, base, token, name)
        drawn = box = None
        while drawn is None:
            drawn = page.evaluate(DRAWN)
            box = page.evaluate(CANVAS) if drawn is None else None
            if box is not None and _painted(page, box):
                drawn = box["t"]
            if drawn is None:
                page.wait_for_timeout(100)
        text = page.locator(".jp-CodeCell", has_text="ct.Explorer(").locator(".jp-OutputArea").inner_text()
        t0 = float(re.search(r"T0=([\d.]+)", text).group(1))
        used = re.search(r"backend (\w+)", text).group(1)
        page.evaluate("() => {" + lab.EXPLORER_JS + " const o = explorerOutput(); "
                      "(o.querySelector('.js-plotly-plot') || o.querySelector('canvas')).scrollIntoView({block: 'center'}); }")
        page.wait_for_timeout(500)
        coords = None
        if used == "webgl":
            import numpy as np

            box = page.evaluate(CANVAS)
            emb = np.random.default_rng(n).normal(size=(n, 512)).astype(np.float32)   # as CELL_DATA draws them
            coords = emb[:, :2] + 0.1 * emb[:, 2:4]
        times, prev, hits, miss = [], None, 0, []    # hits: clicks whose panel shows the row aimed at
        for c in range(clicks):
            j = (c * 7919) % n
            p = page.evaluate(POINT, j) if coords is None else _webgl_point(coords, j, box)
            page.mouse.move(p["x"] + 20, p["y"] + 20)
            page.mouse.move(p["x"], p["y"], steps=3)
            page.wait_for_timeout(300)                      # plotly's hover settles (its click reports the hover)
            t = time.perf_counter()
            page.mouse.click(p["x"], p["y"])
            page.wait_for_function(NEIGHBOURS_SHOWN, arg=[k, prev], polling="raf", timeout=120_000)
            times.append(time.perf_counter() - t)
            prev = page.evaluate(QUERY_ROW)
            hits += prev == str(j)
            if coords is not None:   # how far (px) the row the panel shows is drawn from the point aimed at
                q = _webgl_point(coords, int(prev), box)
                miss.append(((q["x"] - p["x"]) ** 2 + (q["y"] - p["y"]) ** 2) ** 0.5)
        return {"visible_s": drawn - t0, "click_s": times, "backend": used, "hits": hits, "miss_px": miss}
    finally:
        if page is not None:
            page.close()
        lab._stop(proc, base, token)


def _up(base: str, token: str) -> bool:
    try:
        return lab._get(f"{base}/api/status?token={token}") == 200
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--work", default="/tmp/cliptk-bench-export")
    ap.add_argument("--backend", default="auto", choices=["auto", "plotly", "webgl"], help="the Explorer's plot")
    ap.add_argument("--compare", action="store_true",
                    help="also measure each size with every point's metadata in its hover label (the old explorer)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from cliptk.viz.figures import LARGE_FIGURE

    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        for n in [int(s) for s in args.sizes.split(",") if s]:
            for full in ([True, False] if args.compare else [False]):
                r = measure(browser, n, args.k, args.clicks, Path(args.work), full_hover=full, backend=args.backend)
                rows.append((n, full, r))
                print(f"{n} points{' (full hover labels)' if full else ''}: plot visible {r['visible_s']:.2f} s after the cell started; clicks "
                      f"{[round(t, 2) for t in r['click_s']]} s ({r['hits']} of {args.clicks} on the row aimed at, "
                      "the others on a point drawn over it"
                      + (f"; shown rows drawn {max(r['miss_px']):.1f} px or less from the aim" if r["miss_px"] else "")
                      + ")", flush=True)
        browser.close()
    print(f"\nct.Explorer in JupyterLab, headless Chromium ({os.cpu_count()} cores)")
    print("| points | plot | hover labels | plot visible s after the cell starts (goal <= 5) "
          "| click to neighbours s, median / max (goal <= 1) |")
    print("| --- | --- | --- | --- | --- |")
    for n, full, r in rows:
        c = sorted(r["click_s"])
        label = ("all metadata (before)" if full else "pid, camid, split" if r["backend"] == "webgl"
                 else "row only" if n > LARGE_FIGURE else "all metadata")
        plot = "jupyter-scatter (WebGL)" if r["backend"] == "webgl" else "plotly FigureWidget"
        print(f"| {n:,} | {plot} | {label} | {r['visible_s']:.2f} | {c[len(c) // 2]:.2f} / {c[-1]:.2f} |")


if __name__ == "__main__":
    main()
