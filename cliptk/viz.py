"""Look at an embedding space: 2-D/3-D projections, plotly figures with metadata, before/after
views, standalone HTML pages with image thumbnails on hover, and the numbers beside the picture.

* :func:`project` — UMAP (McInnes, Healy & Melville, 2018, arXiv:1802.03426), PCA or t-SNE
  (van der Maaten & Hinton, JMLR 2008) of ``[N, D]`` embeddings with cosine defaults and a seed;
  :class:`ProjectionConfig` holds the settings (YAML round trip); :func:`warm_up` pays UMAP's
  one-off numba compile cost.
* :func:`plot_embeddings` — a plotly scatter (WebGL ``Scattergl`` for large ``N``, ``Scatter3d``
  in 3-D), coloured by any metadata column (``pid``, ``team``, ``camid``, ``split``, ``correct``,
  a loss ...) or an array, with the row's metadata on hover.
* :func:`plot_before_after` — the same images embedded by two models, side by side in one aligned
  projection (:func:`aligned_projection`: AlignedUMAP, or separate projections matched by
  orthogonal Procrustes), same colours.
* :func:`export_html` / :func:`html_fragment` — a page (or a ``<div>`` to embed in a report)
  that shows the image thumbnail of the hovered point, without Jupyter.
* :func:`embedding_report` — k-NN accuracy, neighbourhood overlap, trustworthiness, alignment and
  uniformity as a small ``pandas`` table (from :mod:`cliptk.metrics`).

Every figure's traces carry ``customdata[:, 0]`` = the dataset row of each point, so a point can
be traced back to its image (:func:`trace_rows`); :mod:`cliptk.widgets` and the HTML export rely
on it.

Example:
    >>> import cliptk as ct                                         # doctest: +SKIP
    >>> emb = ct.embed(model, ds)                                   # doctest: +SKIP
    >>> fig = ct.plot_embeddings(emb, ds, color_by="team")          # doctest: +SKIP
    >>> ct.export_html(fig, ds, "players.html")                     # doctest: +SKIP
"""
from __future__ import annotations

import base64
import html
import io
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import yaml
from PIL import Image
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from . import metrics
from .data import ReIdDataset

__all__ = [
    "ProjectionConfig",
    "project",
    "warm_up",
    "aligned_projection",
    "plot_embeddings",
    "plot_before_after",
    "export_html",
    "html_fragment",
    "embedding_report",
    "thumbnail_uri",
    "trace_rows",
]

METHODS = ("umap", "pca", "tsne")
ALIGN_METHODS = ("aligned_umap", "umap", "pca", "tsne")
#: Colours for categories, cycled when there are more categories than colours.
PALETTE: list[str] = list(qualitative.Dark24) + list(qualitative.Light24)
#: Column aliases accepted by ``color_by``.
ALIASES = {"camera": "camid", "cam": "camid", "identity": "pid", "id": "pid"}
#: Above this many points 2-D plots use WebGL (``Scattergl``).
WEBGL_THRESHOLD = 1000

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences


# ============================================================================ projections
@dataclass
class ProjectionConfig:
    """Settings of :func:`project`, with cosine defaults.

    Attributes:
        method: ``"umap"`` (default), ``"pca"`` or ``"tsne"``.
        n_components: 2 or 3.
        metric: distance in the embedding space; ``"cosine"`` (default) L2-normalises the rows
            first, so PCA sees directions and an optional PCA pre-reduction keeps cosine order
            (Euclidean distance between unit vectors is ``sqrt(2 - 2 cos)``).
        seed: random seed (UMAP, t-SNE, PCA's randomised solver). ``None`` = not reproducible;
            for UMAP that lets numba use every core (a seed forces one thread).
        pca_dims: reduce to this many dimensions with PCA before UMAP/t-SNE (``None`` = never;
            ``"auto"`` = 50 for t-SNE when ``D > 50``, none for UMAP, which handles 512-D well).
        n_neighbors, min_dist: UMAP's neighbourhood size and packing (umap-learn defaults).
        n_epochs: UMAP optimisation epochs; ``None`` = 500 below 5,000 points, else 200 (as
            umap-learn does above 10,000 points; keeps 10k points under a minute on 2 cores).
        perplexity: t-SNE perplexity (clipped to ``(N - 1) / 3`` for small ``N``).
        threads: CPU threads for BLAS/OpenMP (PCA, t-SNE, UMAP's spectral start) and for UMAP's
            numba code when ``seed`` is None. ``None`` (default) = one BLAS/OpenMP thread and
            numba's default: on a busy or shared machine, spin-waiting BLAS/OpenMP pools (two
            OpenMP runtimes get loaded, scikit-learn's and torch's) made PCA and t-SNE 10-100x
            slower than single-threaded, which takes < 1 s for a 10k x 512 PCA. Raise it for big
            t-SNE runs on a machine of your own.
        options: extra keyword arguments for the estimator (``umap.UMAP``,
            ``sklearn.manifold.TSNE``, ``sklearn.decomposition.PCA``).

    Raises:
        ValueError: an unknown method or metric, ``n_components`` not 2 or 3, or a bad number.

    Example:
        >>> cfg = ProjectionConfig("tsne", perplexity=20)
        >>> ProjectionConfig.from_yaml(cfg.to_yaml()) == cfg
        True
    """

    method: str = "umap"
    n_components: int = 2
    metric: str = "cosine"
    seed: int | None = 0
    pca_dims: int | str | None = "auto"
    n_neighbors: int = 15
    min_dist: float = 0.1
    n_epochs: int | None = None
    perplexity: float = 30.0
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"ProjectionConfig.method={self.method!r}: choose one of {METHODS}")
        if self.n_components not in (2, 3):
            raise ValueError(f"ProjectionConfig.n_components={self.n_components!r}: plots are 2-D or 3-D")
        if not (self.pca_dims in (None, "auto") or (isinstance(self.pca_dims, int) and self.pca_dims >= self.n_components)):
            raise ValueError(f"ProjectionConfig.pca_dims={self.pca_dims!r}: use None, 'auto' or an int >= n_components")
        if self.n_neighbors < 2:
            raise ValueError(f"ProjectionConfig.n_neighbors={self.n_neighbors}: must be >= 2")
        if self.n_epochs is not None and self.n_epochs < 1:
            raise ValueError(f"ProjectionConfig.n_epochs={self.n_epochs}: must be None or >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"ProjectionConfig.threads={self.threads}: must be None or >= 1")
        if self.perplexity <= 0 or self.min_dist < 0:
            raise ValueError("ProjectionConfig: perplexity must be > 0 and min_dist >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The settings as YAML text (also written to ``path`` when given)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProjectionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ProjectionConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, source: str | os.PathLike) -> "ProjectionConfig":
        """From a YAML file, or YAML text containing a newline."""
        text = str(source)
        if isinstance(source, os.PathLike) or "\n" not in text:
            if not Path(source).is_file():
                raise FileNotFoundError(f"projection config not found: {source}")
            text = Path(source).read_text()
        return cls.from_dict(yaml.safe_load(text) or {})


def _as_matrix(x: ArrayLike, name: str = "embeddings") -> np.ndarray:
    """A finite 2-D float32 numpy array from a tensor/array (raises naming the bad row)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [N, D], got shape {a.shape}")
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} row {int(np.flatnonzero(bad)[0])} has NaN/inf (an unreadable image? "
                         "drop those rows, e.g. ds.drop_unreadable(), before projecting)")
    return a


def _unit_rows(a: np.ndarray, name: str = "embeddings") -> np.ndarray:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros; cosine is undefined")
    return a / norms


_WARM: set[str] = set()  # what warm_up / a first fit has compiled in this process


def warm_up(aligned: bool = False) -> float:
    """Compile UMAP's numba kernels once per Python process (kernel); returns the seconds spent.

    umap-learn and pynndescent are written in numba: the first UMAP fit in a fresh kernel spends
    roughly 10-30 s compiling (numba caches only part of it on disk between runs) before any real
    work, and the first ``AlignedUMAP`` fit (:func:`aligned_projection`) compiles more (another
    10-40 s). Calling this once at the top of a notebook, on a tiny random dataset, moves that
    cost out of the cell that projects real data. Repeated calls return 0 immediately.

    Args:
        aligned: also compile AlignedUMAP (for :func:`plot_before_after`).

    Example:
        >>> seconds = warm_up()          # doctest: +SKIP
    """
    import time

    import umap

    todo = {"umap"} | ({"aligned"} if aligned else set())
    if todo <= _WARM:
        return 0.0
    t0 = time.perf_counter()
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "umap" not in _WARM:
            umap.UMAP(n_neighbors=5, n_epochs=5, metric="cosine", random_state=0).fit_transform(x)
            _WARM.add("umap")
        if aligned and "aligned" not in _WARM:
            umap.AlignedUMAP(n_neighbors=5, n_epochs=5, metric="cosine", random_state=0).fit(
                [x, x], relations=[{i: i for i in range(len(x))}])
            _WARM.add("aligned")
    return time.perf_counter() - t0


def project(embeddings: ArrayLike, method: str | ProjectionConfig = "umap", n_components: int = 2, *,
            seed: int | None = 0, pca_dims: int | str | None = "auto", metric: str = "cosine",
            **options: Any) -> np.ndarray:
    """Project ``[N, D]`` embeddings to ``[N, 2]`` or ``[N, 3]`` for plotting.

    Methods (cosine geometry by default: rows are L2-normalised first):

    * ``"umap"`` — umap-learn's UMAP with ``metric="cosine"`` (McInnes et al., 2018). The first
      call in a kernel pays a numba compile cost (10-30 s); call :func:`warm_up` once at the top of
      a notebook. With ``seed`` set UMAP runs single-threaded (reproducible); ``seed=None`` uses
      every core and is faster. 10k x 512 after warm-up: about 30 s of one core with a seed, under
      10 s of CPU without (``benchmarks/bench_projection.py``).
    * ``"pca"`` — scikit-learn PCA of the normalised rows (deterministic, linear, < 1 s for 10k).
    * ``"tsne"`` — scikit-learn's Barnes-Hut t-SNE (van der Maaten & Hinton, 2008), PCA
      initialisation, ``learning_rate="auto"``, after a PCA pre-reduction to 50 dimensions;
      about a minute of one core for 10k points (see ``threads`` in :class:`ProjectionConfig`).

    Args:
        embeddings: ``[N, D]`` tensor or array (N >= 4).
        method: a method name or a full :class:`ProjectionConfig` (then the other settings must
            be left at their defaults).
        n_components: 2 or 3.
        seed: random seed (``None`` = not reproducible, faster UMAP).
        pca_dims: PCA pre-reduction (see :class:`ProjectionConfig`). After it the reduced rows are
            compared with Euclidean distance, which keeps the cosine order of unit vectors.
        metric: ``"cosine"`` or any metric the estimator accepts.
        **options: ``n_neighbors``, ``min_dist``, ``n_epochs``, ``perplexity``, ``threads`` or
            extra estimator keyword arguments.

    Returns:
        ``[N, n_components]`` float32 numpy array, rows in input order.

    Raises:
        ValueError: bad settings, fewer than 4 rows, NaN rows or all-zero rows (named).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(100, 32))
        >>> project(x, "pca").shape
        (100, 2)
    """
    if isinstance(method, ProjectionConfig):
        if options or n_components != 2 or seed != 0 or pca_dims != "auto" or metric != "cosine":
            raise ValueError("project: pass either a ProjectionConfig or keyword settings, not both "
                             "(use dataclasses.replace(config, ...) to change a config)")
        cfg = method
    else:
        own = {k: options.pop(k) for k in ("n_neighbors", "min_dist", "n_epochs", "perplexity", "threads")
               if k in options}
        cfg = ProjectionConfig(method=method, n_components=n_components, metric=metric, seed=seed,
                               pca_dims=pca_dims, options=options, **own)
    x = _as_matrix(embeddings)
    if x.shape[0] < 4:
        raise ValueError(f"project: need at least 4 rows to project, got {x.shape[0]}")
    if cfg.metric == "cosine":
        x = _unit_rows(x)
    from threadpoolctl import threadpool_limits

    if cfg.method == "umap":  # numba threads: one with a seed (umap-learn's rule), else cfg.threads or all
        import numba

        before = numba.get_num_threads()
        if cfg.threads is not None:
            numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
        try:
            with threadpool_limits(cfg.threads or 1):
                return _fit(cfg, x)
        finally:
            numba.set_num_threads(before)
    with threadpool_limits(cfg.threads or 1):
        return _fit(cfg, x)


def _fit(cfg: ProjectionConfig, x: np.ndarray) -> np.ndarray:
    """The projection itself, on validated (and, for cosine, L2-normalised) rows."""
    from sklearn.decomposition import PCA

    n, d = x.shape
    if cfg.method == "pca":
        k = min(cfg.n_components, d, n)
        out = PCA(k, random_state=cfg.seed, **cfg.options).fit_transform(x)
        if k < cfg.n_components:  # fewer dimensions than asked: pad with zeros
            out = np.pad(out, ((0, 0), (0, cfg.n_components - k)))
        return out.astype(np.float32)

    metric = cfg.metric
    dims = cfg.pca_dims
    if dims == "auto":
        dims = 50 if cfg.method == "tsne" else None
    if dims is not None and dims < min(n, d):
        x = PCA(dims, random_state=cfg.seed).fit_transform(x).astype(np.float32)
        if metric == "cosine":
            metric = "euclidean"  # unit vectors: euclidean order == cosine order, and PCA keeps it
    if cfg.method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(cfg.perplexity, max(1.0, (n - 1) / 3.0))
        kw = dict(perplexity=perplexity, metric=metric, init="pca", learning_rate="auto", random_state=cfg.seed)
        kw.update(cfg.options)
        return TSNE(cfg.n_components, **kw).fit_transform(x).astype(np.float32)

    import umap  # method == "umap"

    n_epochs = cfg.n_epochs if cfg.n_epochs is not None else (500 if n < 5000 else 200)
    kw = dict(n_neighbors=min(cfg.n_neighbors, n - 1), min_dist=cfg.min_dist, metric=metric,
              n_epochs=n_epochs, random_state=cfg.seed)
    if n <= cfg.n_components + 2:
        kw["init"] = "random"  # spectral init needs more points than dimensions
    kw.update(cfg.options)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        warnings.filterwarnings("ignore", message=".*gradient function is not yet implemented.*")
        out = umap.UMAP(n_components=cfg.n_components, **kw).fit_transform(x)
    _WARM.add("umap")
    return np.asarray(out, dtype=np.float32)


def _procrustes_to(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """``moving`` rotated/reflected, uniformly scaled and shifted to best match ``reference``
    (orthogonal Procrustes, least squares over corresponding rows)."""
    from scipy.linalg import orthogonal_procrustes

    ref_c, mov_c = reference - reference.mean(0), moving - moving.mean(0)
    rot, _ = orthogonal_procrustes(mov_c, ref_c)
    aligned = mov_c @ rot
    scale = np.linalg.norm(ref_c) / max(np.linalg.norm(aligned), 1e-12)
    return (aligned * scale + reference.mean(0)).astype(np.float32)


def aligned_projection(emb_before: ArrayLike, emb_after: ArrayLike, method: str = "aligned_umap",
                       n_components: int = 2, *, seed: int | None = 0,
                       **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two embeddings of the same images (row ``i`` = image ``i``) projected into aligned layouts.

    * ``"aligned_umap"`` — umap-learn's ``AlignedUMAP``: one layout per embedding, fitted jointly
      with a penalty that keeps each image near its own position in the other layout, so moving
      points are the ones whose neighbourhoods changed.
    * ``"umap"``, ``"pca"``, ``"tsne"`` — each embedding projected on its own (:func:`project`),
      then the "after" layout rotated/reflected, scaled and shifted onto the "before" layout by
      orthogonal Procrustes. Cheap and deterministic with ``"pca"``; no shared fit is needed, which
      matters because two models' spaces have unrelated coordinates (a mapper fitted on one and
      applied to the other would place points by the wrong geometry).

    Args:
        emb_before, emb_after: ``[N, D1]`` and ``[N, D2]`` (dimensions may differ).
        method: see above.
        n_components: 2 or 3.
        seed: random seed.
        **options: passed to ``AlignedUMAP`` or :func:`project`.

    Returns:
        ``(before [N, k], after [N, k])`` float32 arrays in one coordinate frame.

    Raises:
        ValueError: different numbers of rows, or an unknown method.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> b = rng.normal(size=(60, 16)); a = b @ rng.normal(size=(16, 16))
        >>> pb, pa = aligned_projection(b, a, "pca")
        >>> pb.shape == pa.shape == (60, 2)
        True
    """
    b, a = _as_matrix(emb_before, "emb_before"), _as_matrix(emb_after, "emb_after")
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"emb_before has {b.shape[0]} rows but emb_after has {a.shape[0]}; "
                         "embed the same images, in the same order, with both models")
    if method not in ALIGN_METHODS:
        raise ValueError(f"aligned_projection: method={method!r}; choose one of {ALIGN_METHODS}")
    if method != "aligned_umap":
        pb = project(b, method, n_components, seed=seed, **options)
        pa = project(a, method, n_components, seed=seed, **options)
        return pb, _procrustes_to(pb, pa)
    import umap

    n = b.shape[0]
    kw = dict(n_neighbors=min(15, n - 1), metric="cosine", random_state=seed, n_epochs=200 if n >= 5000 else None)
    kw.update(options)
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(1):  # see ProjectionConfig.threads
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        mapper = umap.AlignedUMAP(n_components=n_components, **kw).fit(
            [_unit_rows(b, "emb_before"), _unit_rows(a, "emb_after")], relations=[{i: i for i in range(n)}])
    _WARM.update(("umap", "aligned"))
    return (np.asarray(mapper.embeddings_[0], dtype=np.float32), np.asarray(mapper.embeddings_[1], dtype=np.float32))


# ============================================================================ thumbnails
def _thumbnail_format(fmt: str) -> str:
    from PIL import features

    fmt = fmt.upper()
    if fmt == "WEBP" and not features.check("webp"):
        return "JPEG"
    return fmt


def thumbnail_bytes(image: Image.Image, height: int = 48, fmt: str = "WEBP", quality: int = 70) -> bytes:
    """``image`` scaled to ``height`` pixels (aspect kept) and encoded as WEBP (JPEG if Pillow lacks
    WEBP) or PNG/JPEG."""
    im = image.convert("RGB")
    w = max(1, round(im.width * height / max(im.height, 1)))
    im = im.resize((w, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format=_thumbnail_format(fmt), quality=quality)
    return buf.getvalue()


def thumbnail_uri(image: Image.Image, height: int = 48, fmt: str = "WEBP", quality: int = 70) -> str:
    """A small ``data:image/...;base64,...`` URI of ``image`` (``height`` px tall), for HTML.

    Example:
        >>> thumbnail_uri(Image.new("RGB", (32, 64), "red")).startswith("data:image/")
        True
    """
    fmt = _thumbnail_format(fmt)
    data = base64.b64encode(thumbnail_bytes(image, height, fmt, quality)).decode("ascii")
    return f"data:image/{fmt.lower()};base64,{data}"


def _thumbnail_uris(dataset: ReIdDataset, rows: Sequence[int], height: int) -> list[str]:
    """One data URI per row ('' for an image the dataset skips as unreadable)."""
    out = []
    for r in rows:
        img = dataset[int(r)]
        out.append("" if img is None else thumbnail_uri(img, height))
    return out


# ============================================================================ colours and hover
def _check_dataset(dataset: ReIdDataset | None, n: int) -> None:
    if dataset is not None and len(dataset) != n:
        raise ValueError(f"{n} embeddings but dataset {dataset.name!r} has {len(dataset)} rows; "
                         "pass the dataset the embeddings were computed from (same rows, same order)")


def _nn_correct(emb: np.ndarray, pids: np.ndarray) -> np.ndarray:
    """'correct' / 'incorrect' (the nearest *other* image by cosine has the same pid) / 'unknown'."""
    from sklearn.neighbors import NearestNeighbors

    x = _unit_rows(emb)
    nn = NearestNeighbors(n_neighbors=2, metric="cosine", algorithm="brute").fit(x)
    idx = nn.kneighbors(return_distance=False, n_neighbors=1)[:, 0]
    out = np.where(pids[idx] == pids, "correct", "incorrect").astype(object)
    out[pids < 0] = "unknown"
    return out


def _colour_values(color_by: str | ArrayLike | None, dataset: ReIdDataset | None, n: int,
                   emb: np.ndarray | None) -> tuple[np.ndarray | None, str]:
    """The per-point values to colour by and their name."""
    if color_by is None:
        return None, ""
    if isinstance(color_by, str):
        if dataset is None:
            raise ValueError(f"color_by={color_by!r} names a column, but no dataset was given; pass the dataset "
                             "or an array of N values")
        col = color_by if color_by in dataset.table.columns else ALIASES.get(color_by, color_by)
        if col in dataset.table.columns:
            return dataset.table[col].to_numpy(), col
        if color_by in ("correct", "incorrect"):
            if emb is None or emb.shape[1] <= 3:
                raise ValueError("color_by='correct' needs the high-dimensional embeddings (it checks whether each "
                                 "image's nearest neighbour has the same pid); pass embeddings, not a projection, "
                                 "or add a 'correct' column to dataset.table")
            return _nn_correct(emb, dataset.pids), "correct"
        raise ValueError(f"color_by={color_by!r} is not a column of dataset {dataset.name!r}; columns: "
                         f"{list(dataset.table.columns)} (plus 'correct', or pass an array of N values)")
    values = color_by.detach().cpu().numpy() if isinstance(color_by, torch.Tensor) else np.asarray(color_by)
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"color_by array must have one value per point ({n}), got shape {values.shape}")
    return values, "value"


def _is_continuous(values: np.ndarray) -> bool:
    return values.dtype.kind == "f"


def _categories(values: np.ndarray) -> list:
    uniq = pd.unique(pd.Series(values).astype(object).where(pd.notna(values), "nan"))
    try:
        return sorted(uniq)
    except TypeError:
        return sorted(uniq, key=str)


def _fmt_value(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if v != v else f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 70 else s[:67] + "..."


def _hover_texts(dataset: ReIdDataset | None, n: int, columns: Sequence[str] | None,
                 colour: tuple[np.ndarray | None, str]) -> list[str]:
    """One HTML hover label per row: the metadata columns (and the colour value if it is not one)."""
    values, name = colour
    if dataset is None:
        base = [f"row {i}" for i in range(n)]
    else:
        t = dataset.table
        cols = list(columns) if columns is not None else (
            ["pid", "camid", "split"] + [c for c in t.columns if c not in ("path", "pid", "camid", "split", "caption")]
            + ["caption", "path"])
        missing = [c for c in cols if c not in t.columns]
        if missing:
            raise ValueError(f"hover_columns {missing} are not columns of {dataset.name!r}: {list(t.columns)}")
        data = {c: t[c].to_numpy() for c in cols}
        base = []
        for i in range(n):
            parts = [f"<b>row {i}</b>"]
            for c in cols:
                v = data[c][i]
                if v is None or (isinstance(v, float) and v != v):
                    continue
                if c == "path":
                    v = Path(str(v)).name
                parts.append(f"{html.escape(c)}: {html.escape(_fmt_value(v))}")
            base.append("<br>".join(parts))
    if values is not None and (dataset is None or name not in dataset.table.columns):
        base = [f"{b}<br>{html.escape(name)}: {html.escape(_fmt_value(v))}" for b, v in zip(base, values)]
    return base


def _marker_size(n: int) -> int:
    return 8 if n < 500 else 6 if n < 5000 else 4


def _traces(coords: np.ndarray, values: np.ndarray | None, name: str, texts: list[str], rows: np.ndarray, *,
            webgl: bool, size: int, max_legend: int, colour_map: dict | None = None,
            cmin: float | None = None, cmax: float | None = None, showlegend: bool = True,
            group: str = "") -> list:
    """Scatter traces for ``coords`` ([n, 2|3]); one per category when there are few, else one."""
    three = coords.shape[1] == 3
    cls = go.Scatter3d if three else (go.Scattergl if webgl else go.Scatter)

    def make(sel: np.ndarray, label: str | None, marker: dict, legend: bool) -> Any:
        kw = dict(x=coords[sel, 0], y=coords[sel, 1], mode="markers", marker=marker,
                  text=[texts[i] for i in np.flatnonzero(sel)], hovertemplate="%{text}<extra></extra>",
                  customdata=rows[sel][:, None], name=label or "points", showlegend=legend and label is not None,
                  legendgroup=f"{label}" if label is not None else None)
        if three:
            kw["z"] = coords[sel, 2]
        return cls(**kw)

    all_rows = np.ones(len(coords), dtype=bool)
    if values is None:
        return [make(all_rows, None, dict(size=size, color=PALETTE[0], opacity=0.85), False)]
    if _is_continuous(values):
        finite = values[np.isfinite(values)]
        marker = dict(size=size, color=values, colorscale="Viridis", opacity=0.85, showscale=showlegend,
                      cmin=cmin if cmin is not None else (float(finite.min()) if finite.size else 0.0),
                      cmax=cmax if cmax is not None else (float(finite.max()) if finite.size else 1.0),
                      colorbar=dict(title=dict(text=name)))
        return [make(all_rows, None, marker, False)]
    keys = pd.Series(values).astype(object).where(pd.notna(values), "nan").to_numpy()
    cats = _categories(values)
    colour_map = colour_map or {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(cats)}
    if len(colour_map) <= max_legend:
        return [make(keys == c, f"{c}", dict(size=size, color=colour_map[c], opacity=0.85), showlegend)
                for c in colour_map if (keys == c).any()]
    colours = [colour_map[k] for k in keys]
    return [make(all_rows, None, dict(size=size, color=colours, opacity=0.85), False)]


def _style(fig: go.Figure, three: bool, title: str | None, legend_title: str) -> None:
    fig.update_layout(template="plotly_white", hovermode="closest", title=title, legend_title_text=legend_title,
                      margin=dict(l=10, r=10, t=50 if title else 20, b=10), height=600,
                      legend=dict(itemsizing="constant"))
    if not three:
        fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
        fig.update_yaxes(showticklabels=False, title=None, zeroline=False)


def _coords(data: ArrayLike, projection: ArrayLike | None, method: str, n_components: int,
            seed: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(projection, high-dimensional embeddings or None) from embeddings or an existing projection."""
    x = _as_matrix(data, "embeddings")
    if projection is not None:
        p = _as_matrix(projection, "projection")
        if p.shape[1] not in (2, 3) or p.shape[0] != x.shape[0]:
            raise ValueError(f"projection must be [N, 2] or [N, 3] with N = {x.shape[0]} rows, got {p.shape}")
        return p, x
    if x.shape[1] in (2, 3):
        return x, None
    return project(x, method, n_components, seed=seed), x


def plot_embeddings(data: ArrayLike, dataset: ReIdDataset | None = None, color_by: str | ArrayLike | None = "pid", *,
                    projection: ArrayLike | None = None, method: str = "umap", n_components: int = 2,
                    seed: int | None = 0,
                    hover_columns: Sequence[str] | None = None, title: str | None = None,
                    webgl: bool | None = None, max_legend: int = 30) -> go.Figure:
    """A plotly scatter of embeddings (projected with :func:`project`) or of an existing projection.

    Args:
        data: ``[N, D]`` embeddings (``D > 3``: projected with ``method``) or an ``[N, 2]`` /
            ``[N, 3]`` projection (plotted as is).
        dataset: the :class:`ReIdDataset` the rows come from (hover labels, column colours);
            optional when ``color_by`` is an array or ``None``.
        color_by: a column of ``dataset.table`` (``"pid"``, ``"team"``, ``"camid"``/``"camera"``,
            ``"split"``, a ``"loss"`` column ...), ``"correct"`` (computed when there is no such
            column: whether each image's nearest other image has its pid; needs embeddings), an
            array of ``N`` values (floats = continuous colour scale; ints, strings, bools =
            categories), or ``None``. Up to ``max_legend`` categories get one trace each (legend,
            click to hide); more share one trace with cycled colours.
        projection: a precomputed ``[N, 2|3]`` projection of ``data`` (then ``data`` are only
            used for ``color_by="correct"``).
        method, n_components, seed: projection settings when ``data`` are embeddings.
        hover_columns: table columns shown on hover (default: all, file name last).
        title: figure title.
        webgl: use ``Scattergl``; default when ``N >= 1000`` (3-D always uses WebGL).
        max_legend: most categories shown as separate legend entries.

    Returns:
        ``plotly.graph_objects.Figure``; each trace's ``customdata[:, 0]`` is the dataset row.

    Raises:
        ValueError: the dataset has a different number of rows, or ``color_by`` is unknown (the
            message lists the columns).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(50, 8))
        >>> fig = plot_embeddings(x, color_by=np.arange(50) % 3, method="pca")
        >>> len(fig.data)
        3
    """
    coords, emb = _coords(data, projection, method, n_components, seed)
    n = coords.shape[0]
    _check_dataset(dataset, n)
    colour = _colour_values(color_by, dataset, n, emb)
    texts = _hover_texts(dataset, n, hover_columns, colour)
    webgl = n >= WEBGL_THRESHOLD if webgl is None else webgl
    fig = go.Figure(_traces(coords, colour[0], colour[1], texts, np.arange(n), webgl=webgl,
                            size=_marker_size(n), max_legend=max_legend))
    _style(fig, coords.shape[1] == 3, title, colour[1])
    if coords.shape[1] == 2:
        fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def plot_before_after(emb_before: ArrayLike, emb_after: ArrayLike, dataset: ReIdDataset | None = None,
                      color_by: str | ArrayLike | None = "pid", *, method: str = "aligned_umap",
                      n_components: int = 2, seed: int | None = 0, titles: tuple[str, str] = ("before", "after"),
                      knn_k: int = 5, webgl: bool | None = None, max_legend: int = 30,
                      projections: tuple[ArrayLike, ArrayLike] | None = None) -> go.Figure:
    """The same images embedded by two models (e.g. zero-shot vs fine-tuned), side by side.

    Both panels come from one aligned projection (:func:`aligned_projection`; AlignedUMAP by
    default, ``method="pca"`` for a fast deterministic view) and share colours, so a reader sees
    identities' clusters tighten. With a dataset, each panel's title also shows the
    leave-one-out k-NN identity accuracy of its embedding (:func:`cliptk.metrics.knn_accuracy`).
    ``color_by="correct"`` is computed per panel (nearest neighbour has the same pid, before vs after).

    Args:
        emb_before, emb_after: ``[N, D1]`` and ``[N, D2]`` embeddings of the same images.
        dataset: the images' :class:`ReIdDataset` (hover labels, colours, k-NN accuracy).
        color_by: as in :func:`plot_embeddings`.
        method, n_components, seed: see :func:`aligned_projection`.
        titles: panel titles.
        knn_k: ``k`` of the k-NN accuracy in the titles (0 = leave it out).
        projections: precomputed ``(before, after)`` projections (skips the projection step).

    Returns:
        A two-panel ``plotly`` figure (``customdata[:, 0]`` = dataset row in every trace).

    Raises:
        ValueError: row counts differ between the embeddings or the dataset.

    Example:
        >>> rng = np.random.default_rng(0); lab = np.arange(60) % 4
        >>> b = rng.normal(size=(60, 16)); a = b + 3 * np.eye(16)[lab]
        >>> fig = plot_before_after(b, a, color_by=lab, method="pca")
        >>> len(fig.data)
        8
    """
    eb, ea = _as_matrix(emb_before, "emb_before"), _as_matrix(emb_after, "emb_after")
    if eb.shape[0] != ea.shape[0]:
        raise ValueError(f"emb_before has {eb.shape[0]} rows but emb_after has {ea.shape[0]}; same images, same order")
    n = eb.shape[0]
    _check_dataset(dataset, n)
    if projections is None:
        pb, pa = aligned_projection(eb, ea, method, n_components, seed=seed)
    else:
        pb, pa = _as_matrix(projections[0], "projections[0]"), _as_matrix(projections[1], "projections[1]")
    three = pb.shape[1] == 3
    colours = [_colour_values(color_by, dataset, n, e) for e in (eb, ea)]
    values = [c[0] for c in colours]
    name = colours[0][1]
    cmap, cmin, cmax = None, None, None
    if values[0] is not None and _is_continuous(values[0]):
        both = np.concatenate([v[np.isfinite(v)] for v in values])
        cmin, cmax = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    elif values[0] is not None:
        cats = _categories(np.concatenate([np.asarray(v, dtype=object) for v in values]))
        cmap = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(cats)}
    sub = list(titles)
    if dataset is not None and knn_k:
        keep = dataset.pids >= 0
        if keep.sum() > knn_k:
            sub = [f"{t} — {knn_k}-NN identity accuracy {metrics.knn_accuracy(e[keep], dataset.pids[keep], knn_k):.3f}"
                   for t, e in zip(titles, (eb, ea))]
    spec = {"type": "scene"} if three else {"type": "xy"}
    fig = make_subplots(1, 2, subplot_titles=sub, specs=[[spec, spec]], horizontal_spacing=0.03)
    webgl = n >= WEBGL_THRESHOLD if webgl is None else webgl
    for col, (proj, colour) in enumerate(zip((pb, pa), colours), start=1):
        texts = _hover_texts(dataset, n, None, colour)
        for tr in _traces(proj, colour[0], name, texts, np.arange(n), webgl=webgl, size=_marker_size(n),
                          max_legend=max_legend, colour_map=cmap, cmin=cmin, cmax=cmax, showlegend=col == 1):
            fig.add_trace(tr, row=1, col=col)
    _style(fig, three, None, name)
    fig.update_layout(height=550)
    if not three:
        fig.update_xaxes(matches="x")
        fig.update_yaxes(matches="y", scaleanchor="x", scaleratio=1)
    return fig


# ============================================================================ HTML export
_HOVER_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  if (!gd || !gd.on) { return; }
  var box = document.createElement('div');
  box.id = '{plot_id}-thumb';
  box.className = 'cliptk-thumb';
  box.style.cssText = 'position:fixed;bottom:12px;right:12px;z-index:10000;display:none;pointer-events:none;' +
    'background:#fff;border:1px solid #999;border-radius:4px;padding:4px;box-shadow:0 2px 6px rgba(0,0,0,.3);' +
    'font:12px sans-serif;text-align:center';
  var img = document.createElement('img');
  img.alt = 'thumbnail';
  img.style.cssText = 'display:block;height:__HEIGHT__px;width:auto;margin:auto';
  var label = document.createElement('div');
  box.appendChild(img); box.appendChild(label); document.body.appendChild(box);
  gd.on('plotly_hover', function (ev) {
    var p = ev && ev.points && ev.points[0];
    var cd = p && p.customdata;
    if (!cd || !cd[1]) { box.style.display = 'none'; return; }
    img.src = cd[1];
    label.textContent = 'row ' + cd[0];
    box.style.display = 'block';
  });
  gd.on('plotly_unhover', function () { box.style.display = 'none'; });
})();
"""


def trace_rows(trace: Any) -> np.ndarray:
    """The dataset rows of a trace's points (``customdata[:, 0]`` of figures made here).

    Raises:
        ValueError: the trace has no such ``customdata`` (not made by :func:`plot_embeddings`).
    """
    cd = trace.customdata
    if cd is None or len(cd) == 0:
        if trace.x is not None and len(trace.x) == 0:
            return np.zeros(0, dtype=np.int64)
        raise ValueError(f"trace {trace.name!r} has no customdata with dataset rows; make the figure with "
                         "cliptk.plot_embeddings / plot_before_after, or pass embeddings instead")
    return np.array([int(np.asarray(c).ravel()[0]) for c in cd], dtype=np.int64)


def _figure_for_export(fig_or_embeddings: go.Figure | ArrayLike, dataset: ReIdDataset, thumbnails: bool,
                       thumbnail_height: int, plot_kwargs: dict) -> go.Figure:
    if isinstance(fig_or_embeddings, go.Figure):
        fig = go.Figure(fig_or_embeddings)  # a copy: the caller's figure is left as it was
    elif hasattr(fig_or_embeddings, "to_dict") and hasattr(fig_or_embeddings, "data") and hasattr(fig_or_embeddings, "layout"):
        fig = go.Figure(fig_or_embeddings.to_dict())  # a FigureWidget
    else:
        fig = plot_embeddings(fig_or_embeddings, dataset, **plot_kwargs)
    if thumbnails:
        for tr in fig.data:
            rows = trace_rows(tr)
            if len(rows) and rows.max() >= len(dataset):
                raise ValueError(f"figure rows go up to {rows.max()} but dataset {dataset.name!r} has "
                                 f"{len(dataset)} rows; pass the dataset the figure was made from")
            uris = _thumbnail_uris(dataset, rows, thumbnail_height)
            tr.customdata = [[int(r), u] for r, u in zip(rows, uris)]
    return fig


def html_fragment(fig_or_embeddings: go.Figure | ArrayLike, dataset: ReIdDataset, thumbnails: bool = True, *,
                  thumbnail_height: int = 48, include_plotlyjs: bool | str = False, div_id: str | None = None,
                  **plot_kwargs: Any) -> str:
    """The plot as an HTML ``<div>`` + ``<script>`` fragment to embed in a larger page or report.

    With ``thumbnails``, each point's ``customdata`` holds ``[row, "data:image/webp;base64,..."]``
    (a ``thumbnail_height``-px thumbnail, about 1-2 kB) and a few lines of JavaScript listen to
    ``plotly_hover`` / ``plotly_unhover`` and show that image in a fixed box at the bottom right of
    the window (plotly hover labels cannot show images). Plan on ~2 kB per point.

    Args:
        fig_or_embeddings: a figure from :func:`plot_embeddings` / :func:`plot_before_after`, or
            embeddings / a projection (then plotted with ``plot_kwargs``, e.g. ``color_by``).
        dataset: the rows' :class:`ReIdDataset` (thumbnails come from its images).
        thumbnails: embed thumbnails and the hover script.
        thumbnail_height: thumbnail height in pixels (shown at twice that size).
        include_plotlyjs: ``False`` (default: the page must load plotly.js once, before the
            fragment), ``True`` (inline, ~4.7 MB, offline) or ``"cdn"``.
        div_id: the plot ``<div>``'s id (default: a random one).

    Returns:
        The HTML fragment as a string.

    Raises:
        ValueError: the figure has no dataset rows in its ``customdata``, or they do not fit the dataset.

    Example:
        >>> frag = html_fragment(fig, ds, include_plotlyjs="cdn")   # doctest: +SKIP
    """
    fig = _figure_for_export(fig_or_embeddings, dataset, thumbnails, thumbnail_height, plot_kwargs)
    script = _HOVER_JS.replace("__HEIGHT__", str(2 * thumbnail_height)) if thumbnails else None
    return fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs, div_id=div_id, post_script=script,
                       config={"displaylogo": False, "responsive": True})


def export_html(fig_or_embeddings: go.Figure | ArrayLike, dataset: ReIdDataset, path: str | os.PathLike,
                thumbnails: bool = True, *, thumbnail_height: int = 48, include_plotlyjs: bool | str = True,
                title: str = "cliptk embeddings", **plot_kwargs: Any) -> Path:
    """Write a standalone HTML page of the plot that shows image thumbnails on hover.

    The page needs no Jupyter and, with the default ``include_plotlyjs=True``, no network: share
    it after a workshop. See :func:`html_fragment` for how the thumbnails work.

    Args:
        fig_or_embeddings, dataset, thumbnails, thumbnail_height, include_plotlyjs, **plot_kwargs:
            as in :func:`html_fragment` (here plotly.js is inlined by default).
        path: the ``.html`` file to write (parent folders are created).
        title: the page's ``<title>``.

    Returns:
        The written path.

    Example:
        >>> export_html(emb, ds, "out/players.html", color_by="team")   # doctest: +SKIP
    """
    frag = html_fragment(fig_or_embeddings, dataset, thumbnails, thumbnail_height=thumbnail_height,
                         include_plotlyjs=include_plotlyjs, **plot_kwargs)
    page = (f"<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
            f"<body style=\"margin:0;font-family:sans-serif\">\n{frag}\n</body>\n</html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ============================================================================ numbers
def _same_id_pairs(pids: np.ndarray, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i != j, same pid >= 0: each image paired with a random other image of its identity."""
    order = np.argsort(pids, kind="stable")
    sorted_p = pids[order]
    starts = np.searchsorted(sorted_p, sorted_p, side="left")
    counts = np.searchsorted(sorted_p, sorted_p, side="right") - starts
    ok = (counts > 1) & (sorted_p >= 0)
    i = order[ok]
    offset = rng.integers(1, counts[ok])  # 1..count-1 positions further, wrapping inside the group
    pos_in_group = np.arange(len(sorted_p))[ok] - starts[ok]
    j = order[starts[ok] + (pos_in_group + offset) % counts[ok]]
    if len(i) > max_pairs:
        pick = rng.choice(len(i), max_pairs, replace=False)
        i, j = i[pick], j[pick]
    return i, j


def embedding_report(emb: ArrayLike, dataset: ReIdDataset | ArrayLike, projection: ArrayLike | None = None, *,
                     k: int = 5, k_projection: int = 10, max_samples: int = 5000, seed: int = 0) -> pd.DataFrame:
    """The numbers to read beside an embedding plot, as a small table.

    Rows (from :mod:`cliptk.metrics`; images with pid ``-1`` are left out of identity numbers):

    * ``knn_accuracy`` — leave-one-out ``k``-NN identity accuracy (cosine). Higher is better.
    * ``alignment`` — mean squared distance of same-identity pairs (each image with a random other
      image of its identity, at most ``max_samples`` pairs; Wang & Isola, ICML 2020). Lower is better.
    * ``uniformity`` — log mean Gaussian potential over pairs (on at most ``max_samples`` images).
      Lower is more spread out.
    * with ``projection``: ``neighbourhood_overlap`` (shared fraction of ``k_projection``
      neighbours, embedding vs. plot) and ``trustworthiness`` (Venna & Kaski, 2001; on at most
      ``max_samples`` points). Higher means the picture can be trusted.

    Args:
        emb: ``[N, D]`` embeddings.
        dataset: the rows' :class:`ReIdDataset`, or an array of ``N`` identity labels.
        projection: optional ``[N, 2|3]`` projection of ``emb`` (e.g. from :func:`project`).
        k, k_projection: neighbourhood sizes (clipped for tiny ``N``).
        max_samples, seed: sampling for the quadratic metrics.

    Returns:
        ``pandas.DataFrame`` indexed by metric with columns ``value``, ``better`` (``"higher"`` /
        ``"lower"``) and ``detail``.

    Raises:
        ValueError: row counts differ, or fewer than 2 labelled images.

    Example:
        >>> rng = np.random.default_rng(0); pids = np.arange(40) % 4
        >>> emb = np.eye(8)[pids] + 0.1 * rng.normal(size=(40, 8))
        >>> float(embedding_report(emb, pids).loc["knn_accuracy", "value"])
        1.0
    """
    x = _as_matrix(emb)
    n = x.shape[0]
    pids = dataset.pids if isinstance(dataset, ReIdDataset) else np.asarray(dataset)
    if len(pids) != n:
        raise ValueError(f"{n} embeddings but {len(pids)} labels/rows; same images, same order")
    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(pids >= 0) if np.issubdtype(pids.dtype, np.number) else np.arange(n)
    if len(labelled) < 2:
        raise ValueError("embedding_report needs at least 2 images with a known pid (pid >= 0)")
    rows: list[tuple[str, float, str, str]] = []
    kk = min(k, len(labelled) - 1)
    rows.append(("knn_accuracy", metrics.knn_accuracy(x[labelled], pids[labelled], kk), "higher",
                 f"leave-one-out {kk}-NN identity vote, cosine, {len(labelled)} labelled images"))
    i, j = _same_id_pairs(pids[labelled] if np.issubdtype(pids.dtype, np.number) else pd.factorize(pids)[0],
                          max_samples, rng)
    if len(i):
        rows.append(("alignment", metrics.alignment(x[labelled][i], x[labelled][j]), "lower",
                     f"mean ||f(a) - f(b)||^2 over {len(i)} same-identity pairs"))
    else:
        rows.append(("alignment", float("nan"), "lower", "no identity has two images"))
    sample = np.sort(rng.choice(n, max_samples, replace=False)) if n > max_samples else np.arange(n)
    rows.append(("uniformity", metrics.uniformity(x[sample]), "lower",
                 f"log mean exp(-2 ||f(a) - f(b)||^2) over pairs of {len(sample)} images"))
    if projection is not None:
        p = _as_matrix(projection, "projection")
        if p.shape[0] != n:
            raise ValueError(f"projection has {p.shape[0]} rows but emb has {n}")
        kp = max(1, min(k_projection, (min(n, max_samples) - 1) // 2))
        rows.append(("neighbourhood_overlap", metrics.neighbourhood_overlap(x, p, kp), "higher",
                     f"shared fraction of {kp} nearest neighbours, embedding vs projection"))
        rows.append(("trustworthiness", metrics.trustworthiness(x, p, kp, max_samples=max_samples, seed=seed),
                     "higher", f"k={kp}, on {min(n, max_samples)} points"))
    return pd.DataFrame(rows, columns=["metric", "value", "better", "detail"]).set_index("metric")
