"""Benchmark the embedding-plot export and the explorer's page at real dataset sizes (not a test).

Issue 16 item 3: for N points (default 10k, 100k) of random 512-d embeddings over a CSV dataset of
64x128 JPEGs, write :func:`cliptk.viz.export_html` (thumbnails packed in sprite atlases; one
self-contained file up to ``cliptk.viz.export.FOLDER_THRESHOLD`` points, a page plus an asset folder
above), and measure in headless Chromium (Debian's ``chromium`` driven by Playwright, as the
browser tests do):

* write time and the size of all the export's files together (plotly.js included);
* first paint: from navigation until the plot's points are on screen;
* hover: from moving the mouse onto a point until its thumbnail is shown (the atlas image loaded
  and decoded), over several points, first hover included;

and, with ``--million``, the first paint of 1M points without thumbnails. Goals (2 cores):
<= 25 MB, <= 15 s to write, first paint <= 5 s, hover <= 200 ms. The table prints the goal beside
each number.

    python benchmarks/bench_export.py                      # 10k and 100k
    python benchmarks/bench_export.py --sizes 100000 --million
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import time
from pathlib import Path

import numpy as np

import cliptk as ct

ROOT = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, n: int, distinct: int = 1000, seed: int = 0) -> ct.ReIdDataset:
    """A CSV dataset of ``n`` 64x128 JPEG files: ``distinct`` rendered synthetic players, hard-linked
    (or copied) to ``n`` file names, with pid and camid columns; reused when already there."""
    csv_path = root / f"players_{n}.csv"
    if not csv_path.exists():
        src = root / "renders"
        if not src.exists():
            ct.generate_players(src, n_train_ids=distinct // 5, n_test_ids=1, images_per_id=5, size=(64, 128),
                                workers=1, challenge=False)
        files = sorted(src.rglob("*.jpeg"))[:distinct]
        img_dir = root / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        rows = []
        for i in range(n):
            dst = img_dir / f"{i:07d}.jpg"
            if not dst.exists():
                try:
                    os.link(files[i % len(files)], dst)
                except OSError:
                    shutil.copyfile(files[i % len(files)], dst)
            rows.append((f"images/{dst.name}", int(i // 10), int(rng.integers(8))))
        tmp = csv_path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "pid", "camid"])
            w.writerows(rows)
        os.replace(tmp, csv_path)
    return ct.read_csv(csv_path)


POINT_XY = """([i, j]) => {
  const gd = document.querySelector('.plotly-graph-div');
  const fl = gd._fullLayout, tr = gd._fullData[i], box = gd.getBoundingClientRect();
  return [box.left + fl._size.l + fl.xaxis.l2p(tr.x[j]), box.top + fl._size.t + fl.yaxis.l2p(tr.y[j])];
}"""
#: ms from navigation start until plotly has drawn and two animation frames have passed (WebGL
#: traces draw on the next frame)
READY = "() => { const gd = document.querySelector('.plotly-graph-div'); return !!(gd && gd._fullLayout && gd.calcdata); }"
PAINTED = """async () => {
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now();
}"""
SHOWN = """(prev) => { const b = document.querySelector('.cliptk-thumb');
  return b && getComputedStyle(b).display === 'block' && b.dataset.ready === '1' && b.dataset.row !== prev; }"""


def folder_bytes(page: Path) -> int:
    """Bytes of the page and of its ``<name>_files`` folder, if any."""
    assets = page.with_name(page.stem + "_files")
    return page.stat().st_size + (sum(f.stat().st_size for f in assets.iterdir()) if assets.is_dir() else 0)


def coloured_pixels(png: bytes) -> int:
    from io import BytesIO

    from PIL import Image

    a = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
    return int(((a.max(axis=2) - a.min(axis=2)) > 60).sum())


def in_browser(browser, page_path: Path, fig, hovers: int, seed: int = 0) -> dict:
    """First paint (ms) and hover-to-thumbnail latencies (ms) of an exported page."""
    page = browser.new_page(viewport={"width": 1000, "height": 640})
    page.set_default_timeout(300_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_path.as_uri(), wait_until="commit")
    page.wait_for_function(READY, polling=10, timeout=300_000)
    paint_ms = page.evaluate(PAINTED)
    drawn = coloured_pixels(page.screenshot())
    lat = []
    if hovers:
        rng = np.random.default_rng(seed)
        sizes = [len(tr.x) for tr in fig.data]
        prev = None
        for _ in range(hovers):
            i = int(rng.choice(len(sizes), p=np.array(sizes) / sum(sizes)))
            j = int(rng.integers(sizes[i]))
            x, y = page.evaluate(POINT_XY, [i, j])
            page.mouse.move(x + 40, y + 40)
            page.wait_for_timeout(50)
            t = time.perf_counter()
            page.mouse.move(x, y)
            page.wait_for_function(SHOWN, arg=prev, polling="raf", timeout=30_000)
            lat.append(1000 * (time.perf_counter() - t))
            prev = page.evaluate("() => document.querySelector('.cliptk-thumb').dataset.row")
    page.close()
    return {"paint_ms": paint_ms, "drawn_px": drawn, "hover_ms": lat, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="point counts (comma-separated)")
    ap.add_argument("--million", action="store_true", help="also 1M points, without thumbnails (first paint only)")
    ap.add_argument("--hovers", type=int, default=12, help="hovers measured per page (each on a random point)")
    ap.add_argument("--work", default="/tmp/cliptk-bench-export", help="where the dataset and pages are written")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from cliptk.viz import export_html, plot_embeddings
    from cliptk.viz.export import FOLDER_THRESHOLD

    work = Path(args.work)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        cases = [(n, True) for n in sizes] + ([(1_000_000, False)] if args.million else [])
        for n, thumbs in cases:
            ds = make_dataset(work, n) if thumbs else None
            rng = np.random.default_rng(n)
            emb = rng.normal(size=(n, 512)).astype(np.float32)
            coords = emb[:, :2] + 0.1 * emb[:, 2:4]    # a 2-D view of random embeddings (the export is measured, not a projection)
            t = time.perf_counter()
            if thumbs:
                page = export_html(coords, ds, work / f"export_{n}.html", color_by="pid")
            else:
                fig = plot_embeddings(coords, None, color_by=None)
                page = export_html(fig, _NoImages(n), work / f"export_{n}.html", thumbnails=False)
            write_s = time.perf_counter() - t
            fig = plot_embeddings(coords, None, color_by=None) if thumbs else fig
            size = folder_bytes(page)
            res = in_browser(browser, page, fig, args.hovers if thumbs else 0)
            layout = "folder" if page.with_name(page.stem + "_files").is_dir() else "one file"
            rows.append((n, thumbs, layout, write_s, size, res))
            print(f"{n} points: {layout}, written in {write_s:.1f} s, {size / 1e6:.1f} MB, first paint "
                  f"{res['paint_ms'] / 1000:.2f} s, hover ms {[round(h) for h in res['hover_ms']]}, "
                  f"{res['drawn_px']} coloured px, errors {res['errors']}", flush=True)
        browser.close()
    print(f"\nexport_html and the page in headless Chromium ({os.cpu_count()} cores; FOLDER_THRESHOLD={FOLDER_THRESHOLD})")
    print("| points | thumbnails | layout | write s (goal <= 15) | all files MB (goal <= 25) | first paint s (goal <= 5) "
          "| hover ms median / max (goal <= 200) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, thumbs, layout, write_s, size, res in rows:
        h = res["hover_ms"]
        hov = f"{np.median(h):.0f} / {max(h):.0f}" if h else "-"
        print(f"| {n:,} | {'yes' if thumbs else 'no'} | {layout} | {write_s:.1f} | {size / 1e6:.1f} | "
              f"{res['paint_ms'] / 1000:.2f} | {hov} |")


class _NoImages:
    """A stand-in dataset for a points-only export (no thumbnails, no metadata columns)."""

    def __init__(self, n: int):
        import pandas as pd

        self.name, self._n = "points", n
        self.table = pd.DataFrame({"pid": np.zeros(n, int)})

    def __len__(self) -> int:
        return self._n


if __name__ == "__main__":
    main()
