"""Where a re-id model fails, in numbers: per-group mAP, confused identities, and the
similarity distributions of true and false pairs with the operating threshold.

* :func:`ap_breakdown` — mAP per identity, camera, sequence or any metadata column, worst first;
* :func:`confused_pairs` — identity pairs whose images outrank the true match (what costs rank-1);
* :func:`pos_neg_similarities`, :func:`similarity_threshold` (the operating point at a chosen
  false-match rate) and :func:`plot_similarity_hist`.

Tables are ``pandas.DataFrame`` ranked worst first; show their image columns with
:func:`cliptk.diagnose.table_html`.

Example:
    >>> from cliptk.diagnose import rank_gallery
    >>> q = np.eye(4); q[3] = [0, 0, 0.8, 0.6]      # query 3 (pid 3) looks like identity 2
    >>> r = rank_gallery(q, np.eye(4), [0, 1, 2, 3], [0, 1, 2, 3])
    >>> ap_breakdown(r)["mAP"].tolist()
    [0.5, 1.0, 1.0, 1.0]
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .ranking import Ranking
from .views import COLOURS

__all__ = ["ap_breakdown", "confused_pairs", "pos_neg_similarities", "similarity_threshold", "plot_similarity_hist"]


def ap_breakdown(ranking: Ranking, by: str | Sequence[Any] = "pid") -> pd.DataFrame:
    """Mean AP, rank-1 rate and mean first-match rank per group of queries, worst first.

    Args:
        ranking: from :func:`rank_gallery`.
        by: ``"pid"`` (per identity), ``"camid"``, any column of the query table (e.g.
            ``"sequence"`` for DeepSportRadar, ``"team"`` for the synthetic players), or an array
            with one group label per query.

    Returns:
        A DataFrame indexed by group with columns ``queries``, ``evaluated`` (queries with a
        valid match), ``mAP``, ``rank1`` and ``mean_first_match`` over the evaluated queries,
        sorted by ``mAP`` ascending (groups with no evaluated query last).

    Raises:
        KeyError: ``by`` names no column of the query table (the message lists them).
        ValueError: an array ``by`` of the wrong length.

    Example (``"sequence"`` or ``"team"`` work the same on a dataset's query table):
        >>> from cliptk.diagnose import rank_gallery
        >>> q = np.eye(4); q[3] = [0, 0, 0.8, 0.6]      # query 3 (pid 3) looks like identity 2
        >>> r = rank_gallery(q, np.eye(4), [0, 1, 2, 3], [0, 1, 2, 3])
        >>> ap_breakdown(r, [0, 0, 1, 1])["mAP"].to_dict()     # two groups of queries
        {1: 0.75, 0: 1.0}
    """
    if isinstance(by, str):
        table = ranking.query_table
        if table is None or by not in table.columns:
            cols = [] if table is None else list(table.columns)
            raise KeyError(f"ap_breakdown: no query column {by!r}; available: {cols}")
        groups, name = table[by].to_numpy(), by
    else:
        groups, name = np.asarray(by), "group"
        if groups.shape != (ranking.n_queries,):
            raise ValueError(f"ap_breakdown: by has shape {groups.shape}; give one label per query ({ranking.n_queries})")
    ok = ranking.first_match > 0
    t = pd.DataFrame({name: groups, "ap": ranking.ap, "ok": ok,
                      "rank1": np.where(ok, ranking.first_match == 1, np.nan),
                      "fm": np.where(ok, ranking.first_match, np.nan)})
    out = t.groupby(name, sort=True).agg(queries=("ap", "size"), evaluated=("ok", "sum"), mAP=("ap", "mean"),
                                        rank1=("rank1", "mean"), mean_first_match=("fm", "mean"))
    return out.sort_values("mAP", na_position="last", kind="stable")


def _pair(a: Any, b: Any) -> tuple[Any, Any]:
    a, b = (v.item() if isinstance(v, np.generic) else v for v in (a, b))
    try:
        return (a, b) if a <= b else (b, a)
    except TypeError:  # mixed types: order by text
        return (a, b) if str(a) <= str(b) else (b, a)


def confused_pairs(ranking: Ranking, top: int | None = 20) -> pd.DataFrame:
    """Identity pairs most often confused: gallery images of one identity ranked above the first
    true match of a query of the other.

    Every evaluated query contributes each wrong-identity gallery item that it ranks before its
    first correct match (an "impostor": what costs rank-1). Counts are pooled per unordered pair
    of identities.

    Returns:
        A DataFrame, most confused first (``count`` then ``max_similarity``), with columns
        ``pid_a``, ``pid_b`` (sorted within the pair), ``count`` (impostor events),
        ``queries`` (distinct queries affected), ``max_similarity``, ``mean_similarity`` and an
        example pair: ``query_index`` / ``gallery_index`` of the most similar impostor (show
        them with :func:`table_html`).

    Example (then ``table_html(t, {"query_index": r.query_images, "gallery_index": r.gallery_images})``):
        >>> from cliptk.diagnose import rank_gallery
        >>> q = np.eye(4); q[3] = [0, 0, 0.8, 0.6]      # query 3 (pid 3) looks like identity 2
        >>> r = rank_gallery(q, np.eye(4), [0, 1, 2, 3], [0, 1, 2, 3])
        >>> t = confused_pairs(r)
        >>> t[["pid_a", "pid_b", "count", "query_index", "gallery_index"]].values.tolist()
        [[2, 3, 1, 3, 2]]
    """
    records = []
    for q in np.flatnonzero(ranking.first_match > 0):
        r = ranking.ranked(q)
        first = int(np.flatnonzero((r["status"] == "match").to_numpy())[0])
        before = r.iloc[:first]
        before = before[before["status"] == "wrong"]
        for g, pid, sim in zip(before["gallery_index"], before["pid"], before["similarity"]):
            a, b = _pair(ranking.query_pids[q], pid)
            records.append((a, b, int(q), int(g), float(sim)))
    cols = ["pid_a", "pid_b", "count", "queries", "max_similarity", "mean_similarity", "query_index", "gallery_index"]
    if not records:
        return pd.DataFrame(columns=cols)
    ev = pd.DataFrame(records, columns=["pid_a", "pid_b", "query_index", "gallery_index", "similarity"])
    best = ev.loc[ev.groupby(["pid_a", "pid_b"])["similarity"].idxmax(), ["pid_a", "pid_b", "query_index", "gallery_index"]]
    agg = ev.groupby(["pid_a", "pid_b"]).agg(count=("similarity", "size"), queries=("query_index", "nunique"),
                                             max_similarity=("similarity", "max"),
                                             mean_similarity=("similarity", "mean")).reset_index()
    out = agg.merge(best, on=["pid_a", "pid_b"]).sort_values(["count", "max_similarity"], ascending=False,
                                                            kind="stable")
    out = out[cols].reset_index(drop=True)
    return out if top is None else out.head(top)


def pos_neg_similarities(ranking: Ranking) -> tuple[np.ndarray, np.ndarray]:
    """Similarities (``1 - distance``) of all positive and all negative query-gallery pairs.

    Positive: same identity, not junk (same identity and camera pairs are left out); negative:
    different identities. Returns ``(pos, neg)`` as flat float arrays.

    Example:
        >>> from cliptk.diagnose import rank_gallery
        >>> q = np.eye(4); q[3] = [0, 0, 0.8, 0.6]      # query 3 (pid 3) looks like identity 2
        >>> r = rank_gallery(q, np.eye(4), [0, 1, 2, 3], [0, 1, 2, 3])
        >>> pos, neg = pos_neg_similarities(r)
        >>> pos.tolist(), int(neg.size), similarity_threshold(pos, neg, fmr=0.1)
        ([1.0, 1.0, 1.0, 0.6], 12, 0.6)
    """
    same = ranking.query_pids[:, None] == ranking.gallery_pids[None, :]
    junk = ranking.junk_mask()   # same identity and camera; nothing for queries with unknown cameras
    sim = ranking.similarity
    return sim[same & ~junk], sim[~same]


def _scores(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty; need at least one similarity")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def similarity_threshold(pos: Any, neg: Any, fmr: float = 0.01) -> float:
    """The lowest similarity threshold whose false-match rate on ``neg`` is at most ``fmr``.

    A pair "matches" when its similarity is ``>= threshold``. Among thresholds with
    ``mean(neg >= t) <= fmr`` the lowest one maximises the true-match rate ``mean(pos >= t)``;
    it is returned as an observed score (the smallest of ``pos`` and ``neg`` above the
    ``floor(fmr * len(neg)) + 1``-th highest negative), or just above the highest negative
    when no score lies above it. With ``fmr >= 1`` every pair matches: ``-inf``.

    Args:
        pos, neg: similarities of positive and negative pairs (any shape; flattened).
        fmr: allowed false-match rate in ``[0, 1]``.

    Raises:
        ValueError: empty inputs, NaN/inf, or ``fmr`` outside ``[0, 1]``.

    Example:
        >>> similarity_threshold([0.9, 0.8, 0.4], [0.1, 0.2, 0.5, 0.3], fmr=0.25)
        0.4
        >>> similarity_threshold([0.9, 0.8, 0.4], [0.1, 0.2, 0.5, 0.3], fmr=0.0)
        0.8
    """
    p, n = _scores(pos, "pos"), _scores(neg, "neg")
    if not 0.0 <= fmr <= 1.0:
        raise ValueError(f"fmr must be a rate in [0, 1], got {fmr}")
    m = int(np.floor(fmr * n.size + 1e-9))  # negatives allowed at or above the threshold
    if m >= n.size:
        return float("-inf")
    bound = np.sort(n)[::-1][m]  # this negative (and all below it) must be rejected
    above = np.concatenate([p, n])
    above = above[above > bound]
    return float(above.min()) if above.size else float(np.nextafter(bound, np.inf))


def plot_similarity_hist(pos: Any, neg: Any, fmr: float | None = 0.01, bins: int = 60,
                         title: str = "Similarity of positive and negative pairs") -> go.Figure:
    """Overlaid density histograms of positive and negative similarities, with the threshold at
    false-match rate ``fmr`` (and the true-match rate it gives) as a vertical line.

    Example (``.show()`` the figure in a notebook):
        >>> fig = plot_similarity_hist([0.9, 0.8, 0.7], [0.1, 0.5, 0.3, 0.2], fmr=0.25)
        >>> [tr.name for tr in fig.data]
        ['negative (4)', 'positive (3)']
    """
    p, n = _scores(pos, "pos"), _scores(neg, "neg")
    lo, hi = float(min(p.min(), n.min())), float(max(p.max(), n.max()))
    size = (hi - lo) / bins if hi > lo else 1.0
    fig = go.Figure()
    for data, name, colour in ((n, f"negative ({n.size})", COLOURS["wrong"]), (p, f"positive ({p.size})", COLOURS["match"])):
        fig.add_trace(go.Histogram(x=data, name=name, histnorm="probability density", opacity=0.6,
                                   marker_color=colour, xbins=dict(start=lo, end=hi + size, size=size)))
    if fmr is not None:
        t = similarity_threshold(p, n, fmr)
        tmr, real = float(np.mean(p >= t)), float(np.mean(n >= t))
        x = t if np.isfinite(t) else lo
        fig.add_vline(x=x, line=dict(color="black", dash="dash"),
                      annotation_text=f"FMR {real:.2%} (≤ {fmr:.2%}): threshold {t:.3f}, TMR {tmr:.2%}",
                      annotation_position="top left")
    fig.update_layout(barmode="overlay", title=title, xaxis_title="similarity (1 - distance)",
                      yaxis_title="density", width=750, height=400)
    return fig
