"""Before/after per query: AP per query against an independent formula and evaluate_reid's, rank
changes against a brute force over Ranking.ranked, the sorted table and its HTML, the figure, the
aligned projection (its marks against the ranking) and the widget with its links."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from cliptk.diagnose import rank_gallery
from cliptk.diagnose.compare import SORTS, compare_embeddings, compare_models, compare_rankings, match_ranks
from cliptk.viz import aligned_projection
from cliptk.metrics import evaluate_reid


def _world(seed=0, nq=6, per=4, noise=(1.0, 0.2)):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(nq, 12))
    g = np.repeat(centres, per, axis=0) + 0.6 * rng.normal(size=(nq * per, 12))
    qa = centres + noise[0] * rng.normal(size=(nq, 12))
    qb = centres + noise[1] * rng.normal(size=(nq, 12))
    qp, gp = np.arange(nq), np.repeat(np.arange(nq), per)
    qc, gc = rng.integers(0, 3, nq), rng.integers(0, 3, nq * per)
    gc[0] = qc[0]                       # gallery 0 is query 0's own camera: junk for query 0
    return qa, qb, g, qp, gp, qc, gc


def _ap_reference(q, g, qp, gp, qc, gc):
    """AP of each query written out: sort by cosine, drop same-pid same-camera, mean precision at hits."""
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    out = []
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: -(qn[i] @ gn[j]))
        order = [j for j in order if not (gp[j] == qp[i] and gc[j] == qc[i])]
        hits = [gp[j] == qp[i] for j in order]
        precisions = [sum(hits[:r + 1]) / (r + 1) for r in range(len(hits)) if hits[r]]
        out.append(np.mean(precisions))
    return np.array(out)


def test_ap_per_query_and_rank_change():
    qa, qb, g, qp, gp, qc, gc = _world()
    cmp = compare_embeddings(qa, g, qb, g, qp, gp, names=("noisy", "clean"), query_camids=qc, gallery_camids=gc)
    t = cmp.table
    np.testing.assert_allclose(t["ap_before"], _ap_reference(qa, g, qp, gp, qc, gc), rtol=1e-6)
    np.testing.assert_allclose(t["ap_after"], _ap_reference(qb, g, qp, gp, qc, gc), rtol=1e-6)
    np.testing.assert_allclose(t["ap_after"], evaluate_reid(qb, g, qp, gp, qc, gc).ap)
    np.testing.assert_allclose(t["delta_ap"], t["ap_after"] - t["ap_before"])
    for name, r in (("before", cmp.before), ("after", cmp.after)):   # brute force over Ranking.ranked
        for q in range(len(qp)):
            ranked = r.ranked(q)
            ranks = ranked.loc[ranked["status"] == "match", "rank"].astype(float)
            assert t[f"mean_rank_{name}"][q] == pytest.approx(ranks.mean())
            assert t["n_matches"][q] == len(ranks)
    assert t["n_matches"][0] == ((gp == 0) & (gc != qc[0])).sum() < 4   # junk items are not matches
    np.testing.assert_allclose(t["rank_change"], t["mean_rank_after"] - t["mean_rank_before"])
    best, worst = cmp.most_improved(2), cmp.most_hurt(2)
    assert best["delta_ap"].iloc[0] == t["delta_ap"].max() and worst["delta_ap"].iloc[0] == t["delta_ap"].min()
    assert "clean mAP" in cmp.summary()


@pytest.mark.filterwarnings("ignore:.*unknown camera")
def test_unknown_camera_has_no_junk():
    r = rank_gallery(np.eye(2), np.eye(2)[[0, 0, 1]], [0, 1], [0, 0, 1], query_camids=[-1, 0],
                     gallery_camids=[-1, 1, 0])
    mean, n = match_ranks(r)
    assert n.tolist()[0] == 2


def test_mismatched_rankings_are_refused():
    a = rank_gallery(np.eye(2), np.eye(2), [0, 1], [0, 1])
    b = rank_gallery(np.eye(2), np.eye(2), [1, 0], [0, 1])
    with pytest.raises(ValueError, match="different identities"):
        compare_rankings(a, b)


def test_figure_and_widget_with_images():
    qa, qb, g, qp, gp, *_ = _world(nq=4, per=3)
    thumbs = [Image.new("RGB", (8, 16), (40 * i % 255, 0, 0)) for i in range(len(gp))]
    qimg = [Image.new("RGB", (8, 16))] * len(qp)
    cmp = compare_embeddings(qa, g, qb, g, qp, gp, query_images=qimg, gallery_images=thumbs)
    fig = cmp.figure(1, k=3)
    assert len(fig.layout.images) == 2 * (1 + 3)
    assert "query 1" in fig.layout.title.text
    fig.to_html(include_plotlyjs=False)
    pytest.importorskip("ipywidgets")
    w = cmp.widget(k=3)
    w.select(2)
    assert w.captions["topk"].value.startswith("query 2") and w.scatter.data[0].marker.size[2] == 18
    assert w.query.value == 2 and "query 2 " in w.captions["projection"].value


def _comparison(nq=5, per=3):
    qa, qb, g, qp, gp, qc, gc = _world(nq=nq, per=per)
    qimg = [Image.new("RGB", (8, 16), (0, 30 * i, 0)) for i in range(nq)]
    return compare_embeddings(qa, g, qb, g, qp, gp, names=("noisy", "clean"), query_camids=qc, gallery_camids=gc,
                              query_images=qimg, gallery_images=[Image.new("RGB", (8, 16))] * len(gp)), (qa, qb, g)


def test_sorted_orders_and_sortable_html():
    cmp, _ = _comparison()
    t = cmp.table
    for by, (cols, ascending) in SORTS.items():   # each order is pandas' own sort of the table
        expected = t.sort_values(cols, ascending=ascending, na_position="last", kind="stable")["query_index"]
        assert cmp.sorted(by)["query_index"].tolist() == expected.tolist(), by
    with pytest.raises(ValueError, match="choose one of"):
        cmp.sorted("best")
    page = cmp.table_html(max_rows=3, by="most hurt")
    order = [int(float(m)) for m in re.findall(r"<tr><td data-v='([0-9.]+)'>", page)]
    assert order == cmp.most_hurt(3)["query_index"].tolist()             # rows in the asked order
    assert page.count("<img ") == 3 and "first 3 of 5 queries" in page     # a thumbnail per query shown
    table_id = re.search(r"<table id='([^']+)'", page).group(1)
    assert f"getElementById('{table_id}')" in page and "addEventListener('click'" in page   # headers sort
    assert cmp.table_html()._repr_html_().count("<tr>") == 1 + len(t)     # all rows by default
    assert cmp.table_html() != cmp.table_html()                            # two tables on one page: two ids


def test_projection_marks_the_query_its_matches_and_top_k():
    cmp, (qa, qb, g) = _comparison()
    ref = aligned_projection(np.vstack([qa, g]), np.vstack([qb, g]), "pca")   # the same call, made here
    fig = cmp.projection(0, k=3)
    n_q = len(cmp.table)
    for side, r in enumerate((cmp.before, cmp.after)):
        gallery, queries, lines, marks = fig.data[4 * side: 4 * side + 4]
        np.testing.assert_allclose(np.c_[queries.x, queries.y], ref[side][:n_q], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.c_[gallery.x, gallery.y], ref[side][n_q:], rtol=1e-5, atol=1e-6)
        kinds = [tuple(c) for c in marks.customdata]
        assert kinds[0] == (0, 0) and marks.marker.symbol[0] == "star"          # the query itself
        top = r.top_k(0, 3, include_junk=False)
        matches = {j for j in range(r.n_gallery) if r.gallery_pids[j] == 0 and not r.junk_mask(0)[j]}
        assert {i for k, i in kinds if k == 1 and marks.marker.symbol[kinds.index((k, i))] == "circle-open"} == matches
        wrong = set(top.loc[top["status"] != "match", "gallery_index"].astype(int))
        assert {i for k, i in kinds if k == 1 and marks.marker.symbol[kinds.index((k, i))] == "x"} == wrong
        assert sum(v is None for v in lines.x) == len(top)                      # one line per top-k item
    assert len(cmp.projection().data[3].x) == 0                                  # no query: no marks


def test_widget_links_the_projection_to_the_query():
    pytest.importorskip("ipywidgets")
    cmp, _ = _comparison()
    w = cmp.widget(k=2, by="most hurt")
    assert w.query.value == int(cmp.most_hurt(1)["query_index"].iloc[0])
    proj = w.projection
    if not hasattr(proj, "_handler_js2py_pointsCallback"):
        pytest.skip("plotly FigureWidget (anywidget) is not available")
    state = dict(ctrl=False, alt=False, shift=False, meta=False, button=0, buttons=1)

    def click(trace: int, point: int) -> None:   # the message a browser click sends
        proj._handler_js2py_pointsCallback({"new": {"event_type": "plotly_click", "device_state": state, "points": {
            "trace_indexes": [trace], "point_indexes": [point], "xs": [0.0], "ys": [0.0]}}})

    click(5, 3)                                          # query 3 in the "after" panel
    assert w.query.value == 3 and w.captions["topk"].value.startswith("query 3")
    assert tuple(proj.data[3].customdata[0]) == (0, 3) and tuple(proj.data[7].customdata[0]) == (0, 3)
    gallery_pid = int(cmp.before.gallery_pids[4])
    click(0, 4)                                          # a gallery point: a query of its identity
    assert int(cmp.before.query_pids[w.query.value]) == gallery_pid
    w.sort.value = "query order"                         # re-sorting keeps the query shown
    assert [v for _, v in w.query.options] == list(range(len(cmp.table)))
    assert int(cmp.before.query_pids[w.query.value]) == gallery_pid


def test_compare_models_on_a_dataset(micro_model, tiny_players):
    from conftest import make_model

    other = make_model("cliptk-micro", seed=1)
    q, g = tiny_players.subset("query"), tiny_players.subset("gallery")
    cmp = compare_models(micro_model, other, q, g, names=("a", "b"))
    assert len(cmp.table) == len(q) and set(cmp.names) == {"a", "b"}
    assert cmp.figure(0, k=2).layout.images   # thumbnails from the datasets
