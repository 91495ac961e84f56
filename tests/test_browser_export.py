"""The exported HTML pages in a real headless browser (Debian's chromium driven by Playwright): the
plot is drawn, and hovering a point shows that image's thumbnail; an exported training timelapse
plays to its last frame; the before/after-per-query table of a report sorts on a header click.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python package;
skipped without them. Playwright's own browser download is not used. Tests never rewrite tracked
files: only with ``CLIPTK_REFRESH_SCREENSHOTS=1`` is the hovered page saved as the README's
``docs/img/export_hover.png`` (the teaching views' screenshots come from ``tests/test_jupyterlab.py``).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliptk.viz import export_html, html_fragment, plot_embeddings, project, trace_rows

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "export_hover.png"
#: the README's screenshot is written only on request
REFRESH = os.environ.get("CLIPTK_REFRESH_SCREENSHOTS", "").strip().lower() in ("1", "true", "yes", "on")
VIEWPORT = {"width": 1000, "height": 640}

# client (viewport) pixel position of point j of trace i, from plotly's own axis mapping
POINT_XY = """([i, j]) => {
  const gd = document.querySelector('.plotly-graph-div');
  const fl = gd._fullLayout, tr = gd._fullData[i], box = gd.getBoundingClientRect();
  return [box.left + fl._size.l + fl.xaxis.l2p(tr.x[j]), box.top + fl._size.t + fl.yaxis.l2p(tr.y[j])];
}"""
THUMB_STATE = """() => {
  const box = document.querySelector('.cliptk-thumb'), s = box && box.querySelector('.cliptk-sprite');
  return box && {display: getComputedStyle(box).display, row: box.dataset.row, ready: box.dataset.ready,
                 image: s.style.backgroundImage, width: s.offsetWidth, height: s.offsetHeight,
                 label: box.textContent};
}"""
SHOWN = ("() => { const b = document.querySelector('.cliptk-thumb');"
         " return getComputedStyle(b).display === 'block' && b.dataset.ready === '1'; }")


@pytest.fixture(scope="module")
def players(tiny_players):
    """conftest's tiny players world, and embeddings with one planted cluster per player."""
    ds = tiny_players
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(ds.pids.max() + 1, 24))
    emb = (centres[ds.pids] + 0.35 * rng.normal(size=(len(ds), 24))).astype(np.float32)
    return ds, emb


def coloured_pixels(png: bytes) -> int:
    """Pixels with a clear colour (markers), as opposed to the white/grey page and grid."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((a.max(axis=2) - a.min(axis=2)) > 60).sum())


def loneliest_point(fig, coords: np.ndarray) -> tuple[int, int, int]:
    """(trace, index in trace, row) of the point farthest from any other: a hover target nothing hides."""
    d = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    np.fill_diagonal(d, np.inf)
    row = int(d.min(axis=1).argmax())
    for i, tr in enumerate(fig.data):
        hit = np.flatnonzero(trace_rows(tr) == row)
        if hit.size:
            return i, int(hit[0]), row
    raise AssertionError(f"row {row} is in no trace")


def open_and_hover(browser, url: str, fig, coords: np.ndarray):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(180_000)  # a loaded 2-core machine parses the inlined plotly.js slowly
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, timeout=180_000)
    page.wait_for_function("() => { const gd = document.querySelector('.plotly-graph-div');"
                           " return gd && gd._fullLayout && gd.calcdata; }", timeout=180_000)
    page.wait_for_timeout(300)  # WebGL traces draw on the next animation frame
    blank_state = page.evaluate(THUMB_STATE)
    drawn = coloured_pixels(page.screenshot())
    trace, j, row = loneliest_point(fig, coords)
    x, y = page.evaluate(POINT_XY, [trace, j])
    page.mouse.move(x + 15, y + 15)
    page.mouse.move(x, y, steps=3)
    page.wait_for_function(SHOWN, timeout=60_000)
    page.wait_for_timeout(100)   # the decoded atlas is painted on the next frame
    return page, errors, blank_state, drawn, row


def shows_thumbnail_of(page, ds, row: int, height: int = 48) -> bool:
    """Whether the hover box's sprite, as the browser paints it, is ``row``'s image: of every
    image of ``ds`` scaled by Pillow to the cell (aspect kept) and shown at twice that size, as
    the page does, ``row``'s has the highest Pearson r with the screenshot, and r > 0.9."""
    shot = np.asarray(Image.open(io.BytesIO(page.locator(".cliptk-sprite").screenshot())).convert("RGB"), float)

    def r(i: int) -> float:
        im = ds[i].convert("RGB")
        w = round(im.width * height / im.height)
        want = np.asarray(im.resize((w, height), Image.Resampling.BILINEAR).resize((2 * w, 2 * height)), float)
        assert shot.shape == want.shape, (shot.shape, want.shape)
        return float(np.corrcoef(shot.ravel(), want.ravel())[0, 1])

    scores = np.array([r(i) for i in range(len(ds))])
    return int(scores.argmax()) == row and scores[row] > 0.9


@pytest.mark.parametrize("webgl", [False, True], ids=["svg", "webgl"])
def test_exported_page_shows_thumbnail_on_hover(browser, players, tmp_path, webgl):
    ds, emb = players
    coords = project(emb, "pca")
    fig = plot_embeddings(emb, ds, color_by="pid", projection=coords, webgl=webgl,
                          title="synthetic players — hover a point")
    path = export_html(fig, ds, tmp_path / "players.html")
    page, errors, blank_state, drawn, row = open_and_hover(browser, path.as_uri(), fig, coords)
    try:
        # the plot is drawn: coloured markers on the page (and, for SVG, one path per point)
        assert drawn > 30 * 20
        if not webgl:
            assert page.locator(".scatterlayer .point").count() == len(ds)
        assert blank_state["display"] == "none"  # nothing shown before the hover
        state = page.evaluate(THUMB_STATE)
        assert int(state["row"]) == row and state["image"].startswith('url("data:image/')
        assert (state["width"], state["height"]) == (48, 96)   # a 24 x 48 cell at twice its size
        assert shows_thumbnail_of(page, ds, row)         # this row's image, cut from the atlas right
        assert f"row {row}" in state["label"]
        if not webgl and REFRESH:
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        page.mouse.move(5, VIEWPORT["height"] - 5)  # leave the plot: the thumbnail goes away
        page.wait_for_function("() => getComputedStyle(document.querySelector('.cliptk-thumb')).display === 'none'",
                               timeout=60_000)
        assert errors == []
    finally:
        page.close()


def test_fragment_inside_a_larger_report(browser, players, tmp_path):
    ds, emb = players
    coords = project(emb, "pca")
    fig = plot_embeddings(emb, ds, color_by="team", projection=coords)
    frag = html_fragment(fig, ds, include_plotlyjs=True, div_id="embedding-plot")
    report = tmp_path / "report.html"
    report.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                      "<h1>Fine-tuning report</h1><p>Hover a point to see the image.</p>"
                      f"{frag}<p>end of report</p></body></html>", encoding="utf-8")
    page, errors, _, drawn, row = open_and_hover(browser, report.as_uri(), fig, coords)
    try:
        assert page.locator("#embedding-plot .scatterlayer .point").count() == len(ds)
        assert int(page.evaluate(THUMB_STATE)["row"]) == row and shows_thumbnail_of(page, ds, row)
        assert errors == []
    finally:
        page.close()


def test_folder_export_shows_thumbnail_and_metadata_on_hover(browser, players, tmp_path):
    """layout="folder" (what exports above FOLDER_THRESHOLD points get): plotly.js and the atlas are files
    beside the page, the figure has no hover text, and the box shows the thumbnail and the row's metadata."""
    ds, emb = players
    coords = project(emb, "pca")
    fig = plot_embeddings(emb, ds, color_by="pid", projection=coords, webgl=True)
    path = export_html(fig, ds, tmp_path / "big.html", layout="folder", thumbnail_height=48)
    assert (tmp_path / "big_files" / "plotly.min.js").is_file()
    page, errors, _, drawn, row = open_and_hover(browser, path.as_uri(), fig, coords)
    try:
        assert drawn > 30 * 20
        state = page.evaluate(THUMB_STATE)
        assert int(state["row"]) == row and "big_files/atlas-0000." in state["image"]
        assert shows_thumbnail_of(page, ds, row)
        t = ds.table.iloc[row]
        assert f"row {row}" in state["label"] and f"pid: {t['pid']}" in state["label"]
        assert Path(t["path"]).name in state["label"]
        assert page.locator(".hoverlayer .hovertext").count() == 0   # no plotly label: the box has the metadata
        assert errors == []
    finally:
        page.close()


def _open(browser, path: Path):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(180_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri(), timeout=180_000)
    return page, errors


def test_exported_timelapse_plays_to_its_last_frame(browser, tmp_path):
    """plot_timelapse written with auto_play=False: first frame on load; "play" walks the slider to the end, the
    points move to the last frame's and the title gives its label and mAP."""
    from cliptk.viz import plot_timelapse

    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(6), 8)
    centres = rng.normal(size=(6, 16))
    frames = [centres[pids] * s + rng.normal(size=(48, 16)) for s in (0.2, 1.0, 3.0)]   # clusters split apart
    fig = plot_timelapse(frames, labels=["before training", "epoch 1", "epoch 2"], maps=[0.2, 0.5, 0.9],
                         color_by=pids, duration_ms=200)
    path = tmp_path / "timelapse.html"
    fig.write_html(path, auto_play=False)
    page, errors = _open(browser, path)
    state = """() => { const gd = document.querySelector('.plotly-graph-div');
      return gd && gd._fullLayout && gd.calcdata ? {title: gd._fullLayout.title.text,
                                                    active: gd._fullLayout.sliders[0].active,
                                                    x: Array.from(gd._fullData[0].x).slice(0, 4)} : null; }"""
    try:
        page.wait_for_function(f"() => ({state})() !== null")
        first = page.evaluate(state)
        assert first["title"].startswith("training timelapse: before training") and first["active"] == 0
        box = page.locator(".updatemenu-button").first.bounding_box()   # the first button: play
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function(f"() => ({state})().active === 2")
        page.wait_for_timeout(600)        # the last transition settles
        last = page.evaluate(state)
        assert last["x"] != first["x"]
        assert last["title"] == fig.frames[2].layout.title.text == "training timelapse: epoch 2 — probe mAP 0.900"
        np.testing.assert_allclose(last["x"], fig.frames[2].data[0].x[:4], rtol=1e-5)   # the last frame's points
        assert errors == []
    finally:
        page.close()


def test_report_table_of_queries_sorts_on_a_header_click(browser, tmp_path):
    """QueryComparison.table_html inside a Report: clicking "delta ap" sorts the rows by it, twice reverses."""
    from cliptk.diagnose import compare_embeddings
    from cliptk.viz import Report

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(8, 12))
    g = np.repeat(centres, 3, axis=0) + 0.6 * rng.normal(size=(24, 12))
    cmp = compare_embeddings(centres + rng.normal(size=(8, 12)), g, centres + 0.3 * rng.normal(size=(8, 12)), g,
                             np.arange(8), np.repeat(np.arange(8), 3))
    report = Report("before / after")
    report.raw("Before / after, per query", str(cmp.table_html(by="query order")))
    path = report.save(tmp_path / "report.html")
    page, errors = _open(browser, path)
    column = list(cmp.table.columns).index("delta_ap") + 1    # + the thumbnail column after query_index
    rows = f"""() => Array.from(document.querySelectorAll('table tbody tr')).map(r => [
                 +r.cells[0].textContent, +r.cells[{column}].dataset.v])"""
    try:
        assert [q for q, _ in page.evaluate(rows)] == list(range(8))
        header = page.locator("table thead th").nth(column)
        assert header.inner_text().strip() == "delta ap"
        header.click()
        up = page.evaluate(rows)
        assert [v for _, v in up] == sorted(cmp.table["delta_ap"])
        assert [q for q, _ in up] == cmp.table.sort_values("delta_ap", kind="stable")["query_index"].tolist()
        header.click()
        assert [v for _, v in page.evaluate(rows)] == sorted(cmp.table["delta_ap"], reverse=True)
        assert errors == []
    finally:
        page.close()
