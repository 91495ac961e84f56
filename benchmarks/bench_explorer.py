"""Benchmark :class:`cliptk.Explorer` in JupyterLab at real dataset sizes (not a test).

Issue 16 item 3, the notebook side: for N points (default 10k and 100k) of random 512-d embeddings
over a CSV dataset of 64x128 JPEGs (``bench_export.make_dataset``), a JupyterLab server runs a
notebook whose second cell builds ``ct.Explorer(emb, ds, projection=coords)``; headless Chromium
(Playwright, as ``tests/test_jupyterlab.py`` drives it, whose helpers this reuses) measures

* plot visible: from the moment that cell starts (its printed ``time.time()``) until the explorer's
  plotly plot has drawn in the page (goal <= 5 s);
* click: from clicking a point until the ``k`` neighbour thumbnails are shown (goal <= 1 s), over
  ``--clicks`` points.

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
ex = ct.Explorer(emb, ds, projection=coords, k={k})
ex"""

#: the explorer plot drawn: Date.now() (s) when its calcdata exists and two frames have passed
DRAWN = "async () => {" + lab.EXPLORER_JS + """
  const out = explorerOutput(), gd = out && out.querySelector('.js-plotly-plot');
  if (!(gd && gd._fullLayout && gd.calcdata)) return null;
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return Date.now() / 1000;
}"""
#: the client position of point j of the first trace, and its row
POINT = "(j) => {" + lab.EXPLORER_JS + """
  const gd = explorerOutput().querySelector('.js-plotly-plot');
  const fl = gd._fullLayout, box = gd.getBoundingClientRect(), s = fl._size, tr = gd._fullData[0];
  return {x: box.left + s.l + fl.xaxis.l2p(tr.x[j]), y: box.top + s.t + fl.yaxis.l2p(tr.y[j])};
}"""
QUERY_ROW = "() => {" + lab.EXPLORER_JS + """
  const q = Array.from(explorerOutput().querySelectorAll('.widget-html')).find(h => /^\\s*row \\d+/.test(h.textContent));
  return q ? q.textContent.trim().split(/\\s+/)[1] : null;
}"""
NEIGHBOURS_SHOWN = "([k, prev]) => {" + lab.EXPLORER_JS + """
  const out = explorerOutput(), nb = neighbourBox(out);
  const imgs = nb && nb[1] ? Array.from(nb[1].querySelectorAll('img')) : [];
  const q = Array.from(out.querySelectorAll('.widget-html')).find(h => /^\\s*row \\d+/.test(h.textContent));
  const row = q ? q.textContent.trim().split(/\\s+/)[1] : null;
  return imgs.length === k && imgs.every(i => i.complete && i.naturalWidth > 0) && row !== null && row !== prev;
}"""


def measure(browser, n: int, k: int, clicks: int, work: Path, full_hover: bool = False) -> dict:
    root = work / f"lab_{n}{'_full' if full_hover else ''}"
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    name = f"explorer_{n}.ipynb"
    lab._write_notebook(root / "notebooks" / name, [
        CELL_DATA.format(bench=str(ROOT / "benchmarks"), n=n, work=str(work), full_hover=full_hover), CELL_EXPLORER.format(k=k)])
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
        drawn = None
        while drawn is None:
            drawn = page.evaluate(DRAWN)
            if drawn is None:
                page.wait_for_timeout(100)
        text = page.locator(".jp-CodeCell", has_text="ct.Explorer(").locator(".jp-OutputArea").inner_text()
        t0 = float(re.search(r"T0=([\d.]+)", text).group(1))
        page.evaluate("() => {" + lab.EXPLORER_JS + " explorerOutput().querySelector('.js-plotly-plot')"
                      ".scrollIntoView({block: 'center'}); }")
        page.wait_for_timeout(500)
        times, prev = [], None
        for c in range(clicks):
            p = page.evaluate(POINT, (c * 7919) % n)
            page.mouse.move(p["x"] + 20, p["y"] + 20)
            page.mouse.move(p["x"], p["y"], steps=3)
            page.wait_for_timeout(300)                      # plotly's hover settles (its click reports the hover)
            t = time.perf_counter()
            page.mouse.click(p["x"], p["y"])
            page.wait_for_function(NEIGHBOURS_SHOWN, arg=[k, prev], polling="raf", timeout=120_000)
            times.append(time.perf_counter() - t)
            prev = page.evaluate(QUERY_ROW)
        return {"visible_s": drawn - t0, "click_s": times}
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
                r = measure(browser, n, args.k, args.clicks, Path(args.work), full_hover=full)
                rows.append((n, full, r))
                print(f"{n} points{' (full hover labels)' if full else ''}: plot visible {r['visible_s']:.2f} s after the cell started; clicks "
                      f"{[round(t, 2) for t in r['click_s']]} s", flush=True)
        browser.close()
    print(f"\nct.Explorer in JupyterLab, headless Chromium ({os.cpu_count()} cores)")
    print("| points | hover labels | plot visible s after the cell starts (goal <= 5) "
          "| click to neighbours s, median / max (goal <= 1) |")
    print("| --- | --- | --- | --- |")
    for n, full, r in rows:
        c = sorted(r["click_s"])
        label = "all metadata (before)" if full else ("row only" if n > LARGE_FIGURE else "all metadata")
        print(f"| {n:,} | {label} | {r['visible_s']:.2f} | {c[len(c) // 2]:.2f} / {c[-1]:.2f} |")


if __name__ == "__main__":
    main()
