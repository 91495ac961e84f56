"""Debugging views and dataset audits on a small world with planted failures.

Planted: identities 0 and 1 are look-alikes (their centres almost coincide); training image
``MISLABELLED`` of identity 100 is labelled 101; gallery row ``LEAK_G`` is an exact copy of
training image ``LEAK_T``; training rows ``DUP`` are a near-duplicate pair. Each must come out at
the top of its table. References are brute-force loops, :func:`cliptk.evaluate_reid` and
scikit-learn's ROC curve.
"""
from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_curve

from cliptk import ranking_kernels as RK
from cliptk.data import ReIdDataset, read_deepsportradar
from cliptk.diagnose import audit
from cliptk.diagnose import (COLOURS, ap_breakdown, confused_pairs, find_leaks, label_noise_suspects, plot_ranked,
                             plot_similarity_hist, pos_neg_similarities, rank_gallery, similarity_threshold,
                             table_html, worst_queries_html)
from cliptk.metrics import evaluate_reid
from cliptk.widgets import RankBrowser

D = 32
N_TEST, N_TRAIN, PER_TRAIN = 10, 12, 6
MISLABELLED = 3            # a training image of pid 100, labelled 101
LEAK_T, LEAK_G = 20, 47    # train row copied into gallery row (gallery row 47 belongs to pid 9)
DUP = (40, 41)             # two training rows (both pid 106) made near-identical


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def noisy(rng, centres, scale):
    return unit(centres + scale * rng.normal(size=centres.shape) / np.sqrt(D))


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(N_TEST, D)))
    centres[1] = unit(centres[0] + 0.12 * unit(rng.normal(size=D)))  # look-alikes 0 and 1
    q_pids, q_cams = np.repeat(np.arange(N_TEST), 2), np.tile([0, 1], N_TEST)
    g_pids, g_cams = np.repeat(np.arange(N_TEST), 5), np.tile(np.arange(5), N_TEST)
    q = noisy(rng, centres[q_pids], 0.25)
    g = noisy(rng, centres[g_pids], 0.25)

    t_centres = unit(rng.normal(size=(N_TRAIN, D)))
    true_train = np.repeat(np.arange(100, 100 + N_TRAIN), PER_TRAIN)
    train = noisy(rng, t_centres[true_train - 100], 0.35)
    train_pids = true_train.copy()
    train_pids[MISLABELLED] = 101
    train[DUP[1]] = unit(train[DUP[0]] + 1e-3 * rng.normal(size=D))
    g[LEAK_G] = train[LEAK_T]

    colours = unit(rng.random((N_TEST + N_TRAIN, 3)) + 0.1) * 255
    img = lambda pid: Image.new("RGB", (8, 16), tuple(int(c) for c in colours[pid % (N_TEST + N_TRAIN)]))
    qt = pd.DataFrame({"pid": q_pids, "camid": q_cams, "sequence": q_pids // 2})
    r = rank_gallery(q, g, qt, pd.DataFrame({"pid": g_pids, "camid": g_cams}),
                     query_images=[img(p) for p in q_pids], gallery_images=[img(p) for p in g_pids])
    return dict(q=q, g=g, qp=q_pids, gp=g_pids, qc=q_cams, gc=g_cams, train=train, train_pids=train_pids,
                true_train=true_train, r=r)


# --------------------------------------------------------------------------------------- ranking
def brute_status(w, qi):
    """Statuses, ranks and AP of one query by an explicit loop over the gallery."""
    d = 1 - w["g"] @ w["q"][qi]
    order = sorted(range(len(d)), key=lambda j: (d[j], j))
    status, rank, n = [], [], 0
    for j in order:
        same = w["gp"][j] == w["qp"][qi]
        if same and w["gc"][j] == w["qc"][qi]:
            status.append("junk"), rank.append(None)
        else:
            n += 1
            status.append("match" if same else "wrong"), rank.append(n)
    hits = [rk for s, rk in zip(status, rank) if s == "match"]
    ap = np.mean([(i + 1) / rk for i, rk in enumerate(hits)]) if hits else np.nan
    return order, status, rank, ap


def test_ranking_agrees_with_brute_force_and_evaluate_reid(world):
    r = world["r"]
    ref = evaluate_reid(world["q"], world["g"], world["qp"], world["gp"], world["qc"], world["gc"])
    assert r.result.mAP == pytest.approx(ref.mAP)
    assert np.array_equal(r.first_match, ref.first_match)
    for qi in range(r.n_queries):
        order, status, rank, ap = brute_status(world, qi)
        t = r.ranked(qi)
        assert t["gallery_index"].tolist() == order
        assert t["status"].tolist() == status
        assert [None if pd.isna(x) else int(x) for x in t["rank"]] == rank
        assert r.ap[qi] == pytest.approx(ap)
        assert t["rank"][t["status"] == "match"].iloc[0] == r.first_match[qi]
    assert (r.ranked(0)["status"] == "junk").sum() == 1  # query camera 0 vs its gallery camera 0


def test_top_k_keeps_k_ranked_items_and_junk_between(world):
    r = world["r"]
    for qi in range(r.n_queries):
        full = r.ranked(qi)
        t = r.top_k(qi, 4)
        assert t["rank"].dropna().tolist() == [1, 2, 3, 4]
        assert t.equals(full.iloc[: len(t)].reset_index(drop=True))  # a prefix of the ranking
        assert (r.top_k(qi, 4, include_junk=False)["status"] != "junk").all()


def exact_rows(rng, n):
    """Unit rows whose dot products are exact in floating point (components 0, +-1/2, +-1), so
    that every tie is a true tie whatever the BLAS blocking: +-e_i and the 16 (+-1/2, ...)."""
    signs = np.array(np.meshgrid(*[[-0.5, 0.5]] * 4)).reshape(4, -1).T
    pool = np.concatenate([np.eye(4), -np.eye(4), signs])
    return pool[rng.integers(0, len(pool), n)]


def test_ranking_in_small_chunks_equals_the_full_matrix(world, monkeypatch):
    """Rows computed lazily chunk by chunk, top-k by partitioning and nearest() by the heap kernel
    equal the brute-force stable sort of the full matrix, on data full of exact ties."""
    rng = np.random.default_rng(1)
    q, g = exact_rows(rng, 9), exact_rows(rng, 30)
    qp, gp, qc, gc = rng.integers(0, 3, 9), rng.integers(0, 3, 30), rng.integers(0, 2, 9), rng.integers(0, 2, 30)
    monkeypatch.setattr(RK, "CHUNK_ELEMENTS", 2 * 30)  # two queries per chunk
    r = rank_gallery(q, g, qp, gp, query_camids=qc, gallery_camids=gc)
    full = 1 - q @ g.T
    ref_order = np.argsort(full, axis=1, kind="stable")
    np.testing.assert_array_equal(r.distances, full)
    for qi in range(9):  # the sorting reference of the AP / first match
        kept = ~((gp == qp[qi]) & (gc == qc[qi]))
        hits = (gp[ref_order[qi]] == qp[qi])[kept[ref_order[qi]]]
        ranks = np.flatnonzero(hits) + 1
        assert r.first_match[qi] == (ranks[0] if len(ranks) else -1)
        if len(ranks):
            assert r.ap[qi] == pytest.approx(np.mean(np.arange(1, len(ranks) + 1) / ranks), abs=1e-15)
    np.testing.assert_array_equal(r.nearest(5), ref_order[:, :5])
    for qi in range(9):
        t = r.ranked(qi)
        assert t["gallery_index"].tolist() == ref_order[qi].tolist()
        if r.first_match[qi] > 0:
            assert t["rank"][t["status"] == "match"].iloc[0] == r.first_match[qi]
        for k in (1, 3, 30):
            assert r.top_k(qi, k).equals(t.iloc[: len(r.top_k(qi, k))].reset_index(drop=True))
            assert r.top_k(qi, k)["rank"].dropna().tolist() == list(range(1, min(k, t["rank"].max()) + 1))
    np.testing.assert_array_equal(r.junk_mask(), (qp[:, None] == gp) & (qc[:, None] == gc))


def test_rank_gallery_unknown_cameras(tmp_path):
    # datasets without cameras: no camera filtering, only the query's own image is junk
    t = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "pid": [1, 1, 2]})
    q_ds = ReIdDataset(tmp_path, t.iloc[:1], name="toy")
    g_ds = ReIdDataset(tmp_path, t)
    q, g = np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.8, 0.6], [0.9, 0.1]])
    with pytest.warns(UserWarning, match="toy: cameras unknown") as rec:
        r = rank_gallery(q, g, q_ds, g_ds)
    assert sum("camera" in str(w.message) for w in rec) == 1
    assert r.ranked(0)["status"].tolist() == ["junk", "wrong", "match"]
    assert r.ranked(0)["camid"].tolist() == [-1, -1, -1]  # shown as the dataset has them
    assert r.first_match.tolist() == [2] and r.ap[0] == pytest.approx(0.5)
    # camid -1 given per query: no filtering for that query, the same rule as evaluate_reid
    with pytest.warns(UserWarning, match="1 of 1 queries have an unknown camera"):
        r = rank_gallery(q, g, [1], [1, 1, 2], query_camids=[-1], gallery_camids=[0, 0, 0])
    assert r.ranked(0)["status"].tolist() == ["match", "wrong", "match"] and r.first_match.tolist() == [1]
    assert not r.junk_mask().any()


def test_worst_queries_put_the_look_alikes_first(world):
    w = world["r"].worst_queries()
    assert np.all(np.diff(w["ap"].to_numpy()) >= 0)
    assert set(w["pid"].head(3)) <= {0, 1}  # planted look-alikes are the worst queries


# --------------------------------------------------------------------------------------- views
def test_plot_ranked_marks_status_and_first_match(world):
    r = world["r"]
    qi = int(r.worst_queries()["query_index"][0])
    fig = plot_ranked(qi, r, k=5)
    top = r.top_k(qi, 5)
    assert len(fig.layout.images) == 1 + len(top)
    assert all(im.source.startswith("data:image/jpeg;base64,") for im in fig.layout.images)
    borders = [s.line.color for s in fig.layout.shapes]
    assert borders == [COLOURS["query"]] + [COLOURS[s] for s in top["status"]]
    assert f"first true match at rank {r.first_match[qi]}" in fig.layout.title.text
    assert list(fig.data[0].customdata) == [qi] + top["gallery_index"].tolist()
    bare = rank_gallery(world["q"], world["g"], world["qp"], world["gp"])
    assert len(plot_ranked(0, bare, k=3).layout.images) == 0  # no images: coloured boxes only
    with pytest.raises(IndexError, match="out of range"):
        plot_ranked(r.n_queries, r)


def test_worst_queries_html_pages_in_ap_order(world):
    r = world["r"]
    order = r.worst_queries()["query_index"].tolist()
    pages = [worst_queries_html(r, k=3, page=p, per_page=8) for p in range(3)]
    shown = [int(q) for p in pages for q in re.findall(r">query (\d+)<br>", p)]
    assert shown == order
    n_imgs = sum(1 + len(r.top_k(q, 3)) for q in order[:8])
    assert pages[0].count("<img ") == n_imgs
    assert pages[0]._repr_html_() == str(pages[0])
    with pytest.raises(ValueError, match="page 3 is out of range"):
        worst_queries_html(r, page=3, per_page=8)


def test_rank_browser_handlers_call_on_pick(world):
    r = world["r"]
    picks = []
    b = RankBrowser(r, k=4, on_pick=lambda q, g: picks.append((q, g)))
    order = r.worst_queries()["query_index"].tolist()
    assert b.query_index == order[0]
    assert b.pick(0) == (order[0], int(r.top_k(order[0], 4)["gallery_index"][0]))
    b.slider.value = 3  # as if the user moved the slider
    assert b.query_index == order[3]
    top = r.top_k(order[3], 4)
    b.buttons[1].click()
    assert picks[-1] == (order[3], int(top["gallery_index"][1])) == b.picked
    assert [b.images[j].layout.border for j in range(len(top))] == [f"3px solid {COLOURS[s]}" for s in top["status"]]
    assert all(b.images[j].value[:2] == b"\xff\xd8" for j in range(len(top)))  # JPEG bytes
    shown = [c.layout.display != "none" for c in b.cards]
    assert sum(shown) == len(top)
    with pytest.raises(IndexError):
        b.pick(len(top))
    b.show(5)
    assert b.slider.value == 5 and b.query_index == order[5]


# --------------------------------------------------------------------------------------- failure analysis
def test_ap_breakdown_matches_evaluate_reid_per_group(world):
    r = world["r"]
    seq = world["qp"] // 2
    for by, labels in (("pid", world["qp"]), ("camid", world["qc"]), ("sequence", seq)):
        t = ap_breakdown(r, by)
        assert np.all(np.diff(t["mAP"].to_numpy()) >= 0)
        for group, row in t.iterrows():
            m = labels == group
            ref = evaluate_reid(world["q"][m], world["g"], world["qp"][m], world["gp"], world["qc"][m], world["gc"])
            assert row["mAP"] == pytest.approx(ref.mAP)
            assert row["rank1"] == pytest.approx(ref.cmc[1])
            assert row["queries"] == m.sum()
    assert set(ap_breakdown(r, "pid").index[:2]) == {0, 1}
    assert ap_breakdown(r, "sequence").index[0] == 0  # the look-alikes' sequence
    assert ap_breakdown(r, seq).equals(ap_breakdown(r, "sequence").rename_axis("group"))
    with pytest.raises(KeyError, match="available"):
        ap_breakdown(r, "team")


def test_confused_pairs_finds_the_look_alikes(world):
    r = world["r"]
    t = confused_pairs(r, top=None)
    assert (t.loc[0, "pid_a"], t.loc[0, "pid_b"]) == (0, 1)
    # reference: impostors = wrong-identity items strictly closer than the nearest true match
    d = 1 - world["q"] @ world["g"].T
    ref = Counter()
    for qi in range(len(d)):
        valid = (world["gp"] == world["qp"][qi]) & (world["gc"] != world["qc"][qi])
        first = d[qi][valid].min()
        for j in np.flatnonzero((world["gp"] != world["qp"][qi]) & (d[qi] < first)):
            ref[tuple(sorted((int(world["qp"][qi]), int(world["gp"][j]))))] += 1
    assert dict(zip(zip(t["pid_a"], t["pid_b"]), t["count"])) == dict(ref)
    qi, gi = int(t.loc[0, "query_index"]), int(t.loc[0, "gallery_index"])
    assert {world["qp"][qi], world["gp"][gi]} == {0, 1}
    assert 1 - d[qi, gi] == pytest.approx(t.loc[0, "max_similarity"])
    assert confused_pairs(r, top=1).equals(t.head(1)) and len(t) == len(ref)


def test_pos_neg_similarities_brute_force(world):
    pos, neg = pos_neg_similarities(world["r"])
    ref_pos, ref_neg = [], []
    for i in range(len(world["q"])):
        for j in range(len(world["g"])):
            s = float(world["q"][i] @ world["g"][j])
            if world["qp"][i] != world["gp"][j]:
                ref_neg.append(s)
            elif world["qc"][i] != world["gc"][j]:
                ref_pos.append(s)
    assert np.allclose(np.sort(pos), np.sort(ref_pos), atol=1e-6)
    assert np.allclose(np.sort(neg), np.sort(ref_neg), atol=1e-6)


@pytest.mark.parametrize("fmr", [0.0, 0.01, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_similarity_threshold_is_the_best_roc_point(fmr, seed):
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(0.7, 0.15, 300), 2)  # rounding makes ties, as real scores have
    neg = np.round(rng.normal(0.3, 0.15, 1000), 2)
    t = similarity_threshold(pos, neg, fmr)
    fpr, tpr, _ = roc_curve(np.r_[np.ones_like(pos), np.zeros_like(neg)], np.r_[pos, neg], drop_intermediate=False)
    assert np.mean(neg >= t) <= fmr
    assert np.mean(pos >= t) == pytest.approx(tpr[fpr <= fmr].max())
    assert t in set(pos) | set(neg)


def test_similarity_threshold_edges():
    assert similarity_threshold([0.5], [0.1, 0.2], fmr=1.0) == float("-inf")
    t = similarity_threshold([0.1], [0.2, 0.3], fmr=0.0)  # no score above the top negative
    assert t > 0.3 and np.nextafter(0.3, -1) < 0.3
    with pytest.raises(ValueError, match="fmr"):
        similarity_threshold([0.5], [0.1], fmr=1.5)
    with pytest.raises(ValueError, match="empty"):
        similarity_threshold([], [0.1])


def test_plot_similarity_hist_draws_threshold(world):
    pos, neg = pos_neg_similarities(world["r"])
    fig = plot_similarity_hist(pos, neg, fmr=0.05)
    assert [tr.type for tr in fig.data] == ["histogram", "histogram"]
    assert sorted(len(tr.x) for tr in fig.data) == sorted([len(pos), len(neg)])
    line = [s for s in fig.layout.shapes if s.type == "line"][0]
    assert line.x0 == pytest.approx(similarity_threshold(pos, neg, 0.05))


# --------------------------------------------------------------------------------------- dataset audit
def test_find_leaks_puts_the_copied_image_first(world):
    t = find_leaks(world["train"], world["g"], 0.9, train_pids=world["train_pids"], test_pids=world["gp"])
    assert (t.loc[0, "index_a"], t.loc[0, "index_b"]) == (LEAK_T, LEAK_G)
    assert t.loc[0, "similarity"] == pytest.approx(1.0)
    sim = world["train"] @ world["g"].T
    ref = {(int(i), int(j)) for i, j in zip(*np.nonzero(sim >= 0.9))}
    assert set(zip(t["index_a"], t["index_b"])) == ref
    assert np.all(np.diff(t["similarity"].to_numpy()) <= 0)
    assert t.loc[0, "pid_a"] == world["train_pids"][LEAK_T] and not t.loc[0, "same_pid"]
    assert len(find_leaks(world["train"], world["g"], -1.0, max_pairs=7)) == 7
    with pytest.raises(ValueError, match="dimension"):
        find_leaks(world["train"], world["g"][:, :5])


def test_find_leaks_within_one_set(world):
    x = world["train"]
    t = find_leaks(x, None, 0.9, train_pids=world["train_pids"])
    assert tuple(t.loc[0, ["index_a", "index_b"]]) == DUP
    sim = x @ x.T
    ref = {(i, j) for i in range(len(x)) for j in range(i + 1, len(x)) if sim[i, j] >= 0.9}
    assert set(zip(t["index_a"], t["index_b"])) == ref
    assert (t["index_a"] < t["index_b"]).all()


def _brute_leaks(a, b, threshold):
    sim = a @ (a if b is None else b).T
    rows = [(i, j, sim[i, j]) for i in range(sim.shape[0]) for j in range(sim.shape[1])
            if sim[i, j] >= threshold and (b is not None or j > i)]
    return sorted(rows, key=lambda r: (-r[2], r[0], r[1]))


@pytest.mark.parametrize("within", [False, True])
def test_find_leaks_chunked_and_pruned_equals_brute_force(world, monkeypatch, within):
    rng = np.random.default_rng(2)
    a = exact_rows(rng, 40)  # many exact ties in similarity
    b = None if within else exact_rows(rng, 25)
    monkeypatch.setattr(RK, "CHUNK_ELEMENTS", 3 * 40)  # a few rows per chunk
    monkeypatch.setattr(audit, "_BLOCK_ELEMENTS", 8)  # prune the candidates often
    for max_pairs in (1, 5, 17, None):
        t = find_leaks(a, b, 0.2, max_pairs=max_pairs)
        ref = _brute_leaks(a, b, 0.2)[:max_pairs]
        assert list(zip(t["index_a"], t["index_b"])) == [(i, j) for i, j, _ in ref]
        np.testing.assert_array_equal(t["similarity"], [v for _, _, v in ref])


def test_label_noise_suspects_chunked(world, monkeypatch):
    x, p = world["train"], world["train_pids"]
    ref = label_noise_suspects(x, p, include_all=True)
    monkeypatch.setattr(RK, "CHUNK_ELEMENTS", 5)
    pd.testing.assert_frame_equal(label_noise_suspects(x, p, include_all=True), ref)


def test_label_noise_suspects_finds_the_mislabelled_image(world):
    x, p = world["train"], world["train_pids"]
    t = label_noise_suspects(x, p)
    assert t.loc[0, "index"] == MISLABELLED
    assert t.loc[0, "pid"] == 101 and t.loc[0, "nearest_pid"] == 100  # its true identity
    full = label_noise_suspects(x, p, include_all=True).set_index("index")
    assert len(full) == len(x)
    for i in range(len(x)):  # brute force: leave-one-out own centroid, full other centroids
        own = unit(x[(p == p[i]) & (np.arange(len(x)) != i)].mean(axis=0))
        others = {q: x[p == q].mean(axis=0) for q in np.unique(p) if q != p[i]}
        best = max(others, key=lambda q: unit(others[q]) @ x[i])
        assert full.loc[i, "own_similarity"] == pytest.approx(own @ x[i])
        assert full.loc[i, "nearest_pid"] == best
        assert full.loc[i, "nearest_similarity"] == pytest.approx(unit(others[best]) @ x[i])
    assert (t["margin"] > 0).all() and len(t) == (full["margin"] > 0).sum()
    single = label_noise_suspects(x[:6], p[:6], include_all=True).set_index("index")  # pid 101: one image
    assert np.isnan(single.loc[MISLABELLED, "own_similarity"]) and np.isnan(single.loc[MISLABELLED, "margin"])
    assert MISLABELLED not in set(label_noise_suspects(x[:6], p[:6])["index"])  # cannot be checked
    unknown = p.copy()
    unknown[:6] = -1
    assert 0 not in set(label_noise_suspects(x, unknown, include_all=True)["index"])


def test_table_html_thumbnails_and_escaping(world):
    imgs = [Image.new("RGB", (8, 16), (i * 3 % 255, 0, 0)) for i in range(len(world["train"]))]
    t = find_leaks(world["train"], None, 0.9)
    html_ = table_html(t, {"index_a": imgs, "index_b": imgs}, max_rows=3)
    assert html_.count("<img ") == 2 * min(3, len(t))
    assert f"<td>{DUP[0]}</td>" in html_ and f"<td>{t.loc[0, 'similarity']:.4f}</td>" in html_  # ints stay ints
    odd = pd.DataFrame({"index": [0], "name": ["<b>x</b>"]})
    assert "&lt;b&gt;" in table_html(odd, {"index": imgs})
    with pytest.raises(KeyError, match="nope"):
        table_html(t, {"nope": imgs})


def test_end_to_end_with_images_on_disk(tiny_players_root, tmp_path):
    """A real dataset folder: a training image copied into the gallery is found from pixels."""
    root = Path(shutil.copytree(tiny_players_root, tmp_path / "players"))  # a copy: the fixture is shared
    copied = sorted((root / "reid_training").iterdir())[1]
    pid, sequence, _ = sorted((root / "reid_test/query").iterdir())[0].name.split("_")  # a test player
    leak = root / f"reid_test/gallery/{pid}_{sequence}_05.jpeg"
    leak.write_bytes(copied.read_bytes())
    ds = read_deepsportradar(root)
    pixels = lambda d: np.stack([np.asarray(d[i].resize((8, 16)), dtype=np.float64).ravel() for i in range(len(d))])
    train, q, g = ds.subset("train"), ds.subset("query"), ds.subset("gallery")
    leaks = find_leaks(pixels(train), pixels(g), 0.0, train_pids=train.pids, test_pids=g.pids)
    assert train.table["path"][leaks.loc[0, "index_a"]].endswith(copied.name)
    assert g.table["path"][leaks.loc[0, "index_b"]].endswith(leak.name)
    assert leaks.loc[0, "similarity"] == pytest.approx(1.0)
    assert table_html(leaks.head(1), {"index_a": train, "index_b": g}).count("<img ") == 2
    r = rank_gallery(pixels(q), pixels(g), q, g)
    assert len(plot_ranked(0, r, k=3).layout.images) == 1 + len(r.top_k(0, 3))
    assert "sequence" in ap_breakdown(r, "sequence").index.name
