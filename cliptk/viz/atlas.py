"""Thumbnails packed into sprite atlases, for pages that show a point's image on hover.

One data URI per point costs about 2 kB of page per point and one image decode per hover, which
makes an exported plot of 100k points ~200 MB. An atlas instead packs ``columns x rows`` thumbnails
of one fixed cell size into a single WEBP grid image: the page loads an atlas once, when a point
in it is first hovered, and shows a thumbnail as a CSS background at the cell's offset (CSS
sprites, which also work from ``file://`` pages, where canvas reads and ``fetch`` do not). Cells
share the dataset's typical aspect ratio; each thumbnail is fitted inside its cell, aspect kept.

Hand-written because no field library packs image thumbnails for a plotly page; Pillow does the
decoding (at reduced size for large JPEGs, :func:`cliptk.data.load_image`), resizing and encoding.
Much of a small image's cost is Pillow's Python-side header parsing, which holds the GIL, so
atlases are packed in forked worker processes where the platform forks (Linux), else in threads.

Example:
    >>> import tempfile
    >>> from cliptk.data import read_deepsportradar
    >>> from cliptk.synthetic import generate_players
    >>> ds = read_deepsportradar(generate_players(tempfile.mkdtemp(), n_train_ids=3, n_test_ids=1,
    ...                          images_per_id=2, size=(32, 64), workers=1, challenge=False))
    >>> atlases = pack_thumbnails(ds, range(len(ds)), height=16, columns=2, rows_per_atlas=2)
    >>> len(ds), len(atlases.images), atlases.cell, atlases.place(5)      # 4 thumbnails per atlas
    (8, 2, (8, 16), (1, 8, 0))
"""
from __future__ import annotations

import io
import math
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image

from .._util import _format
from ..data import ReIdDataset
from ..data.images import ImageLoadError, load_image

__all__ = ["Atlases", "pack_thumbnails", "cell_size"]

#: the background of empty and letterboxed cell area (the page's hover box is white)
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Atlases:
    """Encoded atlas images and how thumbnail ``k`` (the ``k``-th packed row) is found in them.

    Attributes:
        images: the encoded atlases, in order (``fmt``: ``"webp"``, or ``"jpeg"`` where Pillow has no WEBP).
        fmt: their format, lower case (a MIME subtype).
        cell: ``(width, height)`` of one cell in pixels.
        columns, rows: cells per atlas row and column (``columns * rows`` thumbnails per atlas).
        missing: ``[K]`` bool, True where the image could not be read (the cell is left blank).
        unreadable: the first unreadable file's error message, or None.
    """

    images: list[bytes]
    fmt: str
    cell: tuple[int, int]
    columns: int
    rows: int
    missing: np.ndarray
    unreadable: str | None = None

    @property
    def per_atlas(self) -> int:
        return self.columns * self.rows

    def place(self, k: int) -> tuple[int, int, int]:
        """``(atlas index, x, y)``: the atlas and the pixel offset of thumbnail ``k``'s cell."""
        a, j = divmod(int(k), self.per_atlas)
        r, c = divmod(j, self.columns)
        return a, c * self.cell[0], r * self.cell[1]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.images)


def cell_size(dataset: ReIdDataset, rows: Iterable[int], height: int, sample: int = 64) -> tuple[int, int]:
    """``(width, height)`` of a cell: ``height`` and the median aspect ratio (width / height) of up
    to ``sample`` of the images' files, read from their headers (no decoding)."""
    ratios = []
    for r in list(rows)[:sample]:
        try:
            with Image.open(_file(dataset, int(r))) as im:
                ratios.append(im.width / max(im.height, 1))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    ratio = float(np.median(ratios)) if ratios else 1.0
    return max(1, round(height * min(max(ratio, 0.1), 10.0))), height


def _file(dataset: ReIdDataset, row: int) -> str:
    return os.path.join(dataset.root, dataset.table["path"].iat[row])


def _thumbnail(path: str, cell: tuple[int, int]) -> Image.Image:
    """The image at ``path`` fitted inside ``cell`` (aspect kept), decoded at reduced size where
    the format allows; raises :class:`ImageLoadError` (naming the file) for an unreadable one."""
    w, h = cell
    im = load_image(path, (h, w))
    scale = min(w / im.width, h / im.height)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


_SHARED: dict = {}   # a forked worker's dataset and settings (inherited, never pickled)


def _init_worker(files: np.ndarray, args: tuple) -> None:
    _SHARED.update(files=files, args=args)


def _pack_shared(span: tuple[int, int]) -> tuple[bytes, np.ndarray, str | None]:
    return _pack_one(_SHARED["files"][span[0]:span[1]], *_SHARED["args"])


def _pack_one(files: np.ndarray, cell: tuple[int, int], columns: int, n_rows: int,
              fmt: str, quality: int) -> tuple[bytes, np.ndarray, str | None]:
    """One atlas of the images at ``files`` (paths), in cell order."""
    w, h = cell
    used_rows = math.ceil(len(files) / columns)   # the last atlas is only as tall as it needs
    canvas = Image.new("RGB", (columns * w, max(1, min(n_rows, used_rows)) * h), BACKGROUND)
    missing = np.zeros(len(files), bool)
    first_error = None
    for j, path in enumerate(files):
        try:
            th = _thumbnail(path, cell)
        except ImageLoadError as e:
            missing[j] = True
            first_error = first_error or str(e)
            continue
        r, c = divmod(j, columns)
        canvas.paste(th, (c * w + (w - th.width) // 2, r * h + (h - th.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, format=fmt, quality=quality, **({"method": 3} if fmt == "WEBP" else {}))
    return buf.getvalue(), missing, first_error


def pack_thumbnails(dataset: ReIdDataset, rows: Iterable[int], height: int = 32, *, columns: int = 64,
                    rows_per_atlas: int | None = None, quality: int = 60, workers: int | None = None) -> Atlases:
    """Thumbnails of ``dataset``'s ``rows`` (in that order) packed into atlases.

    Args:
        dataset: where the images come from (its files are read; unreadable ones leave a blank
            cell and are flagged in :attr:`Atlases.missing`, whatever ``on_error`` says).
        rows: the dataset rows, in the order the page numbers its points.
        height: thumbnail height in pixels (the width follows :func:`cell_size`).
        columns: cells per atlas row; ``rows_per_atlas`` cells per column (default
            ``columns``): 64 x 64 cells of 16 x 32 px make a 1024 x 2048 px atlas.
        quality: the encoder's quality (0-100).
        workers: packing processes (threads where the platform cannot fork; default: up to
            ``os.cpu_count()``, one per atlas at most).

    Returns:
        :class:`Atlases`.
    """
    n_rows = columns if rows_per_atlas is None else int(rows_per_atlas)
    if columns < 1 or n_rows < 1 or height < 1:
        raise ValueError(f"columns={columns}, rows={n_rows}, height={height}: each must be >= 1")
    rows = np.asarray(list(rows), dtype=np.int64)
    cell = cell_size(dataset, rows, height)
    fmt = _format("WEBP")
    per = columns * n_rows
    files = np.array([os.path.join(dataset.root, p) for p in dataset.table["path"].to_numpy()[rows]], dtype=object)
    spans = [(i, min(i + per, len(rows))) for i in range(0, len(rows), per)]
    workers = max(1, min(len(spans), workers or os.cpu_count() or 1))
    args = (cell, columns, n_rows, fmt, quality)
    if workers == 1:
        done = [_pack_one(files[a:b], *args) for a, b in spans]
    elif "fork" in mp.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                                 initargs=(files, args)) as pool:
            done = list(pool.map(_pack_shared, spans))
    else:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(lambda span: _pack_one(files[span[0]:span[1]], *args), spans))
    errors = [e for _, _, e in done if e]
    return Atlases(images=[b for b, _, _ in done], fmt=fmt.lower(), cell=cell, columns=columns, rows=n_rows,
                   missing=np.concatenate([m for _, m, _ in done]) if done else np.zeros(0, bool),
                   unreadable=errors[0] if errors else None)
