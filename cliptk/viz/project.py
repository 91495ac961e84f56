"""Projections of an embedding space to 2-D or 3-D, for plotting.

:func:`project` runs UMAP (McInnes, Healy & Melville, 2018, arXiv:1802.03426), PCA or t-SNE
(van der Maaten & Hinton, JMLR 2008) on ``[N, D]`` embeddings with cosine defaults and a seed;
:class:`ProjectionConfig` holds the settings (YAML round trip). :func:`aligned_projection` puts
two embeddings of the same images (before / after fine-tuning) into one coordinate frame, with
AlignedUMAP or with separate projections matched by orthogonal Procrustes. :func:`warm_up` pays
UMAP's one-off numba compile cost at a moment of the user's choosing; compiled kernels are kept
on disk (``NUMBA_CACHE_DIR``, by default ``cache/numba`` in the data folder) for later sessions,
and a fit that is about to compile says so in one line on stderr.

Timings of each method on 10k x 512 embeddings are in ``benchmarks/RESULTS.md``
(``benchmarks/bench_projection.py``).

Example:
    >>> x = np.random.default_rng(0).normal(size=(40, 16))
    >>> project(x, "pca").shape
    (40, 2)
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

from .._util import as_rows, unit_rows
from ..settings import data_dir

__all__ = ["ProjectionConfig", "project", "warm_up", "aligned_projection", "METHODS", "ALIGN_METHODS", "ArrayLike",
           "APPROXIMATE_FROM"]

#: Methods of :func:`project`.
METHODS = ("umap", "pca", "tsne")
#: Methods of :func:`aligned_projection`.
ALIGN_METHODS = ("aligned_umap", "umap", "pca", "tsne")

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences


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
            umap-learn does above 10,000 points, which keeps 10k-point projections short).
        perplexity: t-SNE perplexity (clipped to ``(N - 1) / 3`` for small ``N``).
        threads: CPU threads for BLAS/OpenMP (PCA, t-SNE, UMAP's spectral start) and for UMAP's
            numba code when ``seed`` is None. ``None`` (default) = one BLAS/OpenMP thread and
            numba's default: on a busy or shared machine, spin-waiting BLAS/OpenMP pools (two
            OpenMP runtimes get loaded, scikit-learn's and torch's) make PCA and t-SNE many times
            slower than single-threaded (measured in ``benchmarks/RESULTS.md``). Raise it for
            big t-SNE runs on a machine of your own.
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


_WARM: set[str] = set()  # what warm_up / a first fit has compiled in this process ("umap-seeded", ...)
_NUMBA_MODULES = ("umap", "pynndescent")
_umap_module = None


def _numba_cache_dir() -> Path | None:
    """Where numba keeps compiled kernels between processes: ``NUMBA_CACHE_DIR`` if the user set
    it, else ``cache/numba`` under :func:`cliptk.settings.data_dir` when writable (set here, for the
    process), else ``None`` (numba's own choice beside the installed sources)."""
    if os.environ.get("NUMBA_CACHE_DIR"):   # the user's, or the one chosen below on the first call
        return Path(os.environ["NUMBA_CACHE_DIR"])
    folder = data_dir() / "cache" / "numba"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return None
    os.environ["NUMBA_CACHE_DIR"] = str(folder)   # before numba is imported (numba also re-reads it per compile)
    if "numba" in sys.modules:
        sys.modules["numba"].config.CACHE_DIR = str(folder)
    return folder


def _import_umap():
    """``umap``, imported once with numba's disk cache on for its kernels and pynndescent's.

    umap-learn compiles its numba kernels on first use in every process (only one asks numba to
    cache it); pynndescent caches most of its own. Here every module-level kernel of both that is
    not cached and not yet compiled gets numba's ``enable_caching()``, so the second session loads
    compiled code from :func:`_numba_cache_dir` instead of compiling it again. Kernels numba cannot
    cache (closures built at run time) compile as before."""
    global _umap_module
    if _umap_module is not None:
        return _umap_module
    import importlib
    import pkgutil

    _numba_cache_dir()
    import umap  # importing umap-learn loads numba and compiles its eager kernels: seconds
    from numba.core.dispatcher import Dispatcher

    for pkg in (importlib.import_module(m) for m in _NUMBA_MODULES):
        for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
            module = sys.modules.get(info.name)   # what umap imported; the rest is never used
            for value in vars(module).values() if module is not None else ():
                if isinstance(value, Dispatcher) and not value.overloads and type(value._cache).__name__ == "NullCache":
                    value.enable_caching()
    _umap_module = umap
    return umap


def _marker(flavour: str) -> Path | None:
    """A file that says this machine's numba cache holds the ``flavour`` kernels of these versions."""
    folder = _numba_cache_dir()
    if folder is None:
        return None
    from importlib.metadata import version

    return folder / f"cliptk-{flavour}-umap{version('umap-learn')}-numba{version('numba')}.done"


def _say_compiling(flavour: str, approximate: bool = False) -> None:
    """One line on stderr when a fit is about to compile numba kernels: umap-learn's on the first
    fit of a process when none are kept on disk yet, pynndescent's (which numba cannot keep) on
    the first fit of :data:`APPROXIMATE_FROM` rows or more in each process."""
    marker = _marker(flavour)
    first_here = flavour not in _WARM and (marker is None or not marker.exists())
    if approximate and f"{flavour}-approximate" not in _WARM:
        print(f"cliptk: compiling UMAP's numba kernels for {APPROXIMATE_FROM}+ rows (pynndescent's, which numba "
              "cannot keep between sessions), tens of seconds once per session", file=sys.stderr, flush=True)
    elif first_here:
        where = f" (kept in {marker.parent} for later sessions)" if marker is not None else ""
        print(f"cliptk: compiling UMAP's numba kernels, tens of seconds the first time{where}", file=sys.stderr,
              flush=True)


def _compiled(flavour: str) -> None:
    _WARM.add(flavour)
    marker = _marker(flavour)
    if marker is not None and not marker.exists():
        with contextlib.suppress(OSError):
            marker.touch()


def _flavour(seed: int | None) -> str:
    """Seeded UMAP runs umap-learn's single-threaded kernels; ``seed=None`` its parallel ones."""
    return "umap-seeded" if seed is not None else "umap-parallel"


#: From this many rows on, umap-learn finds neighbours with pynndescent (approximate) instead of exactly.
APPROXIMATE_FROM = 4096


def warm_up(aligned: bool = False, *, rows: int | None = None, seed: int | None = 0, metric: str = "cosine") -> float:
    """Compile UMAP's numba kernels once per Python process (kernel); returns the seconds spent.

    umap-learn and pynndescent are written in numba: the first UMAP fit in a fresh process spends
    tens of seconds compiling before any real work, and the first ``AlignedUMAP`` fit
    (:func:`aligned_projection`) compiles more (timings in ``benchmarks/RESULTS.md``). This runs
    :func:`project` itself on small random data along the code paths a projection takes — exact
    nearest neighbours (under :data:`APPROXIMATE_FROM` rows) and pynndescent's approximate ones
    (from that many rows on) — so the next :func:`project` with the same ``seed`` kind and
    ``metric`` compiles nothing. umap-learn's own kernels are also kept on disk (see
    :func:`_import_umap`), so later sessions load them instead of compiling them; pynndescent's
    neighbour search cannot be cached by numba and compiles once per process. Repeated calls
    return 0 immediately.

    Args:
        aligned: also compile AlignedUMAP (for :func:`cliptk.viz.plot_before_after`).
        rows: how many rows the coming projections have, if known: below
            :data:`APPROXIMATE_FROM` only the exact path is compiled (cheaper); ``None`` = both.
        seed: as for :func:`project`: an int (the default) warms the single-threaded kernels a
            seeded projection runs, ``None`` the parallel ones.
        metric: the metric the projections will use.

    Example (skipped by the doctest run: it compiles numba code for tens of seconds):
        >>> seconds = warm_up()          # doctest: +SKIP
    """
    flavour = _flavour(seed)
    paths = [False] if rows is not None and rows < APPROXIMATE_FROM else [False, True]
    todo = {f"{flavour}-{'approximate' if p else 'exact'}" for p in paths} | ({"aligned"} if aligned else set())
    if todo <= _WARM:
        return 0.0
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    # 640 x 512 float32 (1.25 MiB): above the 1 MiB from which pynndescent's forest splits nodes
    # breadth-first, so its split kernels compile here too, as for a real 10k x 512 projection
    x = rng.normal(size=(640, 512)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for approximate in paths:   # project's nearest-neighbour paths; it says "compiling" if nothing is cached
            if f"{flavour}-{'approximate' if approximate else 'exact'}" not in _WARM:
                project(x, "umap", seed=seed, metric=metric, n_epochs=5, force_approximation_algorithm=approximate)
        if aligned and "aligned" not in _WARM:
            aligned_projection(x[:64], x[:64] + 0.01 * rng.normal(size=(64, 512)).astype(np.float32), seed=seed,
                               n_epochs=5)
    return time.perf_counter() - t0


def project(embeddings: ArrayLike, method: str | ProjectionConfig = "umap", n_components: int = 2, *,
            seed: int | None = 0, pca_dims: int | str | None = "auto", metric: str = "cosine",
            **options: Any) -> np.ndarray:
    """Project ``[N, D]`` embeddings to ``[N, 2]`` or ``[N, 3]`` for plotting.

    Methods (cosine geometry by default: rows are L2-normalised first):

    * ``"umap"`` — umap-learn's UMAP with ``metric="cosine"`` (McInnes et al., 2018). The first
      call in a kernel pays a numba compile cost; call :func:`warm_up` once at the top of a
      notebook. With ``seed`` set UMAP runs single-threaded (reproducible); ``seed=None`` uses
      every core and is faster.
    * ``"pca"`` — scikit-learn PCA of the normalised rows (deterministic, linear, the fastest).
    * ``"tsne"`` — scikit-learn's Barnes-Hut t-SNE (van der Maaten & Hinton, 2008), PCA
      initialisation, ``learning_rate="auto"``, after a PCA pre-reduction to 50 dimensions; the
      slowest (see ``threads`` in :class:`ProjectionConfig`).

    Timings for 10k x 512 embeddings: ``benchmarks/RESULTS.md`` (``benchmarks/bench_projection.py``).

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
    x = as_rows(embeddings, "embeddings", np.float32)
    if x.shape[0] < 4:
        raise ValueError(f"project: need at least 4 rows to project, got {x.shape[0]}")
    if cfg.metric == "cosine":
        x = unit_rows(x, "embeddings", np.float32)
    if cfg.method == "umap":  # numba threads: one with a seed (umap-learn's rule), else cfg.threads or all
        import numba  # here, not at module top: only UMAP needs it, and it is slow to import

        before = numba.get_num_threads()
        if cfg.threads is not None:
            numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
        try:
            with threadpool_limits(cfg.threads or 1):
                return _run_estimator(cfg, x)
        finally:
            numba.set_num_threads(before)
    with threadpool_limits(cfg.threads or 1):
        return _run_estimator(cfg, x)


def _run_estimator(cfg: ProjectionConfig, x: np.ndarray) -> np.ndarray:
    """Fit and apply the estimator ``cfg.method`` (PCA, t-SNE or UMAP, after an optional PCA
    pre-reduction) on validated (and, for cosine, L2-normalised) rows."""
    from sklearn.decomposition import PCA  # scikit-learn and umap load here: `import cliptk.viz` stays quick

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

    umap = _import_umap()  # method == "umap" (lazy, see above)

    n_epochs = cfg.n_epochs if cfg.n_epochs is not None else (500 if n < 5000 else 200)
    kw = dict(n_neighbors=min(cfg.n_neighbors, n - 1), min_dist=cfg.min_dist, metric=metric,
              n_epochs=n_epochs, random_state=cfg.seed)
    if n <= cfg.n_components + 2:
        kw["init"] = "random"  # spectral init needs more points than dimensions
    kw.update(cfg.options)
    path = "approximate" if n >= APPROXIMATE_FROM or kw.get("force_approximation_algorithm") else "exact"
    _say_compiling(_flavour(cfg.seed), path == "approximate")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        warnings.filterwarnings("ignore", message=".*gradient function is not yet implemented.*")
        warnings.filterwarnings("ignore", message=".*[Cc]annot cache.*")   # numba: a kernel it cannot keep
        out = umap.UMAP(n_components=cfg.n_components, **kw).fit_transform(x)
    _compiled(_flavour(cfg.seed))
    _WARM.add(f"{_flavour(cfg.seed)}-{path}")
    return np.asarray(out, dtype=np.float32)


def _procrustes_to(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """``moving`` rotated/reflected, uniformly scaled and shifted to best match ``reference``
    (orthogonal Procrustes, least squares over corresponding rows)."""
    from scipy.linalg import orthogonal_procrustes  # lazy like scikit-learn above

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
    b, a = as_rows(emb_before, "emb_before", np.float32), as_rows(emb_after, "emb_after", np.float32)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"emb_before has {b.shape[0]} rows but emb_after has {a.shape[0]}; "
                         "embed the same images, in the same order, with both models")
    if method not in ALIGN_METHODS:
        raise ValueError(f"aligned_projection: method={method!r}; choose one of {ALIGN_METHODS}")
    if method != "aligned_umap":
        pb = project(b, method, n_components, seed=seed, **options)
        pa = project(a, method, n_components, seed=seed, **options)
        return pb, _procrustes_to(pb, pa)
    umap = _import_umap()  # lazy: numba, slow to import

    n = b.shape[0]
    kw = dict(n_neighbors=min(15, n - 1), metric="cosine", random_state=seed, n_epochs=200 if n >= 5000 else None)
    kw.update(options)
    _say_compiling("aligned")
    with warnings.catch_warnings(), threadpool_limits(1):  # see ProjectionConfig.threads
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        warnings.filterwarnings("ignore", message=".*[Cc]annot cache.*")
        mapper = umap.AlignedUMAP(n_components=n_components, **kw).fit(
            [unit_rows(b, "emb_before", np.float32), unit_rows(a, "emb_after", np.float32)],
            relations=[{i: i for i in range(n)}])
    _compiled("aligned")
    return (np.asarray(mapper.embeddings_[0], dtype=np.float32), np.asarray(mapper.embeddings_[1], dtype=np.float32))
