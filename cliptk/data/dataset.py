"""The dataset type: a table of images with identities, cameras, splits and captions.

A :class:`ReIdDataset` is a table (one row per image: ``path, pid, camid, split, caption`` plus any
extra metadata columns such as ``team`` or ``number``) and the folder its paths are relative to.
Every reader (:mod:`cliptk.data.readers`) returns one, and everything downstream (embedding,
evaluation, training, plots) takes one, so this is the one place that says what a dataset is.

Identities: ``pid`` is an integer; ``-1`` marks an unlabelled / junk image. A non-integer label
(a folder or manifest name such as ``"alice"``) gets :func:`stable_pid`: the same integer in every
call, process and machine, so splits read separately stay aligned.

Cameras: ``camid`` is an integer; ``-1`` means *unknown* (folders and manifests without a camera
column). :attr:`ReIdDataset.has_cameras` says whether every row has one;
:func:`camids_for_evaluation` turns that into the evaluation rule (unknown cameras: no camera
filtering, only the query image itself is never its own match).

Images are opened lazily by :func:`load_image`, always as 8-bit RGB (16-bit and float images are
scaled, not clipped; alpha is composited on black). A corrupt, truncated, missing, empty or
too-large file raises :class:`ImageLoadError` naming the file and what to do;
``on_error="skip"`` instead skips such files, records them and warns once
(:meth:`ReIdDataset.without_unreadable` leaves them out of an evaluation and says how many).

Example:
    >>> import pandas as pd
    >>> ds = ReIdDataset("imgs", pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg"], "pid": [3, 3, 5],
    ...                                        "split": ["query", "gallery", "gallery"]}))
    >>> ds
    ReIdDataset('dataset', 3 images, 2 ids: query=1, gallery=2; root=imgs)
    >>> ds.subset("gallery").pids.tolist(), ds.camids.tolist(), ds.has_cameras
    ([3, 5], [-1, -1, -1], False)
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .._util import atomic_path
from .images import ImageLoadError, _size_hw, load_image

__all__ = ["ReIdDataset", "ImageLoadError", "load_image", "concat", "stable_pid", "camids_for_evaluation",
           "REQUIRED_COLUMNS", "UNKNOWN_CAMERA"]

REQUIRED_COLUMNS = ("path", "pid", "camid", "split", "caption")
#: ``camid`` of an image whose camera is not known (folders, manifests without a ``camid`` column).
UNKNOWN_CAMERA = -1


# --- identities --------------------------------------------------------------------------------------
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_HASH_BASE = 1 << 52


def stable_pid(label: str) -> int:
    """The integer pid of an identity label (a folder name, a manifest's ``pid`` text).

    An integer label keeps its value (``"0002"`` -> 2, ``"-1"`` -> -1 = unlabelled). Any other
    label maps to ``2**52 + `` a 52-bit BLAKE2b hash of its UTF-8 bytes: the same number in every
    call, process and machine (so a ``query/`` and a ``gallery/`` folder read separately get the
    same pid for the same name), never equal to an integer label below ``2**52``, and below
    ``2**53`` so exact in float64 and JavaScript. Readers keep the label in an ``identity`` column.

    Example:
        >>> stable_pid("0002"), stable_pid("alice") == stable_pid("alice"), stable_pid("alice") >= 2**52
        (2, True, True)
    """
    label = str(label).strip()
    if _INTEGER.match(label):
        return int(label)
    h = hashlib.blake2b(label.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return _HASH_BASE | (int.from_bytes(h, "big") & (_HASH_BASE - 1))


def _pid_column(values: pd.Series, where: str, row: int = 0) -> tuple[np.ndarray, list[str] | None]:
    """``values`` as int64 pids, and the labels when they were names (``None`` when integers).

    ``row`` is added to 0-based positions in messages (2 for a CSV: header + 1-based)."""
    def bad(i: int, why: str) -> ValueError:
        return ValueError(f"{where}: column 'pid' {why}; row {i + row} has {_show(values.iat[i])!r}")

    if pd.api.types.is_bool_dtype(values):
        raise bad(0, "must hold integers (or identity names), not booleans")
    if pd.api.types.is_integer_dtype(values) and not values.isna().any():
        return values.to_numpy().astype(np.int64), None  # exact (no trip through float)
    if pd.api.types.is_numeric_dtype(values):
        num = values.astype(float)
        wrong = ~np.isfinite(num.to_numpy()) | (num.to_numpy() != np.round(num.to_numpy()))
        if wrong.any():
            raise bad(int(np.flatnonzero(wrong)[0]), "must hold integers (use -1 for an unlabelled image)")
        return num.to_numpy().astype(np.int64), None
    text = values.astype(str).str.strip()
    empty = (text == "") | values.isna().to_numpy()
    if empty.any():
        raise bad(int(np.flatnonzero(empty.to_numpy())[0]), "has an empty value (use -1 for an unlabelled image)")
    if text.str.match(_INTEGER.pattern).all():
        return text.astype(np.int64).to_numpy(), None  # exact, even above 2**53
    num = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
    numeric = np.isfinite(num)
    integral = numeric & (num == np.round(num)) & (np.abs(num) < 2**53)
    if integral.all():  # "1.0"
        return num.astype(np.int64), None
    if numeric.any():  # "7" and "alice", or "1.5": a typo, not a naming scheme
        i = int(np.flatnonzero(~integral)[0])
        raise bad(i, "must hold integers or identity names, not a mix (or a non-integer number)")
    labels = text.tolist()
    pids = np.array([stable_pid(s) for s in labels], dtype=np.int64)
    _check_collisions(pids, labels, where)
    return pids, labels


def _show(value):
    """A cell as its plain Python value (``1.5``, not ``np.float64(1.5)``) for messages."""
    return value.item() if isinstance(value, np.generic) else value


def _check_collisions(pids: np.ndarray, labels: Sequence[str], where: str) -> None:
    """Two different labels with one pid ("0002" and "2", or a hash collision) would merge identities."""
    seen: dict[int, str] = {}
    for p, s in zip(pids.tolist(), labels):
        other = seen.setdefault(p, s)
        if other != s:
            raise ValueError(f"{where}: identities {other!r} and {s!r} both map to pid {p} "
                             "(integer names keep their value); rename one of them")


def _camid_column(values: pd.Series, where: str, row: int = 0) -> np.ndarray:
    """Integer camera ids; empty cells are unknown (-1)."""
    if pd.api.types.is_integer_dtype(values) and not values.isna().any():
        return values.to_numpy().astype(np.int64)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        num = values.astype(float).fillna(UNKNOWN_CAMERA).to_numpy()
    else:
        text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
        num = pd.to_numeric(text.where(text != "", str(UNKNOWN_CAMERA)), errors="coerce").to_numpy(dtype=float)
    wrong = ~np.isfinite(num) | (num != np.round(num))
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise ValueError(f"{where}: column 'camid' must hold integers (-1 or empty = unknown camera); "
                         f"row {i + row} has {_show(values.iat[i])!r}")
    return num.astype(np.int64)


# --- the dataset -------------------------------------------------------------------------------------
@dataclass
class ReIdDataset:
    """Images with identity labels, cameras, splits and optional captions.

    Attributes:
        root: the folder that the ``path`` column is relative to.
        table: a ``pandas.DataFrame`` with at least ``path`` (str) and ``pid`` (int, ``-1`` = unknown /
            junk; text labels are mapped with :func:`stable_pid` and kept as ``identity``), and
            optionally ``camid`` (int, ``-1`` = unknown camera, the default), ``split`` (str:
            ``train`` (default), ``query``, ``gallery``, ``challenge_query``, ``challenge_gallery``
            or any user label) and ``caption`` (str or None). Extra columns are free metadata
            (``team``, ``number``...), usable by plots.
        name: a short label for reprs and caches.
        on_error: ``"raise"`` (default) or ``"skip"``; see :meth:`image`.
        skipped: the files found unreadable so far (``on_error="skip"``), in the order found.
        target_size: passed to :func:`load_image` by :meth:`image` (``(height, width)`` the images
            will be resized to, e.g. ``model.image_size``); ``None`` decodes at full size.

    Indexing returns the RGB image: ``ds[i]``. ``ds.subset("query")`` selects a split;
    ``ds.holdout(...)`` makes query/gallery splits from held-out identities.

    Example (the readers in :mod:`cliptk.data.readers` build one from a folder; here a table by hand):
        >>> import pandas as pd
        >>> ds = ReIdDataset("imgs", pd.DataFrame({"path": ["a.jpg", "b.jpg"], "pid": [7, 7], "team": ["A", "A"]}))
        >>> list(ds.table.columns)
        ['path', 'pid', 'camid', 'split', 'caption', 'team']
        >>> ds.paths[0].as_posix(), ds.captions
        ('imgs/a.jpg', [None, None])
    """

    root: Path
    table: pd.DataFrame
    name: str = "dataset"
    on_error: Literal["raise", "skip"] = "raise"
    skipped: list[str] = field(default_factory=list)
    target_size: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        t = self.table.copy()
        if "path" not in t.columns or "pid" not in t.columns:
            raise ValueError(f"{self.name}: the table needs at least 'path' and 'pid' columns, got {list(t.columns)}")
        if "camid" not in t.columns:
            t["camid"] = UNKNOWN_CAMERA
        if "split" not in t.columns:
            t["split"] = "train"
        if "caption" not in t.columns:
            t["caption"] = None
        t["path"] = t["path"].astype(str)
        pids, labels = _pid_column(t["pid"].reset_index(drop=True), self.name)
        if labels is not None and "identity" not in t.columns:
            t["identity"] = labels
        t["pid"] = pids
        t["camid"] = _camid_column(t["camid"].reset_index(drop=True), self.name)
        t["split"] = t["split"].astype(str)
        t["caption"] = t["caption"].astype(object).where(t["caption"].notna(), None)
        others = [c for c in t.columns if c not in REQUIRED_COLUMNS]
        self.table = t[list(REQUIRED_COLUMNS) + others].reset_index(drop=True)
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        _size_hw(self.target_size)

    # --- columns as arrays -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    @property
    def paths(self) -> list[Path]:
        """Absolute paths of the images, in row order."""
        return [self.root / p for p in self.table["path"]]

    @property
    def pids(self) -> np.ndarray:
        return self.table["pid"].to_numpy()

    @property
    def camids(self) -> np.ndarray:
        """Camera ids; ``-1`` (:data:`UNKNOWN_CAMERA`) where unknown."""
        return self.table["camid"].to_numpy()

    @property
    def has_cameras(self) -> bool:
        """Whether every row has a known camera id (``camid >= 0``); an empty dataset has none.

        Without cameras, evaluation does no camera filtering (see :func:`camids_for_evaluation`)."""
        return bool(len(self)) and bool((self.camids >= 0).all())

    @property
    def splits(self) -> np.ndarray:
        return self.table["split"].to_numpy()

    @property
    def captions(self) -> list[str | None]:
        return list(self.table["caption"])

    @property
    def split_names(self) -> list[str]:
        return list(dict.fromkeys(self.table["split"]))

    # --- images --------------------------------------------------------------------------------
    def image(self, i: int, target_size: int | tuple[int, int] | None = None) -> Image.Image | None:
        """The RGB image of row ``i`` (``target_size`` defaults to :attr:`target_size`; see :func:`load_image`).

        With ``on_error="skip"`` a bad file returns ``None``, is recorded in ``self.skipped`` and
        warns once per dataset; otherwise :class:`ImageLoadError` names the file.
        """
        path = self.root / self.table["path"].iat[i]
        try:
            return load_image(path, target_size if target_size is not None else self.target_size)
        except ImageLoadError as err:
            if self.on_error == "raise":
                raise
            if str(path) not in self.skipped:
                self.skipped.append(str(path))
                if len(self.skipped) == 1:
                    warnings.warn(f"{self.name}: skipping unreadable image(s); first: {err}", stacklevel=2)
            return None

    def __getitem__(self, i: int) -> Image.Image | None:
        return self.image(int(i))

    def find_unreadable(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Decode ``rows`` (default: all) here and return the indices of those that fail, sorted.

        Never raises for a bad image (whatever ``on_error``); the files are added to ``skipped``.
        Cheap on a few rows, e.g. those :func:`cliptk.embed` left NaN (see :meth:`without_unreadable`).
        """
        rows = np.arange(len(self)) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        bad = []
        for i in rows.tolist():
            path = self.root / self.table["path"].iat[i]
            try:
                load_image(path, self.target_size)
            except ImageLoadError:
                bad.append(i)
                if str(path) not in self.skipped:
                    self.skipped.append(str(path))
        return np.asarray(bad, dtype=np.int64)

    def verify(self) -> list[str]:
        """Decode every image once; return the unreadable files (raises on the first one unless
        ``on_error="skip"``). Use before a long run to find bad files early."""
        if self.on_error == "raise":
            for i in range(len(self)):
                self.image(i)
            return []
        bad = [str(self.root / self.table["path"].iat[i]) for i in self.find_unreadable()]
        if bad:
            warnings.warn(f"{self.name}: {len(bad)} unreadable image(s) skipped, e.g. {bad[0]}", stacklevel=2)
        return bad

    def drop_unreadable(self) -> "ReIdDataset":
        """A copy without the files :meth:`verify` could not read (counted in the warning)."""
        bad = set(self.verify())
        keep = np.array([str(p) not in bad for p in self.paths], dtype=bool)
        return self.select(keep)

    def without_unreadable(self, embeddings):
        """``(dataset, embeddings)`` without the rows whose image cannot be read: the hook for
        evaluating an ``on_error="skip"`` dataset.

        ``embeddings`` is what :func:`cliptk.embed` returned for this dataset (one row per image;
        rows of skipped files are NaN). Only the non-finite rows are decoded again: those whose
        file is unreadable are left out and counted in one warning; a non-finite row whose image
        reads fine is kept (the model produced it, and evaluation should say so).

        Raises:
            ValueError: ``embeddings`` does not have one row per image.

        Example:
            >>> import tempfile, torch
            >>> root = Path(tempfile.mkdtemp())
            >>> Image.new("RGB", (4, 4)).save(root / "a.png")      # b.png is missing
            >>> ds = ReIdDataset(root, pd.DataFrame({"path": ["a.png", "b.png"], "pid": [1, 2]}), on_error="skip")
            >>> kept, emb = ds.without_unreadable(torch.tensor([[1.0, 0.0], [float("nan"), 0.0]]))  # warns
            >>> kept.table["path"].tolist(), tuple(emb.shape)
            (['a.png'], (1, 2))
        """
        n = embeddings.shape[0] if getattr(embeddings, "ndim", 0) >= 1 else -1
        if n != len(self):
            raise ValueError(f"{self.name}: {len(self)} images but embeddings of shape "
                             f"{tuple(getattr(embeddings, 'shape', ()))}; pass what embed returned for this dataset")
        finite = np.isfinite(np.asarray(embeddings, dtype=np.float64).reshape(n, -1)).all(axis=1)
        bad = self.find_unreadable(np.flatnonzero(~finite))
        if not len(bad):
            return self, embeddings
        keep = np.ones(n, dtype=bool)
        keep[bad] = False
        first = self.root / self.table["path"].iat[int(bad[0])]
        warnings.warn(f"{self.name}: left out {len(bad)} of {n} image(s) that cannot be read, e.g. {first}",
                      stacklevel=2)
        return self.select(keep), embeddings[np.flatnonzero(keep)]

    # --- selection -----------------------------------------------------------------------------
    def select(self, rows: np.ndarray | Sequence[int] | Sequence[bool]) -> "ReIdDataset":
        """A new dataset with the given rows (indices or a boolean mask)."""
        rows = np.asarray(rows)
        t = self.table[rows] if rows.dtype == bool else self.table.iloc[rows]
        return ReIdDataset(self.root, t.reset_index(drop=True), name=self.name, on_error=self.on_error,
                           target_size=self.target_size)

    def subset(self, *splits: str) -> "ReIdDataset":
        """The rows whose ``split`` is one of ``splits`` (e.g. ``ds.subset("query")``).

        Raises:
            KeyError: a split name is not present; the message lists those that are.
        """
        missing = [s for s in splits if s not in self.split_names]
        if missing:
            hint = (" (a folder-per-identity dataset has none: make them with dataset.holdout())"
                    if {"query", "gallery"} & set(missing) else "")
            raise KeyError(f"{self.name}: no split {missing}; available: {self.split_names}{hint}")
        out = self.select(self.table["split"].isin(splits).to_numpy())
        out.name = f"{self.name}[{'+'.join(splits)}]"
        return out

    def holdout(self, ids: int | float = 0.2, *, seed: int = 0, queries_per_id: int = 1,
                split: str = "train") -> "ReIdDataset":
        """Hold out identities of ``split`` for evaluation: a copy whose splits are ``train`` (the
        other identities), ``query`` and ``gallery`` (the held-out ones).

        The way to evaluate a dataset that has no query/gallery split (one folder per identity).
        ``ids`` identities (an int) or that fraction of them (a float in (0, 1)) are drawn from the
        eligible ones; of each, ``queries_per_id`` images become queries and the rest its gallery,
        so train, query and gallery identities are as disjoint as asked, and a query image is never
        in the gallery. Eligible: ``pid >= 0`` and at least ``queries_per_id + 1`` images; when
        cameras are known (:attr:`has_cameras`) the queries of an identity come from one camera and
        it needs a second camera in the gallery (evaluation drops same-camera matches).
        Deterministic: the same table and ``seed`` give the same splits, whatever the row order.
        Rows of other splits and unlabelled rows (``pid -1``) are left as they are.

        Raises:
            ValueError: the dataset already has a query or gallery split, ``split`` is missing,
                ``ids`` is out of range, or too few identities are eligible (the message says how
                many are and what to lower).

        Example:
            >>> import pandas as pd
            >>> ds = ReIdDataset("imgs", pd.DataFrame({"path": [f"{i}.jpg" for i in range(12)],
            ...                                        "pid": [i // 3 for i in range(12)]}))
            >>> h = ds.holdout(2, seed=0)
            >>> h.summary()[["images", "identities"]].to_dict("index")
            {'train': {'images': 6, 'identities': 2}, 'query': {'images': 2, 'identities': 2}, 'gallery': {'images': 4, 'identities': 2}}
        """
        present = [s for s in ("query", "gallery") if s in self.split_names]
        if present:
            raise ValueError(f"{self.name}.holdout: the dataset already has split(s) {present}; holdout makes "
                             "them from a dataset without (evaluate the existing ones instead)")
        if split not in self.split_names:
            raise ValueError(f"{self.name}.holdout: no split {split!r} to hold identities out of; "
                             f"available: {self.split_names}")
        if isinstance(queries_per_id, bool) or int(queries_per_id) != queries_per_id or queries_per_id < 1:
            raise ValueError(f"{self.name}.holdout: queries_per_id must be an integer >= 1, got {queries_per_id!r}")
        t = self.table
        rows = np.flatnonzero((t["split"] == split).to_numpy() & (t["pid"] >= 0).to_numpy())
        cams = self.select(rows).has_cameras
        members: dict[int, list[int]] = {}
        for i in sorted(rows.tolist(), key=lambda i: t["path"].iat[i]):  # row order does not matter
            members.setdefault(int(t["pid"].iat[i]), []).append(i)
        eligible = sorted(p for p, m in members.items() if _query_pool(t, m, queries_per_id, cams) is not None)
        whole = isinstance(ids, (int, np.integer)) and not isinstance(ids, bool)
        fraction = isinstance(ids, (float, np.floating)) and 0 < ids < 1
        if not ((whole and ids >= 1) or fraction):
            raise ValueError(f"{self.name}.holdout: ids must be a count (an int >= 1) or a fraction in (0, 1), "
                             f"got {ids!r}")
        n = int(ids) if whole else max(1, round(float(ids) * len(eligible)))
        need = f"{queries_per_id + 1} images" + (" from 2 cameras" if cams else "")
        if n > len(eligible):
            raise ValueError(f"{self.name}.holdout: asked for {n} held-out identities but only {len(eligible)} of "
                             f"{len(members)} in split {split!r} have {need}; lower ids or queries_per_id")
        rng = np.random.default_rng(seed)
        chosen = rng.choice(np.asarray(eligible, dtype=np.int64), size=n, replace=False)
        new_split = t["split"].to_numpy(dtype=object).copy()
        for pid in sorted(chosen.tolist()):
            pool = _query_pool(t, members[pid], queries_per_id, cams)
            queries = set(rng.choice(np.asarray(pool), size=queries_per_id, replace=False).tolist())
            for i in members[pid]:
                new_split[i] = "query" if i in queries else "gallery"
        out_table = t.copy()
        out_table["split"] = new_split
        return ReIdDataset(self.root, out_table, name=self.name, on_error=self.on_error, target_size=self.target_size)

    def identities(self) -> np.ndarray:
        """The distinct labelled identities (pid >= 0), sorted."""
        p = self.pids
        return np.unique(p[p >= 0])

    def summary(self) -> pd.DataFrame:
        """Images, identities and known cameras per split (``cameras`` 0 = unknown)."""
        t = self.table
        return t.groupby("split", sort=False).agg(
            images=("path", "size"), identities=("pid", lambda p: int((p[p >= 0]).nunique())),
            cameras=("camid", lambda c: int((c[c >= 0]).nunique())))

    def __repr__(self) -> str:
        parts = ", ".join(f"{s}={n}" for s, n in self.table["split"].value_counts(sort=False).items())
        return f"ReIdDataset({self.name!r}, {len(self)} images, {len(self.identities())} ids: {parts}; root={self.root})"

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as a CSV manifest that :func:`read_csv` reads back (paths relative to the CSV).

        Written atomically (a failure leaves no partial file). File names that are not valid UTF-8
        (possible on Linux) are written as their raw bytes (Python's ``surrogateescape``), which
        :func:`read_csv` reads back exactly; other tools may show them garbled.
        """
        path = Path(path)
        t = self.table.copy()
        t["path"] = [str(Path(p).resolve().relative_to(path.parent.resolve())) if _is_relative(p, path.parent)
                     else str(p) for p in self.paths]
        with atomic_path(path) as tmp:
            t.to_csv(tmp, index=False, encoding="utf-8", errors="surrogateescape")
        return path


def _query_pool(t: pd.DataFrame, members: list[int], q: int, cams: bool) -> list[int] | None:
    """The rows of one identity its queries may come from, or ``None`` if it cannot be held out."""
    if len(members) < q + 1:
        return None
    if not cams:
        return members
    by_cam: dict[int, list[int]] = {}
    for i in members:
        by_cam.setdefault(int(t["camid"].iat[i]), []).append(i)
    if len(by_cam) < 2:
        return None
    for cam in sorted(by_cam):  # the first camera with enough images; the others are its gallery
        if len(by_cam[cam]) >= q:
            return by_cam[cam]
    return None


def _is_relative(p: Path, base: Path) -> bool:
    try:
        Path(p).resolve().relative_to(Path(base).resolve())
        return True
    except ValueError:
        return False


def camids_for_evaluation(query: ReIdDataset, gallery: ReIdDataset) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(query_camids, gallery_camids, cameras_known)`` to pass to ``metrics.evaluate_reid``.

    With known cameras on both sides (:attr:`ReIdDataset.has_cameras`) these are the datasets'
    camids: a gallery image of the query's identity *and* camera is not a match (torchreid's
    rule). Without them, no camera filtering: every gallery image of the query's identity is a
    true match except the query image itself (the same file in the gallery); the returned ids make
    exactly those pairs "same camera". The caller should say once that cameras are unknown.

    Example:
        >>> import pandas as pd
        >>> q = ReIdDataset("r", pd.DataFrame({"path": ["a.jpg"], "pid": [1], "split": "query"}))
        >>> g = ReIdDataset("r", pd.DataFrame({"path": ["a.jpg", "b.jpg"], "pid": [1, 1]}))
        >>> qc, gc, known = camids_for_evaluation(q, g)
        >>> qc.tolist(), gc.tolist(), known      # a.jpg is the query itself; b.jpg a true match
        ([0], [0, -1], False)
    """
    if query.has_cameras and gallery.has_cameras:
        return query.camids, gallery.camids, True
    own = {os.path.normpath(p): i for i, p in enumerate(map(str, query.paths))}
    gc = np.array([own.get(os.path.normpath(str(p)), -1) for p in gallery.paths], dtype=np.int64)
    return np.arange(len(query), dtype=np.int64), gc, False


def concat(datasets: Iterable[ReIdDataset], name: str = "concat") -> ReIdDataset:
    """Stack datasets that share a root (paths stay relative to it).

    Raises:
        ValueError: the datasets have different roots (the message lists them).

    Example:
        >>> import pandas as pd
        >>> ds = ReIdDataset("imgs", pd.DataFrame({"path": ["a.jpg", "b.jpg"], "pid": [1, 2],
        ...                                        "split": ["query", "gallery"]}))
        >>> len(concat([ds.subset("gallery"), ds.subset("query")]))
        2
    """
    datasets = list(datasets)
    roots = {d.root.resolve() for d in datasets}
    if len(roots) != 1:
        raise ValueError(f"concat: datasets have different roots {sorted(map(str, roots))}")
    return ReIdDataset(datasets[0].root, pd.concat([d.table for d in datasets], ignore_index=True), name=name)
