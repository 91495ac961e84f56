"""Re-identification datasets: one table type and readers for the layouts people actually have.

A :class:`ReIdDataset` is a table (one row per image: ``path, pid, camid, split, caption`` plus any
extra metadata columns such as ``team`` or ``number``) and the folder its paths are relative to.
Readers turn the common on-disk layouts into that table:

* :func:`read_folder` — ``root/<identity>/*.jpg|jpeg|png`` (one folder per identity);
* :func:`read_csv` — a manifest ``path,pid[,camid][,caption][,split][,extra...]``;
* :func:`read_deepsportradar` — the DeepSportRadar / MMSports player re-id challenge layout
  (``reid_training/``, ``reid_test/{query,gallery}/``, ``reid_challenge/{query,gallery}/``);
* :func:`read_market1501` — Market-1501 (``bounding_box_train/``, ``query/``, ``bounding_box_test/``).

Images are opened lazily and always returned as RGB (grayscale, RGBA and palette images are
converted). A corrupt, truncated or missing file raises :class:`ImageLoadError` naming the file;
``on_error="skip"`` instead skips such files, counts them and warns once.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ReIdDataset",
    "ImageLoadError",
    "load_image",
    "read_folder",
    "read_csv",
    "read_deepsportradar",
    "read_market1501",
    "read_dataset",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
REQUIRED_COLUMNS = ("path", "pid", "camid", "split", "caption")


class ImageLoadError(OSError):
    """An image file is missing, corrupt or truncated. The message names the file."""


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` fully and return it as an RGB ``PIL.Image``.

    Grayscale (``L``), ``RGBA``/``LA`` (alpha composited on black, as a crop would show it), palette
    (``P``) and 16-bit images are converted. The pixels are decoded here, so truncation is caught here.

    Raises:
        ImageLoadError: the file does not exist, is not an image, or is truncated/corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # force decoding: a truncated JPEG fails here, not later in a worker
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(background, im)
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err} (is the file corrupt or truncated?)") from err


@dataclass
class ReIdDataset:
    """Images with identity labels, cameras, splits and optional captions.

    Attributes:
        root: the folder that the ``path`` column is relative to.
        table: a ``pandas.DataFrame`` with at least ``path`` (str), ``pid`` (int, ``-1`` = unknown /
            junk), ``camid`` (int), ``split`` (str: ``train``, ``query``, ``gallery``,
            ``challenge_query``, ``challenge_gallery`` or any user label) and ``caption`` (str or
            None). Extra columns are free metadata (``team``, ``number``...), usable by plots.
        name: a short label for reprs and caches.
        on_error: ``"raise"`` (default) or ``"skip"``; see :meth:`image`.

    Indexing returns the RGB image: ``ds[i]``. ``ds.subset("query")`` selects a split.

    Example:
        >>> ds = read_folder("my_players/")          # doctest: +SKIP
        >>> ds.subset("train").pids[:3], ds[0].size  # doctest: +SKIP
    """

    root: Path
    table: pd.DataFrame
    name: str = "dataset"
    on_error: Literal["raise", "skip"] = "raise"
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        t = self.table.copy()
        if "path" not in t.columns or "pid" not in t.columns:
            raise ValueError(f"{self.name}: the table needs at least 'path' and 'pid' columns, got {list(t.columns)}")
        if "camid" not in t.columns:
            t["camid"] = 0
        if "split" not in t.columns:
            t["split"] = "train"
        if "caption" not in t.columns:
            t["caption"] = None
        t["path"] = t["path"].astype(str)
        t["pid"] = t["pid"].astype(np.int64)
        t["camid"] = t["camid"].astype(np.int64)
        t["split"] = t["split"].astype(str)
        t["caption"] = t["caption"].astype(object).where(t["caption"].notna(), None)
        others = [c for c in t.columns if c not in REQUIRED_COLUMNS]
        self.table = t[list(REQUIRED_COLUMNS) + others].reset_index(drop=True)
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

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
        return self.table["camid"].to_numpy()

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
    def image(self, i: int) -> Image.Image | None:
        """The RGB image of row ``i``.

        With ``on_error="skip"`` a bad file returns ``None``, is recorded in ``self.skipped`` and
        warns once per dataset; otherwise :class:`ImageLoadError` names the file.
        """
        path = self.root / self.table["path"].iat[i]
        try:
            return load_image(path)
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

    def verify(self) -> list[str]:
        """Decode every image once; return the unreadable files (raises on the first one unless
        ``on_error="skip"``). Use before a long run to find bad files early."""
        bad = []
        for i in range(len(self)):
            if self.image(i) is None:
                bad.append(str(self.root / self.table["path"].iat[i]))
        if bad:
            warnings.warn(f"{self.name}: {len(bad)} unreadable image(s) skipped, e.g. {bad[0]}", stacklevel=2)
        return bad

    def drop_unreadable(self) -> "ReIdDataset":
        """A copy without the files :meth:`verify` could not read (counted in the warning)."""
        bad = set(self.verify())
        keep = np.array([str(p) not in bad for p in self.paths], dtype=bool)
        return self.select(keep)

    # --- selection -----------------------------------------------------------------------------
    def select(self, rows: np.ndarray | Sequence[int] | Sequence[bool]) -> "ReIdDataset":
        """A new dataset with the given rows (indices or a boolean mask)."""
        rows = np.asarray(rows)
        t = self.table[rows] if rows.dtype == bool else self.table.iloc[rows]
        return ReIdDataset(self.root, t.reset_index(drop=True), name=self.name, on_error=self.on_error)

    def subset(self, *splits: str) -> "ReIdDataset":
        """The rows whose ``split`` is one of ``splits`` (e.g. ``ds.subset("query")``).

        Raises:
            KeyError: a split name is not present; the message lists those that are.
        """
        missing = [s for s in splits if s not in self.split_names]
        if missing:
            raise KeyError(f"{self.name}: no split {missing}; available: {self.split_names}")
        out = self.select(self.table["split"].isin(splits).to_numpy())
        out.name = f"{self.name}[{'+'.join(splits)}]"
        return out

    def identities(self) -> np.ndarray:
        """The distinct labelled identities (pid >= 0), sorted."""
        p = self.pids
        return np.unique(p[p >= 0])

    def summary(self) -> pd.DataFrame:
        """Images, identities and cameras per split."""
        t = self.table
        return t.groupby("split", sort=False).agg(
            images=("path", "size"), identities=("pid", lambda p: int((p[p >= 0]).nunique())),
            cameras=("camid", "nunique"))

    def __repr__(self) -> str:
        parts = ", ".join(f"{s}={n}" for s, n in self.table["split"].value_counts(sort=False).items())
        return f"ReIdDataset({self.name!r}, {len(self)} images, {len(self.identities())} ids: {parts}; root={self.root})"

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as a CSV manifest that :func:`read_csv` reads back (paths relative to the CSV)."""
        path = Path(path)
        t = self.table.copy()
        t["path"] = [str(Path(p).resolve().relative_to(path.parent.resolve())) if _is_relative(p, path.parent)
                     else str(p) for p in self.paths]
        t.to_csv(path, index=False)
        return path


def _is_relative(p: Path, base: Path) -> bool:
    try:
        Path(p).resolve().relative_to(Path(base).resolve())
        return True
    except ValueError:
        return False


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder not found: {path}")


# --- readers -----------------------------------------------------------------------------------
def read_folder(root: str | Path, split: str = "train", on_error: str = "raise") -> ReIdDataset:
    """One sub-folder per identity: ``root/<identity>/*.jpg|jpeg|png``.

    Identities get integer pids in sorted folder-name order; the folder name is kept in the
    ``identity`` column. All images share camera 0.

    Raises:
        FileNotFoundError: ``root`` is missing. ValueError: no identity folder holds an image.
    """
    root = Path(root)
    _require_dir(root, "read_folder")
    rows = []
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    for pid, folder in enumerate(f for f in folders if _images_in(f)):
        for img in _images_in(folder):
            rows.append({"path": str(img.relative_to(root)), "pid": pid, "camid": 0, "split": split,
                         "identity": folder.name})
    if not rows:
        raise ValueError(f"read_folder: no images ({', '.join(IMAGE_SUFFIXES)}) in any sub-folder of {root}; "
                         "expected root/<identity>/<image>")
    return ReIdDataset(root, pd.DataFrame(rows), name=root.name, on_error=on_error)


def read_csv(path: str | Path, root: str | Path | None = None, on_error: str = "raise") -> ReIdDataset:
    """A CSV manifest with columns ``path,pid[,camid][,caption][,split]`` and any extra columns.

    ``path`` is relative to ``root`` (default: the CSV's folder) or absolute.

    Raises:
        FileNotFoundError: the CSV is missing. ValueError: a required column is missing or a pid is
        not an integer (the message names the CSV, the column and the first bad row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_csv: manifest not found: {path}")
    table = pd.read_csv(path, dtype={"path": str, "caption": object, "split": str}, keep_default_na=False,
                        na_values={"caption": [""]})
    for col in ("path", "pid"):
        if col not in table.columns:
            raise ValueError(f"read_csv: {path} has no '{col}' column (columns: {list(table.columns)})")
    for col in ("pid", "camid"):
        if col in table.columns:
            num = pd.to_numeric(table[col], errors="coerce")
            bad = num.isna() | (num != num.round())
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise ValueError(f"read_csv: {path}: column '{col}' must hold integers; row {row + 2} has "
                                 f"{table[col].iat[row]!r}")
            table[col] = num.astype(np.int64)
    return ReIdDataset(Path(root) if root is not None else path.parent, table, name=path.stem, on_error=on_error)


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
    Market-1501 root, or a folder per identity (tried in that order)."""
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


def concat(datasets: Iterable[ReIdDataset], name: str = "concat") -> ReIdDataset:
    """Stack datasets that share a root (paths stay relative to it)."""
    datasets = list(datasets)
    roots = {d.root.resolve() for d in datasets}
    if len(roots) != 1:
        raise ValueError(f"concat: datasets have different roots {sorted(map(str, roots))}")
    return ReIdDataset(datasets[0].root, pd.concat([d.table for d in datasets], ignore_index=True), name=name)
