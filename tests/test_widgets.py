"""Tests of cliptk.widgets.Explorer (its handlers are driven directly, as plotly would call them) and of the
CamPairPicker's explanation options.

The ``toy`` dataset is built here rather than taken from conftest's ``tiny_players``: the tests
need planted-cluster embeddings with a little overlap between identities (so both neighbour
colours appear) and a fixed row count (30) that the bounds assertions name.
"""
from __future__ import annotations

import io

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image
from plotly.callbacks import Points
from sklearn.neighbors import NearestNeighbors

from cliptk.data import ReIdDataset
from cliptk.viz import project, trace_rows
from cliptk.widgets import Explorer

K = 4


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """6 identities x 5 images (tiny PNGs), planted-cluster embeddings with a little overlap, a PCA projection."""
    root = tmp_path_factory.mktemp("players")
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(6), 5)
    emb = (rng.normal(size=(6, 16))[pids] + 0.8 * rng.normal(size=(30, 16))).astype(np.float32)
    rows = []
    for i, pid in enumerate(pids):
        Image.new("RGB", (20, 40), (40 * pid, 255 - 8 * i, 90)).save(root / f"{i}.png")
        rows.append(dict(path=f"{i}.png", pid=int(pid), camid=i % 2, split="gallery", team=["red", "blue"][pid % 2],
                         caption=f"a player in red, number {pid}"))
    ds = ReIdDataset(root, pd.DataFrame(rows), name="toy")
    return ds, emb, project(emb, "pca")


@pytest.fixture
def explorer(toy):
    ds, emb, proj = toy
    return Explorer(emb, ds, proj, k=K, color_by="team", thumb_height=40, grid_height=32, max_grid=10)


def points(trace_index: int, inds: list[int]) -> Points:
    return Points(point_inds=inds, xs=[0.0] * len(inds), ys=[0.0] * len(inds), trace_name="t", trace_index=trace_index)


def image_height(image: widgets.Image) -> int:
    return Image.open(io.BytesIO(image.value)).height


def reference_neighbours(emb: np.ndarray, row: int, k: int) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(emb)
    found = nn.kneighbors(emb[row:row + 1], return_distance=False)[0]
    return found[found != row][:k]


def test_click_fills_neighbour_panel_with_k_thumbnails(explorer, toy):
    ds, emb, _ = toy
    trace = explorer.figure.data[1]  # a trace other than the first: indices are per trace
    row = int(trace_rows(trace)[2])
    explorer.on_click(trace, points(1, [2]), None)
    cards = explorer.neighbour_box.children
    assert len(cards) == K
    table = explorer.last_neighbours
    np.testing.assert_array_equal(table["row"], reference_neighbours(emb, row, K))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(table["similarity"], unit[table["row"]] @ unit[row], rtol=1e-5)
    for card, r in zip(cards, table.itertuples()):
        image, label = card.children
        assert image_height(image) == 40
        same = ds.pids[r.row] == ds.pids[row]
        assert r.same_identity == same
        assert ("same id" if same else "other id") in label.value and f"{r.similarity:.3f}" in label.value
        assert ("#1a9850" if same else "#d73027") in card.layout.border
    assert not table["same_identity"].all()  # the fixture's overlap makes both kinds appear somewhere
    # the query panel shows the clicked image, bigger, with its metadata
    (query,) = explorer.query_box.children
    assert image_height(query.children[0]) == 80 and f"row {row}" in query.children[1].value
    # the clicked point and its neighbours are ringed in the plot
    np.testing.assert_array_equal(trace_rows(explorer.figure.data[-1]), [row, *table["row"]])


def test_empty_point_lists_do_nothing(explorer):
    for i, tr in enumerate(explorer.figure.data):
        explorer.on_click(tr, points(i, []), None)
        explorer.on_click(tr, None, None)
    assert explorer.neighbour_box.children == () and explorer.last_neighbours is None


def test_selection_over_several_traces_fills_grid(explorer, toy):
    ds, _, _ = toy
    data = explorer.figure.data
    expected = [*trace_rows(data[0])[[0, 3]], *trace_rows(data[1])[[1]]]
    # plotly calls every trace's callback for one selection, most with an empty list
    for i, tr in enumerate(data):
        explorer.on_selection(tr, points(i, {0: [0, 3], 1: [1]}.get(i, [])), None)
    np.testing.assert_array_equal(explorer.selected, expected)
    assert len(explorer.grid.children) == 3
    for card, r in zip(explorer.grid.children, expected):
        assert image_height(card.children[0]) == 32 and f"pid {ds.pids[r]}" in card.children[1].value
    explorer.on_deselect(data[0], None)
    assert explorer.grid.children == () and explorer.selected.size == 0


def test_select_caps_the_grid_and_checks_rows(explorer):
    rows = explorer.select([5, 5, 3, *range(20)])
    assert rows[:2].tolist() == [5, 3] and len(rows) == 20  # duplicates dropped, order kept
    assert len(explorer.grid.children) == 10 and "showing the first 10" in explorer.status.value
    with pytest.raises(IndexError, match="row 30"):
        explorer.select([1, 30])
    with pytest.raises(IndexError, match="row -1"):
        explorer.show_neighbours(-1)


def test_plotly_dispatch_reaches_the_handlers(explorer):
    """The message a browser click / lasso sends: plotly calls every trace, with per-trace indices."""
    fig = explorer.figure
    if not hasattr(fig, "_handler_js2py_pointsCallback"):
        pytest.skip("plotly FigureWidget (anywidget) is not available")
    row = int(trace_rows(fig.data[1])[4])
    state = dict(ctrl=False, alt=False, shift=False, meta=False, button=0, buttons=1)
    fig._handler_js2py_pointsCallback({"new": {"event_type": "plotly_click", "device_state": state, "points": {
        "trace_indexes": [1], "point_indexes": [4], "xs": [0.0], "ys": [0.0]}}})
    assert len(explorer.neighbour_box.children) == K and explorer.last_neighbours is not None
    assert f"row {row}" in explorer.query_box.children[0].children[1].value
    selector = {"type": "box", "selector_state": {"xrange": [0, 1], "yrange": [0, 1]}}
    fig._handler_js2py_pointsCallback({"new": {"event_type": "plotly_selected", "selector": selector, "points": {
        "trace_indexes": [0, 1, 1], "point_indexes": [1, 0, 2], "xs": [0.0] * 3, "ys": [0.0] * 3}}})
    expected = [trace_rows(fig.data[0])[1], *trace_rows(fig.data[1])[[0, 2]]]
    assert sorted(explorer.selected) == sorted(expected) and len(explorer.grid.children) == 3


def test_explorer_3d_and_widget(toy):
    ds, emb, _ = toy
    ex = Explorer(emb, ds, project(emb, "pca", 3), k=3)
    assert ex.figure.data[0].type == "scatter3d"
    table = ex.show_neighbours(7)
    np.testing.assert_array_equal(table["row"], reference_neighbours(emb, 7, 3))
    hl = ex.figure.data[-1]
    np.testing.assert_allclose(np.c_[hl.x, hl.y, hl.z], ex.projection[[7, *table["row"]]])
    assert isinstance(ex.widget, widgets.VBox)
    assert isinstance(ex.figure, go.FigureWidget)  # plotly >= 6.1 + anywidget (a pinned dependency)
    assert ex.widget.children[0].children[0] is ex.figure


def test_explorer_rejects_bad_arguments(toy):
    ds, emb, proj = toy
    with pytest.raises(ValueError, match="k=30"):
        Explorer(emb, ds, proj, k=30)
    with pytest.raises(ValueError, match="has 30 rows"):
        Explorer(emb[:10], ds, proj[:10])


def test_cam_picker_passes_the_per_device_rule_on(micro_model, tiny_players, monkeypatch):
    """The picker's Score-CAM keeps ``top_channels="auto"`` (CamConfig's per-device rule) with and without a
    config; Grad-CAM is the library's, exact."""
    from cliptk.explain import CamConfig
    from cliptk.widgets import cam_picker

    seen = []
    real = cam_picker.similarity_cam
    monkeypatch.setattr(cam_picker, "similarity_cam", lambda *a, config, **kw: seen.append(config) or real(
        *a, config=config, **kw))
    test = tiny_players.subset("query", "gallery")
    cam_picker.CamPairPicker(micro_model, test, rank_gallery=False).explain()
    cam_picker.CamPairPicker(micro_model, test, rank_gallery=False, config=CamConfig()).explain()
    assert [(c.method, c.fast, c.top_channels) for c in seen] == [("scorecam", True, "auto"),
                                                                  ("scorecam", None, "auto")]
    assert [c.for_model(micro_model).top_channels for c in seen] == [None, None]   # a tiny tower: exact
    picker = cam_picker.CamPairPicker(micro_model, test, rank_gallery=False, top_channels=4)
    picker.explain()
    assert seen[-1].top_channels == 4 and seen[-1].fast is True
    picker.method.value = "gradcam"
    picker.explain()
    assert (seen[-1].method, seen[-1].fast, seen[-1].top_channels) == ("gradcam", False, None)


def test_large_explorer_hover_says_only_the_row_and_colours_are_numbers(toy, monkeypatch):
    """Above LARGE_FIGURE points (here lowered to 10) the explorer's hover labels carry only the row (a
    click shows the rest, unchanged), and plot_embeddings gives cycled category colours as numbers on a
    stepwise scale: one value per identity, each drawn in the colour the strings named."""
    import cliptk.viz.figures as figures
    import cliptk.widgets.explorer as explorer_mod
    from cliptk.viz import plot_embeddings

    ds, emb, proj = toy
    small = Explorer(emb, ds, proj, k=K, color_by="team")
    strings = plot_embeddings(proj, ds, color_by="pid", max_legend=3).data[0]   # 6 pids > 3: cycled colours
    monkeypatch.setattr(figures, "LARGE_FIGURE", 10)
    monkeypatch.setattr(explorer_mod, "LARGE_FIGURE", 10)
    big = Explorer(emb, ds, proj, k=K, color_by="team", backend="plotly")
    for tr in big.figure.data[:-1]:
        assert list(tr.text) == [f"<b>row {r}</b>" for r in figures.trace_rows(tr)]
    assert all("camid" in t for tr in small.figure.data[:-1] for t in tr.text)   # below the limit: all metadata
    tr0 = big.figure.data[0]
    big.on_click(tr0, points(0, [3]))
    assert len(big.neighbour_box.children) == K
    np.testing.assert_array_equal(big.last_neighbours["row"], reference_neighbours(emb, int(figures.trace_rows(tr0)[3]), K))

    numbers = plot_embeddings(proj, ds, color_by="pid", max_legend=3).data[0]
    values, scale = np.asarray(numbers.marker.color, dtype=float), numbers.marker.colorscale
    np.testing.assert_array_equal(figures.trace_rows(numbers), figures.trace_rows(strings))
    for v, want in zip(values, strings.marker.color):   # the scale's step that holds each value
        assert [c for (lo, c), (hi, _) in zip(scale[::2], scale[1::2]) if lo <= v <= hi] == [want]


def test_auto_backend_is_webgl_above_large_figure_in_2d_only(toy, monkeypatch):
    import cliptk.widgets.explorer as explorer_mod

    ds, emb, proj = toy
    assert Explorer(emb, ds, proj, k=K).backend == "plotly"          # 30 points: plotly
    monkeypatch.setattr(explorer_mod, "LARGE_FIGURE", 10)
    big = Explorer(emb, ds, proj, k=K)
    assert big.backend == "webgl" and big.figure is None
    assert big.widget.children[0].children[0] is big.scatter.view
    assert Explorer(emb, ds, project(emb, "pca", 3), k=K).backend == "plotly"   # jupyter-scatter is 2-D only
    with pytest.raises(ValueError, match="2-D projections only"):
        Explorer(emb, ds, project(emb, "pca", 3), k=K, backend="webgl")
    with pytest.raises(ValueError, match="backend='bokeh'"):
        Explorer(emb, ds, proj, k=K, backend="bokeh")
    monkeypatch.setattr(explorer_mod, "available", lambda: False)     # a trimmed install without jupyter-scatter
    assert Explorer(emb, ds, proj, k=K).backend == "plotly"


def test_webgl_click_and_lasso_reach_the_panels(toy):
    """jupyter-scatter reports a click as a one-point ``selection`` and a lasso as many: the first fills the
    neighbour panel (exact neighbours, then outlined by selecting them from Python without re-entering the
    handlers), the second the grid; clearing empties it."""
    ds, emb, proj = toy
    ex = Explorer(emb, ds, proj, k=K, color_by="pid", backend="webgl", grid_height=32)
    w = ex.scatter.widget
    w.selection = np.array([7])                                       # a click on row 7
    want = reference_neighbours(emb, 7, K)
    np.testing.assert_array_equal(ex.last_neighbours["row"], want)
    assert len(ex.neighbour_box.children) == K
    assert "row 7" in ex.query_box.children[0].children[1].value
    np.testing.assert_array_equal(np.sort(w.selection), np.sort([7, *want]))   # outlined in the plot
    assert ex.selected.size == 0 and not ex.grid.children              # the highlight was not taken for a lasso
    w.selection = np.array([3, 12, 25])                               # a lasso
    np.testing.assert_array_equal(ex.selected, [3, 12, 25])
    assert len(ex.grid.children) == 3 and ex.last_neighbours["row"].tolist() == want.tolist()
    w.selection = None                                                # a click on empty space
    assert ex.selected.size == 0 and not ex.grid.children and ex.status.value == "Nothing selected."
    ex.scatter.selection([12])                                        # as a user's click, from Python
    assert ex.query_box.children[0].children[1].value.startswith("<b>row 12</b>")


def test_webgl_colours_match_plot_embeddings(toy):
    """Each point gets the colour plot_embeddings gives it: cycled palette categories (pid, 6 > max_legend 3
    in plotly: one trace of colour strings), and a continuous column on the same ordering."""
    from matplotlib.colors import to_rgba

    from cliptk.viz import plot_embeddings

    ds, emb, proj = toy
    plotly_trace = plot_embeddings(proj, ds, color_by="pid", max_legend=3).data[0]
    want = {int(r): to_rgba(c) for r, c in zip(trace_rows(plotly_trace), plotly_trace.marker.color)}
    sc = Explorer(emb, ds, proj, k=K, color_by="pid", backend="webgl").scatter.scatter
    enc = sc.color()
    labels = sc._data[enc["by"]]          # the per-point category the widget colours by
    got = np.array([enc["map"][labels.cat.categories.get_loc(labels.iat[r])] for r in range(len(ds))])
    np.testing.assert_allclose(got, [want[r] for r in range(len(ds))])
    assert len({tuple(c) for c in got}) == 6
    loss = np.linspace(0, 1, len(ds))
    sc = Explorer(emb, ds, proj, k=K, color_by=loss, backend="webgl").scatter.scatter
    np.testing.assert_allclose(sc._data[sc.color()["by"]], loss)
