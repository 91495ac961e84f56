"""Look inside one InfoNCE batch: who competes with whom, and what the temperature does.

CLIP-ReIdent trains on batches of ``B`` (query, positive) pairs; InfoNCE asks every query to pick
its own positive out of the ``B`` positives of the batch, by a softmax over ``cos / T``.
:func:`inspect_batch` draws one batch exactly as a sampler yields it (default:
:class:`cliptk.samplers.UniqueIdPairSampler`, the one :func:`cliptk.train.fit` uses), embeds it
and returns a :class:`BatchInspection`: the query x positive cosine matrix, the softmax of any
query's row and each pair's loss term at any temperature, and the **false negatives**: off-diagonal
pairs of the same identity, which InfoNCE pushes apart although they match. :func:`plot_batch`
draws the matrix as a heatmap with thumbnails on both axes (false negatives crossed, the diagonal
framed) beside the chosen query's softmax row; :func:`compare_batches` puts a random batch (identities
may repeat) beside a unique-identity batch; :func:`batch_inspector` is the ipywidgets version with a
temperature slider (ipywidgets loads only there).

The numbers are InfoNCE's: ``loss_terms(T).mean()`` is :class:`cliptk.losses.InfoNCE` with
``label_smoothing=0`` at ``logit_scale = 1 / T`` (``tests/test_batch_inspector.py``).

Example (random unit vectors stand in for a model's embeddings):
    >>> rng = np.random.default_rng(0)
    >>> q, p = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    >>> ins = inspect_embeddings(q, p, pids=[0, 1, 2, 0], temperature=0.1)
    >>> ins.false_negatives.nonzero()          # query 0's row holds query 3's positive, same identity
    (array([0, 3]), array([3, 0]))
    >>> round(float(ins.softmax(0).sum()), 6), ins.loss_terms().shape
    (1.0, (4,))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from .._util import thumbnail_uri, to_numpy, unit_rows

__all__ = ["BatchInspection", "inspect_embeddings", "inspect_batch", "random_pair_batch", "plot_batch",
           "compare_batches", "batch_inspector"]


def _log_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


@dataclass(eq=False, repr=False)
class BatchInspection:
    """One batch of ``B`` (query, positive) pairs as InfoNCE sees it.

    Attributes:
        similarity: ``[B, B]`` cosine of query ``i`` and positive ``j`` (row = query).
        pids: ``[B]`` identity of each pair (query ``i`` and positive ``i`` share it).
        temperature: the default temperature ``T`` (logits are ``cos / T``).
        indices: ``[2B]`` dataset rows ``[q_1..q_B, p_1..p_B]`` (``None`` for bare embeddings).
        images: ``2B`` PIL images in the same order (for thumbnails), or ``None``.
        label: a name for titles (``"unique-identity batch"`` ...).
    """

    similarity: np.ndarray
    pids: np.ndarray
    temperature: float
    indices: np.ndarray | None = None
    images: list[Image.Image] | None = None
    label: str = "batch"
    _thumbs: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        """``B``, the number of pairs."""
        return self.similarity.shape[0]

    @property
    def false_negatives(self) -> np.ndarray:
        """``[B, B]`` bool: off-diagonal (query ``i``, positive ``j``) of the same identity."""
        same = self.pids[:, None] == self.pids[None, :]
        return same & ~np.eye(self.size, dtype=bool)

    def _t(self, temperature: float | None) -> float:
        t = self.temperature if temperature is None else float(temperature)
        if not t > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return t

    def softmax(self, query: int | None = None, temperature: float | None = None) -> np.ndarray:
        """Query ``query``'s softmax over the ``B`` positives (``[B]``), or all rows ``[B, B]``."""
        p = np.exp(_log_softmax(self.similarity / self._t(temperature), axis=1))
        return p if query is None else p[self._query(query)]

    def loss_terms(self, temperature: float | None = None) -> np.ndarray:
        """``[B]`` InfoNCE term of each pair: ``½ [CE(row i, i) + CE(column i, i)]`` of the logits
        ``cos / T`` (query→positive and positive→query); their mean is the batch loss."""
        z = self.similarity / self._t(temperature)
        d = np.arange(self.size)
        return 0.5 * (-_log_softmax(z, axis=1)[d, d] - _log_softmax(z, axis=0)[d, d])

    def loss(self, temperature: float | None = None) -> float:
        """The batch's InfoNCE loss (no label smoothing) at ``temperature``."""
        return float(self.loss_terms(temperature).mean())

    def _query(self, q: int) -> int:
        if not -self.size <= int(q) < self.size:
            raise IndexError(f"query {q} is out of range for a batch of {self.size} pairs")
        return int(q) % self.size

    def summary(self, temperature: float | None = None) -> str:
        """One line: loss, accuracy of the argmax, false negatives."""
        t = self._t(temperature)
        acc = float((self.similarity.argmax(1) == np.arange(self.size)).mean())
        return (f"{self.label}: B={self.size}, T={t:.3g}, InfoNCE {self.loss(t):.3f}, top-1 {acc:.0%}, "
                f"{int(self.false_negatives.sum())} false-negative pairs")

    def thumbnail(self, i: int, height: int) -> str | None:
        """Data URI of image ``i`` of ``images`` (cached), or ``None``."""
        if self.images is None:
            return None
        key = (i, height)
        if key not in self._thumbs:
            self._thumbs[key] = thumbnail_uri(self.images[i], height=height, fmt="JPEG", quality=85)
        return self._thumbs[key]

    def __repr__(self) -> str:
        return f"BatchInspection({self.summary()})"


def inspect_embeddings(query_emb: Any, positive_emb: Any, pids: Sequence[int] | np.ndarray | None = None, *,
                       temperature: float = 0.07, images: Sequence[Image.Image] | None = None,
                       indices: Sequence[int] | None = None, label: str = "batch") -> BatchInspection:
    """A :class:`BatchInspection` of precomputed embeddings (rows are L2-normalised here).

    Args:
        query_emb, positive_emb: ``[B, D]``; row ``i`` of each is pair ``i``.
        pids: ``[B]`` identities of the pairs (``None``: all distinct).
        temperature: ``T`` of ``cos / T`` (CLIP's learnt value is ``1 / logit_scale.exp()``).
        images: ``2B`` images, queries then positives (thumbnails).

    Raises:
        ValueError: shapes differ, or ``pids`` / ``images`` have the wrong length.
    """
    q, p = unit_rows(query_emb, "query_emb", np.float64), unit_rows(positive_emb, "positive_emb", np.float64)
    if q.shape != p.shape:
        raise ValueError(f"query_emb {q.shape} and positive_emb {p.shape} must have the same shape [B, D]")
    b = q.shape[0]
    ids = np.arange(b) if pids is None else np.asarray(to_numpy(pids, "pids")).reshape(-1)
    if len(ids) != b:
        raise ValueError(f"pids has {len(ids)} entries for {b} pairs")
    if images is not None and len(images) != 2 * b:
        raise ValueError(f"images has {len(images)} entries; pass 2B = {2 * b} (queries, then positives)")
    out = BatchInspection(q @ p.T, ids, float(temperature), None if indices is None else np.asarray(indices),
                          None if images is None else list(images), label)
    out._t(None)
    return out


def random_pair_batch(pids: Sequence[int] | np.ndarray, batch_size: int, seed: int = 0) -> list[int]:
    """A batch of ``batch_size`` random (query, positive) pairs **without** the unique-identity
    rule: queries drawn uniformly from the images whose identity has another image, so an identity
    can appear twice (what a plain shuffled loader gives). Returns ``[q_1..q_B, p_1..p_B]``.

    Raises:
        ValueError: fewer than ``batch_size`` images can form a pair.

    Example:
        >>> len(random_pair_batch([0, 0, 1, 1, 2], 2))
        4
    """
    pids = np.asarray(pids)
    rng = np.random.default_rng([seed, 29])
    _, inverse, counts = np.unique(pids, return_inverse=True, return_counts=True)
    ok = np.flatnonzero((counts[inverse] >= 2) & (pids >= 0) if pids.dtype.kind in "iu" else counts[inverse] >= 2)
    if len(ok) < batch_size:
        raise ValueError(f"random_pair_batch: {len(ok)} images have a partner of the same identity, fewer than "
                         f"batch_size={batch_size}")
    queries = rng.choice(ok, batch_size, replace=False)
    positives = [int(rng.choice(np.flatnonzero((pids == pids[q]) & (np.arange(len(pids)) != q)))) for q in queries]
    return [int(q) for q in queries] + positives


def inspect_batch(model, dataset, batch: Sequence[int] | None = None, *, sampler=None, batch_size: int = 16,
                  seed: int = 0, epoch: int = 0, index: int = 0, temperature: float | None = None,
                  embeddings: Any = None, label: str | None = None, split: str | None = "train") -> BatchInspection:
    """Draw one training batch and inspect it (any model and :class:`cliptk.ReIdDataset`).

    The batch is ``batch`` (a flat index list ``[q_1..q_B, p_1..p_B]``) or the ``index``-th batch
    of ``epoch`` from ``sampler`` (default: :class:`cliptk.samplers.UniqueIdPairSampler` of the
    rows' pids with ``batch_size`` and ``seed``, what :func:`cliptk.train.fit` draws without
    ``group_by``). The images are embedded by ``model`` (eval mode, no flip), or their rows are
    taken from ``embeddings`` (``[N, D]`` for the whole of the rows).

    Args:
        model: a :class:`cliptk.ClipModel` (its temperature ``1 / logit_scale.exp()`` is the
            default); may be ``None`` when ``embeddings`` and ``temperature`` are given.
        dataset: the dataset; with several splits its ``split`` rows (``None``: all rows).
        temperature: ``T``; default: the model's.

    Raises:
        ValueError: an odd-length batch, or no model and no embeddings / temperature.

    Example:
        >>> ins = inspect_batch(model, players, batch_size=8)     # doctest: +SKIP
        >>> plot_batch(ins, query=0).show()                        # doctest: +SKIP
    """
    from ..samplers import UniqueIdPairSampler

    rows = dataset.subset(split) if split is not None and len(dataset.split_names) > 1 else dataset
    if batch is None:
        sampler = sampler if sampler is not None else UniqueIdPairSampler(rows.pids, batch_size, seed=seed)
        sampler.set_epoch(epoch)
        for i, b in enumerate(sampler):
            if i == index:
                batch = list(b)
                break
        else:
            raise ValueError(f"inspect_batch: the sampler has no batch {index} in epoch {epoch}")
    batch = [int(i) for i in batch]
    if len(batch) % 2 or not batch:
        raise ValueError(f"inspect_batch: a batch is [q_1..q_B, p_1..p_B]; got {len(batch)} indices")
    b = len(batch) // 2
    images = [rows[i] for i in batch]
    if embeddings is not None:
        emb = to_numpy(embeddings, "embeddings")[batch]
    else:
        if model is None:
            raise ValueError("inspect_batch: pass a model, or embeddings= of the rows")
        from ..embed import embed

        emb = to_numpy(embed(model, images, progress=False, batch_size=len(batch)), "embeddings")
    if temperature is None:
        if model is None:
            raise ValueError("inspect_batch: without a model pass temperature=")
        temperature = 1.0 / float(model.logit_scale.detach().float().exp())
    pids = rows.pids[batch[:b]]
    return inspect_embeddings(emb[:b], emb[b:], pids, temperature=temperature, images=images, indices=batch,
                              label=label or f"batch {index} of epoch {epoch}")


# ------------------------------------------------------------------------------------------ figures
def _add_batch(fig: go.Figure, ins: BatchInspection, query: int, temperature: float | None, col: int,
               thumb_height: int, zrange: tuple[float, float]) -> None:
    """The heatmap (row 1) and the softmax bars (row 2) of ``ins`` into column ``col`` of ``fig``."""
    b, t = ins.size, ins._t(temperature)
    q = ins._query(query)
    pid_text = np.array([[f"query {i} (pid {ins.pids[i]}) · positive {j} (pid {ins.pids[j]})<br>cos {ins.similarity[i, j]:.3f}"
                          for j in range(b)] for i in range(b)])
    fig.add_trace(go.Heatmap(z=ins.similarity, x=list(range(b)), y=list(range(b)), colorscale="Viridis",
                             zmin=zrange[0], zmax=zrange[1], text=pid_text, hoverinfo="text", showscale=col == 1,
                             colorbar=dict(title="cos", len=0.5, y=0.78)), row=1, col=col)
    fn = np.argwhere(ins.false_negatives)
    fig.add_trace(go.Scatter(x=fn[:, 1], y=fn[:, 0], mode="markers", name="false negative (same identity)",
                             marker=dict(symbol="x", size=max(6, 160 // b), color="#d62728", line=dict(width=1)),
                             showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
    fig.add_trace(go.Scatter(x=np.arange(b), y=np.arange(b), mode="markers", name="own positive",
                             marker=dict(symbol="square-open", size=max(6, 200 // b), color="white"),
                             showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
    fig.add_shape(type="rect", x0=-0.5, x1=b - 0.5, y0=q - 0.5, y1=q + 0.5, line=dict(color="#ff7f0e", width=2),
                  row=1, col=col)
    probs = ins.softmax(q, t)
    colours = ["#2ca02c" if j == q else "#d62728" if ins.false_negatives[q, j] else "#7f7f7f" for j in range(b)]
    fig.add_trace(go.Bar(x=list(range(b)), y=probs, marker_color=colours, showlegend=False,
                         hovertext=[f"positive {j} (pid {ins.pids[j]}): p = {probs[j]:.3f}" for j in range(b)],
                         hoverinfo="text"), row=2, col=col)
    sp = fig.get_subplot(1, col)
    xref, yref = sp.xaxis.plotly_name.replace("axis", ""), sp.yaxis.plotly_name.replace("axis", "")
    fig.update_yaxes(autorange="reversed", row=1, col=col, title_text="query", showticklabels=ins.images is None,
                     title_standoff=0.6 * thumb_height if ins.images is not None else None)
    fig.update_xaxes(row=1, col=col, side="top", showticklabels=ins.images is None)
    fig.update_yaxes(range=[0, 1], title_text=f"softmax of query {q}", row=2, col=col)
    fig.update_xaxes(title_text="positive", row=2, col=col, dtick=1 if b <= 32 else None)
    if ins.images is not None:
        for i in range(b):
            for src, kw in ((ins.thumbnail(i, thumb_height), dict(xref=f"{xref} domain", x=0, xanchor="right",
                                                                  yref=yref, y=i, yanchor="middle", sizex=0.12,
                                                                  sizey=1)),
                            (ins.thumbnail(b + i, thumb_height), dict(xref=xref, x=i, xanchor="center",
                                                                      yref=f"{yref} domain", y=1, yanchor="bottom",
                                                                      sizex=1, sizey=0.12))):
                fig.add_layout_image(source=src, sizing="contain", layer="above", **kw)
    term = ins.loss_terms(t)[q]
    fig.layout.annotations[col - 1].yshift = 8 + (2.2 * thumb_height if ins.images is not None else 0) * 0.5
    fig.layout.annotations[col - 1].text = (
        f"{ins.label}: InfoNCE {ins.loss(t):.3f}, {int(ins.false_negatives.sum())} false negatives<br>"
        f"query {q} (pid {ins.pids[q]}): p(own) = {probs[q]:.3f}, loss term {term:.3f}")


def plot_batch(inspection: BatchInspection | Sequence[BatchInspection], query: int = 0,
               temperature: float | None = None, *, thumb_height: int = 48, height: int = 760) -> go.Figure:
    """The query x positive cosine heatmap of a batch (thumbnails of queries on the left, of
    positives on top; red crosses = false negatives; white squares = each query's own positive;
    the chosen query's row framed) over that query's softmax row (green = own positive, red =
    a false negative); the titles give the batch loss and the query's loss term at
    ``temperature``. Several inspections go side by side (same ``query`` and ``temperature``).

    Example:
        >>> ins = inspect_embeddings(np.eye(3), np.eye(3), [0, 1, 0], temperature=0.5)
        >>> fig = plot_batch(ins, query=2)
        >>> [tr.type for tr in fig.data]
        ['heatmap', 'scatter', 'scatter', 'bar']
    """
    items = [inspection] if isinstance(inspection, BatchInspection) else list(inspection)
    fig = make_subplots(rows=2, cols=len(items), row_heights=[0.7, 0.3], vertical_spacing=0.1,
                        horizontal_spacing=0.12, subplot_titles=[" "] * len(items))
    zrange = (min(float(i.similarity.min()) for i in items), max(float(i.similarity.max()) for i in items))
    for c, ins in enumerate(items, start=1):   # one colour scale for all panels
        _add_batch(fig, ins, query, temperature, c, thumb_height, zrange)
    # r=80: room for the colour bar's ticks; two panels stay under ~1000 px, a JupyterLab cell's width
    fig.update_layout(height=height, width=max(560, 450 * len(items) + 50), margin=dict(l=90, t=150, r=80, b=40),
                      legend=dict(orientation="h", y=-0.08), plot_bgcolor="white")
    return fig


def compare_batches(model, dataset, *, batch_size: int = 16, seed: int = 0, temperature: float | None = None,
                    query: int = 0, embeddings: Any = None, split: str | None = "train",
                    ) -> tuple[list[BatchInspection], go.Figure]:
    """A random batch (identities may repeat: false negatives) beside a unique-identity batch
    (:class:`cliptk.samplers.UniqueIdPairSampler`: none), same size, same model, as
    :func:`plot_batch` side by side. Returns ``([random, unique], figure)``.

    Example:
        >>> (rand, uniq), fig = compare_batches(model, players, batch_size=16)   # doctest: +SKIP
    """
    rows = dataset.subset(split) if split is not None and len(dataset.split_names) > 1 else dataset
    kw = dict(temperature=temperature, embeddings=embeddings, split=None)
    rand = inspect_batch(model, rows, random_pair_batch(rows.pids, batch_size, seed), label="random batch", **kw)
    uniq = inspect_batch(model, rows, batch_size=batch_size, seed=seed, label="unique-identity batch", **kw)
    return [rand, uniq], plot_batch([rand, uniq], query=query, temperature=temperature)


def batch_inspector(inspection: BatchInspection | Sequence[BatchInspection], query: int = 0, **plot_options):
    """An ipywidgets view of :func:`plot_batch`: a temperature slider (log scale) and a query
    slider recompute the softmax row and the loss in place. ipywidgets loads here, not with
    :mod:`cliptk.viz`.

    Returns:
        an ``ipywidgets.VBox`` (display it in a notebook); its ``.figure`` is the
        ``plotly.graph_objects.FigureWidget``, ``.temperature`` and ``.query`` the sliders.

    Example:
        >>> w = batch_inspector(inspect_embeddings(np.eye(3), np.eye(3), temperature=0.1))  # doctest: +SKIP
        >>> w.temperature.value = 1.0                                                        # doctest: +SKIP
    """
    import ipywidgets as widgets   # lazy: only the widget needs it

    items = [inspection] if isinstance(inspection, BatchInspection) else list(inspection)
    t0 = items[0].temperature
    fw = go.FigureWidget(plot_batch(items, query, t0, **plot_options))
    temp = widgets.FloatLogSlider(value=t0, base=10, min=-2.5, max=0.5, step=0.05, description="temperature",
                                  style={"description_width": "initial"}, layout=widgets.Layout(width="420px"),
                                  readout_format=".3f", continuous_update=True)
    qs = widgets.IntSlider(value=items[0]._query(query), min=0, max=min(i.size for i in items) - 1, description="query")
    text = widgets.HTML("<br>".join(i.summary(t0) for i in items))
    bars = [tr for tr in fw.data if tr.type == "bar"]

    def update(_=None) -> None:
        t, q = float(temp.value), int(qs.value)
        with fw.batch_update():
            for c, (ins, bar) in enumerate(zip(items, bars), start=1):
                probs = ins.softmax(q, t)
                bar.y = probs
                bar.marker.color = ["#2ca02c" if j == q else "#d62728" if ins.false_negatives[q, j] else "#7f7f7f"
                                    for j in range(ins.size)]
                bar.hovertext = [f"positive {j} (pid {ins.pids[j]}): p = {probs[j]:.3f}" for j in range(ins.size)]
                fw.layout.annotations[c - 1].text = (
                    f"{ins.label}: InfoNCE {ins.loss(t):.3f}, {int(ins.false_negatives.sum())} false negatives<br>"
                    f"query {q} (pid {ins.pids[q]}): p(own) = {probs[q]:.3f}, loss term {ins.loss_terms(t)[q]:.3f}")
                fw.layout.shapes[c - 1].update(y0=q - 0.5, y1=q + 0.5)
                fw.layout[bar.yaxis.replace("y", "yaxis")].title.text = f"softmax of query {q}"
        text.value = "<br>".join(i.summary(t) for i in items)

    temp.observe(update, names="value")
    qs.observe(update, names="value")
    box = widgets.VBox([widgets.HBox([temp, qs]), text, fw])
    box.figure, box.temperature, box.query, box.update = fw, temp, qs, update
    return box
