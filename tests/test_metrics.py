"""Tests for cliptk.metrics: each number against an independent reference or a hand-checked case."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.manifold import trustworthiness as sk_trustworthiness
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    top_k_accuracy_score,
)
from sklearn.neighbors import KNeighborsClassifier

from cliptk import metrics as M
from cliptk import ranking_kernels as RK


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _random_reid(seed: int, nq: int = 12, ng: int = 40, n_ids: int = 8, d: int = 16):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(nq, d))
    g = rng.normal(size=(ng, d))
    qp = rng.integers(0, n_ids, nq)
    gp = rng.integers(0, n_ids, ng)
    qc = rng.integers(0, 3, nq)
    gc = rng.integers(0, 3, ng)
    return q, g, qp, gp, qc, gc


def _reference_reid(q, g, qp, gp, qc, gc, dist=None):
    """Per-query AP with sklearn and a plain-loop CMC over the gallery left after the camera rule."""
    if dist is None:
        dist = 1.0 - _unit(q) @ _unit(g).T
    aps, firsts = [], []
    for i in range(len(q)):
        keep = np.ones(len(g), bool) if qc is None else ~((gp == qp[i]) & (gc == qc[i]))
        y = gp[keep] == qp[i]
        if not y.any():
            aps.append(np.nan)
            firsts.append(-1)
            continue
        aps.append(average_precision_score(y, -dist[i, keep]))
        ranked = sorted(range(int(keep.sum())), key=lambda j: dist[i, keep][j])
        firsts.append(next(r + 1 for r, j in enumerate(ranked) if y[j]))
    return np.array(aps), np.array(firsts)


def _sorting_reid(q, g, qp, gp, qc, gc, block_elements=1 << 22):
    """The previous implementation of evaluate_reid (commit 7933ab6), kept as the reference:
    a stable argsort of every row, torchreid's rule, AP from cumulative sums (camid -1 had no
    special meaning there, so compare on camids >= 0 only)."""
    dtype = np.float64 if q.dtype == np.float64 else np.float32
    q = q.astype(dtype) / np.linalg.norm(q.astype(dtype), axis=1, keepdims=True)
    g = g.astype(dtype) / np.linalg.norm(g.astype(dtype), axis=1, keepdims=True)
    nq, ng = q.shape[0], g.shape[0]
    ap = np.full(nq, np.nan)
    first = np.full(nq, -1, dtype=np.int64)
    step = max(1, block_elements // ng)
    for s in range(0, nq, step):
        e = min(nq, s + step)
        order = np.argsort(1.0 - q[s:e] @ g.T, axis=1, kind="stable")
        same_pid = gp[order] == qp[s:e, None]
        keep = np.ones_like(same_pid) if qc is None else ~(same_pid & (gc[order] == qc[s:e, None]))
        hits = same_pid & keep
        pos = np.cumsum(keep, axis=1)
        n_rel = hits.sum(axis=1)
        valid = n_rel > 0
        precision_at_hits = np.where(hits, np.cumsum(hits, axis=1) / np.maximum(pos, 1), 0.0)
        ap[s:e][valid] = precision_at_hits.sum(axis=1)[valid] / n_rel[valid]
        first[s:e][valid] = pos[np.arange(e - s), hits.argmax(axis=1)][valid]
    return ap, first


def _tied_reid(seed: int, dtype):
    """Small integer embeddings: many exact distance ties, between matches, junk and wrong items."""
    rng = np.random.default_rng(seed)
    nq, ng = int(rng.integers(1, 30)), int(rng.integers(1, 120))
    q = rng.integers(-1, 2, (nq, 3)).astype(dtype)
    g = rng.integers(-1, 2, (ng, 3)).astype(dtype)
    q[~q.any(axis=1), 0] = 1
    g[~g.any(axis=1), 0] = 1
    n_ids = int(rng.integers(1, 6))
    return q, g, rng.integers(0, n_ids, nq), rng.integers(0, n_ids, ng), rng.integers(0, 3, nq), rng.integers(0, 3, ng)


# ------------------------------------------------------------------------------------- re-id


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_cams", [False, True])
def test_evaluate_reid_matches_sklearn_ap_and_bruteforce_cmc(seed, with_cams):
    q, g, qp, gp, qc, gc = _random_reid(seed)
    if not with_cams:
        qc = gc = None
    res = M.evaluate_reid(q, g, qp, gp, qc, gc, ranks=(1, 3, 5))
    ref_ap, ref_first = _reference_reid(q, g, qp, gp, qc, gc)
    np.testing.assert_allclose(res.ap, ref_ap, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(res.first_match, ref_first)
    valid = ref_first > 0
    assert res.n_queries == len(q) and res.n_skipped == int((~valid).sum())
    assert res.mAP == pytest.approx(np.mean(ref_ap[valid]))
    for r in (1, 3, 5):
        assert res.cmc[r] == pytest.approx(np.mean(ref_first[valid] <= r))
    assert res.distances is None and not res.reranked


def test_evaluate_reid_torch_input_and_blocking(monkeypatch):
    q, g, qp, gp, qc, gc = _random_reid(3, nq=20)
    full = M.evaluate_reid(q, g, qp, gp, qc, gc, return_distances=True)
    qb = torch.tensor(q).bfloat16()  # half-precision tensors are upcast, not rejected
    t = [torch.tensor(a) for a in (g, qp, gp, qc, gc)]
    via_torch = M.evaluate_reid(qb, *t)
    via_numpy = M.evaluate_reid(qb.float().numpy(), g, qp, gp, qc, gc)
    np.testing.assert_allclose(via_torch.ap, via_numpy.ap, equal_nan=True)
    monkeypatch.setattr(RK, "CHUNK_ELEMENTS", 3 * g.shape[0])  # 3 queries per chunk
    blocked = M.evaluate_reid(q, g, qp, gp, qc, gc, return_distances=True)
    np.testing.assert_array_equal(blocked.ap, full.ap)
    np.testing.assert_array_equal(blocked.first_match, full.first_match)
    # BLAS may round a product differently for another chunk shape: last bit only
    np.testing.assert_allclose(blocked.distances, full.distances, rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_counting_kernel_equals_the_sorting_implementation(seed, dtype, monkeypatch):
    """Identical first-match ranks and AP within 1e-12 of the previous (argsort) implementation,
    on random and on heavily tied data, with and without cameras, in one chunk and in many.
    (The reference uses the same row blocks: BLAS may round a product differently for another
    block shape, and on tied data that last bit decides the order.)"""
    cases = [_random_reid(seed, nq=15, ng=60), _tied_reid(seed, dtype)]
    for chunk in (RK.CHUNK_ELEMENTS, 7, 250):
        monkeypatch.setattr(RK, "CHUNK_ELEMENTS", chunk)
        for q, g, qp, gp, qc, gc in cases:
            q, g = q.astype(dtype), g.astype(dtype)
            for cams in ((None, None), (qc, gc)):
                ref_ap, ref_first = _sorting_reid(q, g, qp, gp, *cams, block_elements=chunk)
                if not (ref_first > 0).any():
                    with pytest.raises(ValueError, match="none of the"):
                        M.evaluate_reid(q, g, qp, gp, *cams)
                    continue
                res = M.evaluate_reid(q, g, qp, gp, *cams)
                np.testing.assert_array_equal(res.first_match, ref_first)
                np.testing.assert_array_equal(np.isnan(res.ap), np.isnan(ref_ap))
                assert np.nanmax(np.abs(res.ap - ref_ap)) <= 1e-12
                assert abs(res.mAP - np.nanmean(ref_ap)) <= 1e-12


def test_ties_between_junk_matches_and_wrong_items():
    # every gallery item at the same distance: the stable order is gallery order
    q = np.array([[1.0, 0.0]])
    g = np.tile([[0.0, 1.0]], (6, 1))
    gp = np.array([0, 1, 0, 0, 1, 0])
    gc = np.array([0, 0, 1, 0, 1, 1])  # items 0 and 3 are junk (pid 0, camera 0)
    res = M.evaluate_reid(q, g, [0], gp, [0], gc)
    # kept in order: 1 (wrong), 2 (match), 4 (wrong), 5 (match) -> ranks 2 and 4
    assert res.first_match.tolist() == [2]
    assert res.ap[0] == pytest.approx((1 / 2 + 2 / 4) / 2, abs=1e-15)


def test_unknown_query_camera_means_no_camera_filtering():
    q = np.array([[1.0, 0.0], [1.0, 0.0]])
    g = np.array([[1.0, 0.05], [1.0, 0.5], [1.0, 1.0]])
    gp, gc = np.array([0, 1, 0]), np.array([0, 1, 0])
    with pytest.warns(UserWarning, match=r"1 of 2 queries have an unknown camera \(camid -1\)") as rec:
        res = M.evaluate_reid(q, g, [0, 0], gp, [-1, 0], gc)
    assert len([w for w in rec if "unknown camera" in str(w.message)]) == 1  # said once
    # query 0 (camera unknown): both pid-0 items are true matches, ranks 1 and 3
    assert res.first_match.tolist() == [1, -1] and res.ap[0] == pytest.approx((1 + 2 / 3) / 2)
    # query 1 (camera 0): both pid-0 items share its camera -> junk, skipped
    assert res.n_skipped == 1
    # a gallery image of unknown camera is never junk; known cameras: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = M.evaluate_reid(q[:1], g, [0], gp, [0], [-1, 1, 0])
    assert res.first_match.tolist() == [1] and res.ap[0] == pytest.approx(1.0)


def test_top_k_smallest_and_prefix_equal_a_stable_argsort():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        block = rng.integers(0, 5, (7, 40)).astype(dtype)  # many ties
        ref = np.argsort(block, axis=1, kind="stable")
        for k in (1, 3, 10, 40, 50):
            np.testing.assert_array_equal(RK.top_k_smallest(block, k), ref[:, :k])
            for r in range(len(block)):
                np.testing.assert_array_equal(RK.smallest_prefix(block[r], k), ref[r, :k])
    assert RK.top_k_smallest(np.zeros((2, 3)), 0).shape == (2, 0)


def test_nearest_neighbours_in_chunks_equal_brute_force(monkeypatch):
    """Exact top-k of the other rows, chunk by chunk, equals a stable argsort of the full distance
    matrix (self excluded) on rows full of exact ties (components 0, +-1/2, +-1: every product is
    exact whatever the BLAS blocking), and scikit-learn's brute-force cosine neighbours on
    random rows."""
    rng = np.random.default_rng(0)
    signs = np.array(np.meshgrid(*[[-0.5, 0.5]] * 4)).reshape(4, -1).T
    pool = np.concatenate([np.eye(4), -np.eye(4), signs])
    x = pool[rng.integers(0, len(pool), 40)]
    monkeypatch.setattr(RK, "CHUNK_ELEMENTS", 3 * 40)   # three rows per chunk
    for dtype in (np.float64, np.float32):
        xd = x.astype(dtype)
        full = 1 - xd @ xd.T
        np.fill_diagonal(full, np.inf)
        ref = np.argsort(full, axis=1, kind="stable")
        for k in (1, 5, 39):
            idx, sim = M.nearest_neighbours(xd, k)
            np.testing.assert_array_equal(idx, ref[:, :k])
            np.testing.assert_array_equal(sim, 1 - np.take_along_axis(full, ref[:, :k], axis=1))
        index = M.NeighbourIndex(xd)
        for row in (5, 0, 39):   # one click at a time, as the explorer asks
            np.testing.assert_array_equal(index.search([row], 7)[0], ref[[row], :7])
        np.testing.assert_array_equal(index.search([5, 0, 5], 7)[0], ref[[5, 0, 5], :7])
    from sklearn.neighbors import NearestNeighbors

    y = rng.normal(size=(300, 16))
    want = NearestNeighbors(n_neighbors=8, metric="cosine", algorithm="brute").fit(y).kneighbors(return_distance=False)
    monkeypatch.setattr(RK, "CHUNK_ELEMENTS", 7 * 300)
    np.testing.assert_array_equal(M.nearest_neighbours(y, 8)[0], want)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 39\]"):
        M.nearest_neighbours(x, 40)
    with pytest.raises(IndexError, match="row 40 is not a row"):
        M.nearest_neighbours(x, 2, rows=[0, 40])


def test_protocol_codes_and_chunks():
    qc, gc, qk, gk = RK.protocol_codes([5, 7], [7, 9, 5], [2, -1], [-1, 2, 2])
    assert (qc.tolist(), gc.tolist(), qk.tolist(), gk.tolist()) == ([0, 1], [1, 2, 0], [0, -1], [-1, 0, 0])
    assert RK.protocol_codes(["a"], ["a"], None, None)[2].tolist() == [-1]
    assert list(RK.row_chunks(3, 10 * RK.CHUNK_ELEMENTS)) == [(0, 1), (1, 2), (2, 3)]  # at least one row


def test_camera_rule_hand_case():
    # query 0: pid 0 cam 0. Gallery by distance:
    #   g0 (pid 0, cam 0) < g1 (pid 1, cam 1) < g2 (pid 0, cam 1)
    # query 1: pid 5 cam 0, whose only gallery match g3 shares its camera -> junk, skipped
    q = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    g = np.array([[1.0, 0.05, 0.0], [1.0, 0.5, 0.0], [1.0, 1.0, 0.0], [0.0, 0.1, 1.0]])
    qp, gp = np.array([0, 5]), np.array([0, 1, 0, 5])
    qc, gc = np.array([0, 0]), np.array([0, 1, 1, 0])

    res = M.evaluate_reid(q, g, qp, gp, qc, gc, ranks=(1, 2))
    # g0 dropped (same pid, same cam); g2 kept (same pid, other cam) and ranked 2nd of [g1, g2, g3]
    assert res.first_match.tolist() == [2, -1]
    assert res.ap[0] == pytest.approx(1 / 2) and math.isnan(res.ap[1])
    assert (res.n_queries, res.n_skipped) == (2, 1)
    assert res.mAP == pytest.approx(0.5) and res.cmc == {1: 0.0, 2: 1.0}

    # camids None: all pairs cross-camera, nothing dropped
    res = M.evaluate_reid(q, g, qp, gp, ranks=(1,))
    assert res.first_match.tolist() == [1, 1]
    assert res.ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2) and res.ap[1] == pytest.approx(1.0)
    assert res.n_skipped == 0


def test_ties_are_broken_by_gallery_order():
    q = np.array([[1.0, 0.0]])
    g = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # g2 nearest, then g0 and g1 tie
    assert M.evaluate_reid(q, g, [1], [0, 1, 1]).ap[0] == pytest.approx((1 + 2 / 3) / 2)
    # ranked g2, g0, g1: the tied match g0 comes before the tied non-match g1
    assert M.evaluate_reid(q, g, [1], [1, 0, 1]).ap[0] == pytest.approx(1.0)


def test_evaluate_reid_errors():
    q, g = np.eye(2), np.eye(2)
    with pytest.raises(ValueError, match="gallery_camids"):
        M.evaluate_reid(q, g, [0, 1], [0, 1], query_camids=[0, 0])
    with pytest.raises(ValueError, match="dimension"):
        M.evaluate_reid(q, np.eye(3), [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="gallery_pids"):
        M.evaluate_reid(q, g, [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="both as ints or both as strings"):
        M.evaluate_reid(q, g, [0, 1], ["0", "1"])
    with pytest.raises(ValueError, match="none of the 2 queries"):
        M.evaluate_reid(q, g, [0, 1], [2, 3])
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        M.evaluate_reid(q, np.array([[1.0, 0.0], [0.0, 0.0]]), [0, 1], [0, 1])


def test_result_repr_and_dict():
    q, g, qp, gp, qc, gc = _random_reid(4)
    res = M.evaluate_reid(q, g, qp, gp, qc, gc, ranks=(1, 5))
    assert set(res.to_dict()) == {"mAP", "rank1", "rank5", "n_queries", "n_skipped", "reranked"}
    assert f"{res.mAP:.4f}" in repr(res) and "rank-5" in repr(res)
    assert res._repr_html_().startswith("<table>") and f"{res.cmc[1]:.4f}" in res._repr_html_()


# --------------------------------------------------------------------------------- re-ranking


def _slow_rerank(qg, qq, gg, k1, k2, lam):
    """Straight from the paper's definitions (Zhong et al. 2017, eqs. 2-12), dense and loop-based."""
    nq, ng = qg.shape
    n = nq + ng
    d = np.block([[qq, qg], [qg.T, gg]]).astype(np.float64)
    d = d / d.max(axis=1, keepdims=True)
    order = [list(np.argsort(d[i], kind="stable")) for i in range(n)]

    def nn(p, k):  # N(p, k), p itself included as in the authors' code
        return order[p][: k + 1]

    def recip(p, k):  # R(p, k)
        return [x for x in nn(p, k) if p in nn(x, k)]

    v = np.zeros((n, n))
    for p in range(n):
        r = set(recip(p, k1))
        star = set(r)
        for x in r:
            rx = set(recip(x, round(k1 / 2)))
            if len(rx & r) > 2 / 3 * len(rx):
                star |= rx
        for x in star:
            v[p, x] = math.exp(-d[p, x])
        v[p] /= v[p].sum()
    if k2 > 1:
        v = np.array([v[order[p][:k2]].mean(axis=0) for p in range(n)])
    out = np.zeros((nq, ng))
    for i in range(nq):
        for j in range(ng):
            a, b = v[i], v[nq + j]
            jac = 1 - np.minimum(a, b).sum() / np.maximum(a, b).sum()
            out[i, j] = (1 - lam) * jac + lam * d[i, nq + j]
    return out


@pytest.mark.parametrize("k1,k2,lam", [(4, 3, 0.3), (6, 1, 0.5), (5, 2, 0.0)])
def test_rerank_matches_slow_reference(k1, k2, lam):
    rng = np.random.default_rng(k1)
    x = rng.normal(size=(30, 6))
    sq = lambda a, b: ((a[:, None] - b[None]) ** 2).sum(-1)  # noqa: E731
    q, g = x[:8], x[8:]
    fast = M.rerank_k_reciprocal(sq(q, g), sq(q, q), sq(g, g), k1=k1, k2=k2, lambda_value=lam)
    slow = _slow_rerank(sq(q, g), sq(q, q), sq(g, g), k1, k2, lam)
    assert fast.shape == (8, 22)
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_rerank_lambda_one_is_row_normalised_original():
    rng = np.random.default_rng(1)
    x = _unit(rng.normal(size=(15, 4)))
    d = 1 - x @ x.T
    out = M.rerank_k_reciprocal(d[:5, 5:], d[:5, :5], d[5:, 5:], k1=3, k2=2, lambda_value=1.0)
    np.testing.assert_allclose(out, d[:5, 5:] / d[:5].max(axis=1, keepdims=True), atol=1e-6)


def test_evaluate_reid_rerank_uses_rerank_and_helps_on_clustered_gallery():
    # planted: tight gallery clusters of 6 images per identity, one much noisier query per identity
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(15, 32))
    g = np.repeat(centres, 6, axis=0) + 1.0 * rng.normal(size=(90, 32))
    q = centres + 1.6 * rng.normal(size=(15, 32))
    qp, gp = np.arange(15), np.repeat(np.arange(15), 6)
    plain = M.evaluate_reid(q, g, qp, gp)
    rr = M.evaluate_reid(q, g, qp, gp, rerank=True, k1=6, k2=3, return_distances=True)
    assert rr.reranked and "re-ranked" in repr(rr)
    qn, gn = _unit(q), _unit(g)
    expected = M.rerank_k_reciprocal(1 - qn @ gn.T, 1 - qn @ qn.T, 1 - gn @ gn.T, k1=6, k2=3)
    np.testing.assert_allclose(rr.distances, expected, atol=1e-6)
    ref_ap, _ = _reference_reid(q, g, qp, gp, None, None, dist=rr.distances)
    assert rr.mAP == pytest.approx(ref_ap.mean())
    assert rr.mAP > plain.mAP + 0.05


def test_rerank_errors(monkeypatch):
    z = np.zeros
    with pytest.raises(ValueError, match="g_g_dist"):
        M.rerank_k_reciprocal(z((2, 3)), z((2, 2)), z((2, 2)))
    with pytest.raises(ValueError, match="lambda_value"):
        M.rerank_k_reciprocal(z((2, 3)), z((2, 2)), z((3, 3)), lambda_value=2)
    monkeypatch.setattr(M, "RERANK_MAX_IMAGES", 4)
    msg = r"pools the 2 queries and 3 gallery images into one 5 x 5 .*practical up to 4 images.*rerank=False"
    with pytest.raises(ValueError, match=msg):
        M.rerank_k_reciprocal(z((2, 3)), z((2, 2)), z((3, 3)))
    with pytest.raises(ValueError, match=msg):  # refused before any matrix is built
        M.evaluate_reid(np.eye(2), np.eye(3)[:, :2] + 0.1, [0, 1], [0, 1, 1], rerank=True)


# ------------------------------------------------------------------------------ zero-shot probe


def test_classify_zero_shot_hand_case():
    text = np.eye(3)
    imgs = np.array([[0.9, 0.1, 0], [0, 1, 0.2], [0.5, 0, 0.4], [1, 0, 0], [0, 0, 2]])
    res = M.classify_zero_shot(imgs, text, [0, 1, 2, -1, 2], ["red", "blue", "green"], top_k=2)
    assert res.predictions.tolist() == [0, 1, 0, 0, 2]
    assert res.accuracy == pytest.approx(3 / 4) and res.k == 2
    assert res.top_k_accuracy == pytest.approx(1.0)  # image 2: green is its 2nd choice
    assert res.chance == pytest.approx(1 / 3) and res.majority_rate == pytest.approx(2 / 4)
    assert (res.n_evaluated, res.n_unknown) == (4, 1)
    assert res.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    np.testing.assert_allclose(res.per_class_accuracy, [1.0, 1.0, 0.5])
    assert "green" in res._repr_html_() and "0.7500" in repr(res)


def test_classify_zero_shot_vs_sklearn():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(10, 8))
    labels = rng.integers(-1, 10, 200)
    imgs = text[np.clip(labels, 0, None)] * 0.5 + rng.normal(size=(200, 8))
    res = M.classify_zero_shot(torch.tensor(imgs), torch.tensor(text), torch.tensor(labels), top_k=5)
    known = labels >= 0
    scores = _unit(imgs) @ _unit(text).T
    assert res.accuracy == pytest.approx(accuracy_score(labels[known], scores[known].argmax(1)))
    assert res.top_k_accuracy == pytest.approx(
        top_k_accuracy_score(labels[known], scores[known], k=5, labels=np.arange(10))
    )
    np.testing.assert_array_equal(
        res.confusion, confusion_matrix(labels[known], scores[known].argmax(1), labels=np.arange(10))
    )
    assert res.majority_rate == pytest.approx(np.bincount(labels[known]).max() / known.sum())
    assert 0.1 < res.accuracy < 1.0  # neither chance nor trivial on this planted signal


def test_classify_zero_shot_errors():
    with pytest.raises(ValueError, match=r"labels\[1\] = 3"):
        M.classify_zero_shot(np.eye(3), np.eye(3), [0, 3, 1])
    with pytest.raises(ValueError, match="unknown"):
        M.classify_zero_shot(np.eye(3), np.eye(3), [-1, -1, -1])
    with pytest.raises(ValueError, match="class_names"):
        M.classify_zero_shot(np.eye(3), np.eye(3), [0, 1, 2], ["a", "b"])


# ----------------------------------------------------------------------------- geometry


def test_knn_accuracy_vs_sklearn_leave_one_out():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    emb = rng.normal(size=(60, 5)) + 0.8 * labels[:, None]
    ref = []
    for i in range(60):  # leave-one-out with sklearn's classifier (2 classes, odd k: no vote ties)
        rest = np.arange(60) != i
        clf = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute")
        ref.append(clf.fit(emb[rest], labels[rest]).predict(emb[i : i + 1])[0] == labels[i])
    assert M.knn_accuracy(emb, labels, k=5) == pytest.approx(np.mean(ref))


def test_knn_accuracy_tie_goes_to_nearest_label():
    ang = np.deg2rad([0.0, 10.0, 25.0])
    emb = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    # k=2; p0 and p1 have 1-1 votes, won by the nearer neighbour:
    #   p0: p1 "b" (10 deg), p2 "a" (25 deg) -> "b" right
    #   p1: p0 "b" (10 deg), p2 "a" (15 deg) -> "b" right
    #   p2: p1 "b", p0 "b"                   -> "b" wrong
    # (smallest-label tie-breaking would score 0)
    assert M.knn_accuracy(emb, ["b", "b", "a"], k=2) == pytest.approx(2 / 3)


def _knn_sets(x, k):
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return [set(np.argsort(row)[:k]) for row in d]


def test_neighbourhood_overlap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    assert M.neighbourhood_overlap(x, x, k=5, metric_high="euclidean") == pytest.approx(1.0)
    low = x[:, :2] + 0.3 * rng.normal(size=(40, 2))
    hi_sets, lo_sets = _knn_sets(x, 5), _knn_sets(low, 5)
    expected = np.mean([len(a & b) / 5 for a, b in zip(hi_sets, lo_sets)])
    assert M.neighbourhood_overlap(x, low, k=5, metric_high="euclidean") == pytest.approx(expected)
    assert expected < 1.0
    # cosine default: scaling the rows of the original space changes nothing
    assert M.neighbourhood_overlap(x * rng.uniform(1, 5, (40, 1)), x, k=5) == pytest.approx(
        M.neighbourhood_overlap(x, x, k=5)
    )


def _trust_by_definition(high, low, k):
    """Venna & Kaski: T = 1 - 2/(n k (2n - 3k - 1)) sum_i sum_{j in U_k(i)} (r(i, j) - k)."""
    n = len(high)
    dh = ((high[:, None] - high[None]) ** 2).sum(-1)
    np.fill_diagonal(dh, np.inf)
    rank_h = np.argsort(np.argsort(dh, axis=1), axis=1) + 1  # r(i, j), 1 = nearest
    penalty = 0
    for i, lo_set in enumerate(_knn_sets(low, k)):
        penalty += sum(rank_h[i, j] - k for j in lo_set if rank_h[i, j] > k)
    return 1 - 2 / (n * k * (2 * n - 3 * k - 1)) * penalty


def test_trustworthiness():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    assert M.trustworthiness(x, x, k=5, metric_high="euclidean") == pytest.approx(1.0)
    low = rng.normal(size=(40, 2))
    ours = M.trustworthiness(x, low, k=5, metric_high="euclidean")
    assert ours == pytest.approx(_trust_by_definition(x, low, 5)) and ours < 0.9
    # sampling: deterministic for a seed, still 1 for an identical projection;
    # without sampling it is sklearn's number (cosine in the original space by default)
    assert M.trustworthiness(x, low, k=3, max_samples=20, seed=1) == M.trustworthiness(
        x, low, k=3, max_samples=20, seed=1
    )
    assert M.trustworthiness(x, x, k=3, max_samples=20, metric_high="euclidean") == pytest.approx(1.0)
    ref = sk_trustworthiness(x, low, n_neighbors=5, metric="cosine")
    assert M.trustworthiness(x, low, k=5) == pytest.approx(ref)
    with pytest.raises(ValueError, match="lower k"):
        M.trustworthiness(x, low, k=20)


def test_alignment():
    assert M.alignment([[1, 0], [0, 2]], [[3, 0], [0, 1]]) == pytest.approx(0.0)
    assert M.alignment([[1, 0]], [[-1, 0]]) == pytest.approx(4.0)  # antipodal: ||2e1||^2
    assert M.alignment([[1, 0]], [[-1, 0]], alpha=1) == pytest.approx(2.0)
    assert M.alignment(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same shape"):
        M.alignment(np.ones((2, 3)), np.ones((3, 3)))


def test_uniformity(monkeypatch):
    assert M.uniformity([[1, 0], [-1, 0]]) == pytest.approx(-8.0)  # one pair, squared distance 4
    tri = [[1, 0], [-0.5, math.sqrt(3) / 2], [-0.5, -math.sqrt(3) / 2]]
    assert M.uniformity(tri, t=1) == pytest.approx(-3.0)  # three pairs, squared distance 3
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    xn = torch.nn.functional.normalize(x, dim=1).double()
    ref = torch.pdist(xn, p=2).pow(2).mul(-2).exp().mean().log().item()  # Wang & Isola's formula
    assert M.uniformity(x) == pytest.approx(ref)
    monkeypatch.setattr(M, "_BLOCK_ELEMENTS", 3 * 50)  # several blocks
    assert M.uniformity(x) == pytest.approx(ref)


def test_modality_gap():
    assert M.modality_gap([[2, 0], [1, 0]], [[0, 3]]) == pytest.approx(math.sqrt(2))
    assert M.modality_gap([[1, 0], [0, 1]], [[0, 5], [7, 0]]) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 6)), rng.normal(size=(7, 6)) + 2
    assert M.modality_gap(a, b) == pytest.approx(np.linalg.norm(_unit(a).mean(0) - _unit(b).mean(0)))


# ------------------------------------------------------------------- evaluate (model + dataset)


def _tiny_dataset(root, bad: str | None = None, on_error: str = "skip"):
    """3 identities x 3 PNG images (identity = colour), first image of each the query; no cameras."""
    from PIL import Image

    from cliptk.data import ReIdDataset

    rows = []
    for pid, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        for k in range(3):
            name = f"{pid}_{k}.png"
            Image.new("RGB", (16, 32), tuple(c + 15 * k for c in colour)).save(root / name)
            rows.append({"path": name, "pid": pid, "split": "query" if k == 0 else "gallery"})
    if bad:
        (root / bad).write_bytes(b"this is not a png")
    import pandas as pd

    return ReIdDataset(root, pd.DataFrame(rows), name="tiny", on_error=on_error)


def test_evaluate_leaves_unreadable_images_out_and_says_so(micro_model, tmp_path):
    import cliptk as ct
    from cliptk.data import camids_for_evaluation

    ds = _tiny_dataset(tmp_path, bad="1_2.png")
    with pytest.warns(UserWarning) as rec:
        res = ct.evaluate(micro_model, ds, progress=False)
    messages = [str(w.message) for w in rec]
    assert any("left out 1 of 6" in m and "1_2.png" in m for m in messages)
    assert sum("cameras unknown" in m for m in messages) == 1  # said once
    assert res.n_unreadable == 1 and "1 left out" in repr(res)
    # the reference: the readable gallery only, and the no-camera rule of the dataset module
    q, g = ds.subset("query"), ds.subset("gallery")
    g = g.select(np.array([p != "1_2.png" for p in g.table["path"]]))
    qf, gf = ct.embed(micro_model, q, progress=False), ct.embed(micro_model, g, progress=False)
    qc, gc, known = camids_for_evaluation(q, g)
    ref = M.evaluate_reid(qf, gf, q.pids, g.pids, qc, gc)
    assert not known and res.n_queries == 3
    np.testing.assert_allclose(res.ap, ref.ap)
    np.testing.assert_array_equal(res.first_match, ref.first_match)


def test_evaluate_blames_the_model_only_for_a_readable_image(micro_model, tmp_path, monkeypatch):
    import importlib

    import cliptk as ct

    E = importlib.import_module("cliptk.evaluate")  # the module (ct.evaluate is the function)
    ds = _tiny_dataset(tmp_path)
    real = E.embed

    def nan_row(model, dataset, **kw):  # a model that returns NaN for a readable image
        out = real(model, dataset, **kw)
        if "2_1.png" in list(dataset.table["path"]):
            out[list(dataset.table["path"]).index("2_1.png")] = float("nan")
        return out

    monkeypatch.setattr(E, "embed", nan_row)
    with pytest.raises(ValueError, match=r"model gave a NaN/inf embedding for .*2_1\.png.*although the image reads"):
        ct.evaluate(micro_model, ds, progress=False)
