"""Readers: the on-disk layouts people actually have, each turned into a :class:`ReIdDataset`.

* :func:`read_folder` — ``root/<identity>/**/<image>`` (one folder per identity, any depth, every
  format Pillow decodes), or ``root/{train,query,gallery}/<identity>/...``;
* :func:`read_csv` — a manifest ``path,pid[,camid][,caption][,split][,extra...]``;
* :func:`read_deepsportradar` — the DeepSportRadar / MMSports player re-id challenge layout
  (``reid_training/``, ``reid_test/{query,gallery}/``, ``reid_challenge/{query,gallery}/``);
* :func:`read_market1501` — Market-1501 (``bounding_box_train/``, ``query/``, ``bounding_box_test/``);
* :func:`read_dataset` — guesses which of these a path is.

Readers only list files, parse names and check that listed files exist; no image is decoded here
(see :func:`load_image`). A file name that breaks a layout's pattern raises ``ValueError`` naming
the file. Identity names become pids with :func:`stable_pid` (integers keep their value), so the
same name has the same pid in every call.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> for who in ("7", "12"):
    ...     (root / who).mkdir()
    ...     Image.new("RGB", (8, 16)).save(root / who / "0.png")
    >>> read_dataset(root).table[["path", "pid", "identity"]].values.tolist()
    [['12/0.png', 12, '12'], ['7/0.png', 7, '7']]
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .dataset import UNKNOWN_CAMERA, ReIdDataset, _camid_column, _check_collisions, _pid_column, stable_pid
from .images import image_suffixes

__all__ = ["read_folder", "read_csv", "read_deepsportradar", "read_market1501", "read_dataset", "IMAGE_SUFFIXES",
           "SPLIT_FOLDERS"]

#: The image file suffixes the readers pick up (case-insensitive): every format this Pillow decodes.
IMAGE_SUFFIXES = image_suffixes()
#: Sub-folders of a :func:`read_folder` root that are splits rather than identities.
SPLIT_FOLDERS = ("train", "query", "gallery")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p))


def _images_under(folder: Path) -> list[Path]:
    """Every image below ``folder`` at any depth (hidden files and folders skipped), sorted."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top) / f for f in files if _is_image(Path(f))]
    return sorted(found)


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder not found: {path}")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


# --- readers -----------------------------------------------------------------------------------
def _identity_rows(root: Path, base: Path, split: str) -> list[dict]:
    rows = []
    for folder in _subdirs(base):
        for img in _images_under(folder):
            rows.append({"path": img.relative_to(root).as_posix(), "pid": stable_pid(folder.name),
                         "camid": UNKNOWN_CAMERA, "split": split, "identity": folder.name})
    loose = [p.name for p in _images_in(base)]
    if loose:
        warnings.warn(f"read_folder: {len(loose)} image(s) directly in {base} are in no identity folder and were "
                      f"left out, e.g. {loose[0]}; move them into {base}/<identity>/", stacklevel=3)
    return rows


def read_folder(root: str | Path, split: str | None = None, on_error: str = "raise") -> ReIdDataset:
    """One sub-folder per identity: ``root/<identity>/**/<image>``.

    The identity of an image is the top-level folder under the split root, whatever the depth
    below it (``root/alice/cam1/0001.jpg`` is ``alice``). Every format Pillow decodes is read
    (:data:`IMAGE_SUFFIXES`, case-insensitive: ``.jpg .png .webp .bmp .gif .tif`` ...); hidden
    files and folders (``.name``) are skipped, and images lying directly in the root (in no
    identity folder) are left out with a warning.

    pids come from the folder *name*, never from a count: an integer name keeps its value
    (``0002/`` -> 2), any other name gets :func:`stable_pid` (a fixed hash); the name is kept in
    the ``identity`` column. The same name is the same pid in every call, so a ``query/`` and a
    ``gallery/`` folder read separately line up. There are no camera ids (``camid`` -1: evaluation
    then does no camera filtering).

    Splits: if ``root`` holds ``train/``, ``query/`` and/or ``gallery/`` (:data:`SPLIT_FOLDERS`),
    each is read as a split root (``root/query/<identity>/...``) and ``split`` may pick one of
    them; otherwise every row gets ``split`` (default ``"train"``). A dataset without query and
    gallery is evaluated with :meth:`ReIdDataset.holdout`.

    Raises:
        FileNotFoundError: ``root`` (or the asked split folder) is missing. ValueError: no identity
        folder holds an image, ``root`` mixes split folders and identity folders, or two folder
        names map to one pid (``2`` and ``02``).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("query/0007/a.jpg", "gallery/0007/cam2/b.webp", "gallery/0009/c.png"):
        ...     (root / name).parent.mkdir(parents=True, exist_ok=True)
        ...     Image.new("RGB", (8, 16)).save(root / name)
        >>> read_folder(root).table[["path", "pid", "split"]].values.tolist()
        [['gallery/0007/cam2/b.webp', 7, 'gallery'], ['gallery/0009/c.png', 9, 'gallery'], ['query/0007/a.jpg', 7, 'query']]
    """
    root = Path(root)
    _require_dir(root, "read_folder")
    subdirs = _subdirs(root)
    split_dirs = [d for d in subdirs if d.name in SPLIT_FOLDERS]
    if split_dirs:
        others = [d.name for d in subdirs if d.name not in SPLIT_FOLDERS]
        if others:
            raise ValueError(f"read_folder: {root} holds split folders {[d.name for d in split_dirs]} and other "
                             f"folders {others[:5]}; put identity folders inside {'/'.join(SPLIT_FOLDERS)}/, "
                             "or read the identity folders' parent")
        if split is not None:
            _require_dir(root / split, "read_folder")
            split_dirs = [root / split]
        rows = [r for d in split_dirs for r in _identity_rows(root, d, d.name)]
    else:
        rows = _identity_rows(root, root, split or "train")
    if not rows:
        raise ValueError(f"read_folder: no images ({', '.join(IMAGE_SUFFIXES[:8])} ...) in any sub-folder of {root}; "
                         "expected root/<identity>/<image> or root/{train,query,gallery}/<identity>/<image>")
    table = pd.DataFrame(rows)
    _check_collisions(table["pid"].to_numpy(), table["identity"].tolist(), f"read_folder: {root}")
    return ReIdDataset(root, table, name=root.name, on_error=on_error)


def read_csv(path: str | Path, root: str | Path | None = None, on_error: str = "raise") -> ReIdDataset:
    """A CSV manifest with columns ``path,pid[,camid][,caption][,split]`` and any extra columns.

    ``path`` is relative to ``root`` (default: the CSV's folder) or absolute. ``pid`` holds
    integers (``-1`` = unlabelled) or identity names, not a mix: names get :func:`stable_pid` and
    are kept in an ``identity`` column. ``camid`` is optional; without it, or in an empty cell, the
    camera is unknown (-1) and evaluation does no camera filtering.

    Checked here, cheaply (no image is decoded): every listed file must exist (one ``stat`` per
    row); with ``on_error="skip"`` missing ones are left out with one warning giving the count
    (and recorded in ``skipped``). A file listed twice with the same ``pid``, ``camid`` and
    ``split`` is kept once, with a warning giving the count; listed twice with different values
    (e.g. in both ``query`` and ``gallery``, where it would be its own match) is an error. Files
    whose names are not UTF-8 round-trip through :meth:`ReIdDataset.to_csv`; a UTF-8 byte-order
    mark (Excel's "CSV UTF-8") is ignored.

    Raises:
        FileNotFoundError: the CSV is missing, or listed files are (the message gives the count
            and the first few; ``on_error="skip"`` leaves them out instead).
        ValueError: the manifest lists no image, a required column is missing, a pid or camid is
            malformed, or a file is listed twice with different labels (the message names the CSV,
            the column and the first bad row or file).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> csv = Path(tempfile.mkdtemp()) / "m.csv"
        >>> for name in ("a.jpg", "b.jpg"):
        ...     Image.new("RGB", (8, 16)).save(csv.parent / name)
        >>> _ = csv.write_text("path,pid,split,team\\na.jpg,4,query,A\\nb.jpg,4,gallery,A\\n")
        >>> ds = read_csv(csv)
        >>> ds.summary()["images"].to_dict(), ds.table["team"].tolist(), ds.has_cameras
        ({'query': 1, 'gallery': 1}, ['A', 'A'], False)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_csv: manifest not found: {path}")
    where = f"read_csv: {path}"
    try:
        table = pd.read_csv(path, dtype={"path": str, "caption": object, "split": str}, keep_default_na=False,
                            na_values={"caption": [""]}, encoding="utf-8-sig", encoding_errors="surrogateescape")
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{where}: the file is empty; a manifest needs a header 'path,pid,...' and one row "
                         "per image") from err
    for col in ("path", "pid"):
        if col not in table.columns:
            raise ValueError(f"{where} has no '{col}' column (columns: {list(table.columns)})")
    if not len(table):
        raise ValueError(f"{where} lists no images (a header only); add one row per image: path,pid,...")
    pids, labels = _pid_column(table["pid"], where, row=2)
    if labels is not None and "identity" not in table.columns:
        table["identity"] = labels
    table["pid"] = pids
    if "camid" in table.columns:
        table["camid"] = _camid_column(table["camid"], where, row=2)
    base = Path(root) if root is not None else path.parent
    table, skipped = _check_files(table, base, where, on_error)
    ds = ReIdDataset(base, table, name=path.stem, on_error=on_error)
    ds.skipped.extend(skipped)
    return ds


def _check_files(table: pd.DataFrame, base: Path, where: str, on_error: str) -> tuple[pd.DataFrame, list[str]]:
    """Duplicate rows and missing files of a manifest: dropped with a warning, or an error."""
    full = [os.path.normpath(os.path.join(base, p)) for p in table["path"]]
    table = table.assign(_full=full)
    keys = [c for c in ("pid", "camid", "split") if c in table.columns]
    dup = table.duplicated("_full", keep=False)
    if dup.any():
        groups = table[dup].groupby("_full", sort=False)
        conflict = [(f, g) for f, g in groups if len(g[keys].drop_duplicates()) > 1]
        if conflict:
            f, g = conflict[0]
            rows = ", ".join(str(i + 2) for i in g.index[:4])
            vals = g[keys].drop_duplicates().to_dict("records")[:3]
            raise ValueError(f"{where}: {len(conflict)} file(s) listed more than once with different labels, e.g. "
                             f"{f} (rows {rows}: {vals}); an image in two splits would be its own match and in two "
                             "identities a wrong one: keep one row per file")
        n_extra = int(table.duplicated("_full").sum())
        warnings.warn(f"{where}: {n_extra} duplicate row(s) left out (the same file listed again with the same "
                      f"labels), e.g. {table.loc[table.duplicated('_full'), 'path'].iat[0]}", stacklevel=3)
        table = table[~table.duplicated("_full")]
    exists = np.array([os.path.isfile(f) for f in table["_full"]], dtype=bool)
    skipped: list[str] = []
    if not exists.all():
        missing = table.loc[~exists, "path"].tolist()
        head = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        if on_error != "skip" or exists.sum() == 0:
            raise FileNotFoundError(f"{where}: {len(missing)} of {len(table)} listed image file(s) do not exist under "
                                    f"{base}: {head}; fix the paths (relative to the CSV's folder, or pass root=)"
                                    + ("" if exists.sum() == 0 else ", or pass on_error='skip' to leave them out"))
        warnings.warn(f"{where}: left out {len(missing)} of {len(table)} listed image(s) whose file does not exist "
                      f"under {base}: {head}", stacklevel=3)
        skipped = table.loc[~exists, "_full"].tolist()
        table = table[exists]
    return table.drop(columns="_full").reset_index(drop=True), skipped


_DSR_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)$")


def _dsr_rows(root: Path, folder: str, split: str) -> list[dict]:
    rows = []
    for img in _images_in(root / folder):
        m = _DSR_NAME.match(img.stem)
        if m is None:
            raise ValueError(f"read_deepsportradar: unexpected file name {img} "
                             "(expected {pid}_{sequence}_{frame}.jpeg)")
        pid, seq, frame = map(int, m.groups())
        if split == "query" and frame != 0:
            raise ValueError(f"read_deepsportradar: query image {img} is not frame 00")
        rows.append({"path": f"{folder}/{img.name}", "pid": pid, "camid": frame, "split": split,
                     "sequence": seq, "frame": frame})
    return rows


def read_deepsportradar(root: str | Path, on_error: str = "raise") -> ReIdDataset:
    """The DeepSportRadar / MMSports player re-identification layout.

    ``root/reid_training/{pid}_{sequence}_{frame}.jpeg`` (split ``train``),
    ``root/reid_test/query/...`` (``query``; the query is frame 00) and ``root/reid_test/gallery/...``
    (``gallery``); optional unlabelled ``root/reid_challenge/{query,gallery}/{index}.jpeg``
    (``challenge_query`` / ``challenge_gallery``, pid ``-1``). The layout has no camera ids: the
    frame number is used as ``camid`` so that torchreid's same-camera rule drops nothing between a
    frame-00 query and its gallery; ``sequence`` and ``frame`` are kept as columns. If ``root``
    holds a ``manifest.csv`` (as written by :func:`cliptk.generate_players`), its captions and
    metadata are joined in.

    Raises:
        FileNotFoundError: neither ``reid_training`` nor ``reid_test`` exists under ``root``.
        ValueError: a file name does not follow the layout (the message names it).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("reid_training/3_0_00.jpeg", "reid_test/query/8_1_00.jpeg", "reid_test/gallery/8_1_01.jpeg"):
        ...     (root / name).parent.mkdir(parents=True, exist_ok=True)
        ...     Image.new("RGB", (8, 16)).save(root / name)
        >>> read_deepsportradar(root).table[["pid", "camid", "split", "sequence"]].values.tolist()
        [[3, 0, 'train', 0], [8, 0, 'query', 1], [8, 1, 'gallery', 1]]
    """
    root = Path(root)
    if not (root / "reid_training").is_dir() and not (root / "reid_test").is_dir():
        raise FileNotFoundError(f"read_deepsportradar: {root} has neither reid_training/ nor reid_test/; "
                                "download the challenge data (see the README) or point at its extracted folder")
    rows: list[dict] = []
    for folder, split in (("reid_training", "train"), ("reid_test/query", "query"), ("reid_test/gallery", "gallery")):
        if (root / folder).is_dir():
            rows += _dsr_rows(root, folder, split)
    for part in ("query", "gallery"):
        folder = root / "reid_challenge" / part
        if folder.is_dir():
            for img in _images_in(folder):
                if not img.stem.isdigit():
                    raise ValueError(f"read_deepsportradar: unexpected challenge file name {img} (expected {{index}}.jpeg)")
                rows.append({"path": f"reid_challenge/{part}/{img.name}", "pid": -1, "camid": -1,
                             "split": f"challenge_{part}", "index": int(img.stem)})
    table = pd.DataFrame(rows)
    manifest = root / "manifest.csv"
    if manifest.is_file() and len(table):
        extra = pd.read_csv(manifest, keep_default_na=False, na_values={"caption": [""]})
        extra = extra.rename(columns={"camid": "camera"})  # the generator's camera, kept as metadata
        extra = extra.drop(columns=[c for c in ("pid", "split", "sequence", "frame") if c in extra.columns])
        table = table.merge(extra, on="path", how="left")
    return ReIdDataset(root, table, name=root.name, on_error=on_error)


_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)$")


def read_market1501(root: str | Path, on_error: str = "raise", keep_junk: bool = False) -> ReIdDataset:
    """Market-1501: ``bounding_box_train/`` (train), ``query/`` and ``bounding_box_test/`` (gallery).

    File names ``0002_c1s1_000451_03.jpg`` give pid 2 and camera 1 (cameras are 1-based in the
    names and kept as written). pid ``-1`` ("junk") and ``0000`` ("distractor") images are dropped
    from train; in the gallery they are kept with pid ``-1`` only when ``keep_junk`` (they then
    count as wrong matches, as in the official protocol's distractors).

    Raises:
        FileNotFoundError: ``root/query`` or ``root/bounding_box_test`` is missing.
        ValueError: a file name does not follow the pattern (the message names it).

    Example (needs the Market-1501 images, which cliptk does not ship):
        >>> read_market1501("data/Market-1501-v15.09.15").summary()   # doctest: +SKIP
    """
    root = Path(root)
    for sub in ("query", "bounding_box_test"):
        _require_dir(root / sub, "read_market1501")
    rows = []
    for folder, split in (("bounding_box_train", "train"), ("query", "query"), ("bounding_box_test", "gallery")):
        if not (root / folder).is_dir():
            continue
        for img in _images_in(root / folder):
            m = _MARKET_NAME.match(img.stem)
            if m is None:
                raise ValueError(f"read_market1501: unexpected file name {img} (expected 0002_c1s1_000451_03.jpg)")
            pid, cam, seq = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if pid <= 0:  # -1 junk, 0 distractor
                if split == "train" or not keep_junk:
                    continue
                pid = -1
            rows.append({"path": f"{folder}/{img.name}", "pid": pid, "camid": cam, "split": split, "sequence": seq})
    return ReIdDataset(root, pd.DataFrame(rows), name=root.name, on_error=on_error)


def read_dataset(source: str | Path, on_error: str = "raise") -> ReIdDataset:
    """Guess the layout of ``source`` and read it: a ``.csv`` file, a DeepSportRadar root, a
    Market-1501 root, a folder holding ``manifest.csv``, or a folder per identity (tried in that
    order).

    Raises:
        FileNotFoundError, ValueError: as the reader it picks (see the module docstring's example).
    """
    source = Path(source)
    if source.suffix.lower() == ".csv":
        return read_csv(source, on_error=on_error)
    if (source / "reid_training").is_dir() or (source / "reid_test").is_dir():
        return read_deepsportradar(source, on_error=on_error)
    if (source / "bounding_box_test").is_dir():
        return read_market1501(source, on_error=on_error)
    if (source / "manifest.csv").is_file():
        return read_csv(source / "manifest.csv", on_error=on_error)
    return read_folder(source, on_error=on_error)


