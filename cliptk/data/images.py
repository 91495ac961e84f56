"""Decoding one image file into the 8-bit RGB picture every model and plot takes.

:func:`load_image` is the one place an image file is opened (readers only list files; the dataset
calls this). It converts every mode Pillow opens to RGB with defined arithmetic (16-bit and float
pixels scaled, not clipped; alpha composited on black), decodes large JPEGs at a reduced size when
the caller says how large it needs them, and turns every failure (missing, empty, not an image,
truncated, over Pillow's decompression-bomb limit) into :class:`ImageLoadError` naming the file and
what to do.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "depth.png"
    >>> Image.fromarray(np.array([[0, 100, 65535]], dtype=np.uint16)).save(path)   # 16-bit grey
    >>> np.asarray(load_image(path))[0, :, 0].tolist()      # scaled to 8 bits, not clipped to white
    [0, 0, 255]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

__all__ = ["ImageLoadError", "load_image", "image_suffixes"]


class ImageLoadError(OSError):
    """An image file is missing, empty, corrupt, truncated or too large. The message names the file."""


def image_suffixes() -> tuple[str, ...]:
    """The file suffixes (lower case, with the dot) of every format this Pillow can decode.

    Stub formats (BUFR, GRIB, HDF5, WMF: they need a separate handler), MPEG (not decoded) and
    EPS (needs Ghostscript) are left out.
    """
    Image.init()
    unusable = {"BUFR", "GRIB", "HDF5", "WMF", "MPEG", "EPS"}
    return tuple(sorted(ext.lower() for ext, fmt in Image.registered_extensions().items()
                        if fmt in Image.OPEN and fmt not in unusable))

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_UNREADABLE_HINT = ("re-export or remove the file, or read the dataset with on_error='skip' to leave "
                    "unreadable images out")


def _size_hw(target_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if target_size is None:
        return None
    h, w = (target_size, target_size) if isinstance(target_size, (int, np.integer)) else target_size
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"target_size must be positive (height, width) or an int, got {target_size!r}")
    return int(h), int(w)


def _draft(im: Image.Image, hw: tuple[int, int] | None) -> None:
    """Ask a JPEG to decode at 1/2, 1/4 or 1/8 scale if both sides stay >= ``hw`` (no-op otherwise)."""
    if hw is None or not isinstance(im, JpegImagePlugin.JpegImageFile):
        return
    h, w = hw
    if min(im.width // w, im.height // h) >= 2:
        im.draft(im.mode, (w, h))


def _open(path: Path, hw: tuple[int, int] | None) -> Image.Image:
    try:
        im = Image.open(path)
    except Image.DecompressionBombError:
        if hw is None:
            raise
        with open(path, "rb") as f:
            if f.read(3) != b"\xff\xd8\xff":  # only JPEG can be decoded at a reduced size
                raise
        im = JpegImagePlugin.JpegImageFile(path)  # opens without Image.open's size check ...
        _draft(im, hw)
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and im.width * im.height > 2 * limit:  # ... which applies to the reduced size
            im.close()
            raise
        return im
    _draft(im, hw)
    return im


def _to_8bit(a: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """16-bit, 32-bit integer and float pixels as uint8, scaled linearly (never clipped)."""
    if mode in _SIXTEEN_BIT or mode == "I":
        a = a.astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageLoadError(f"cannot read image {path}: 32-bit integer pixels in [{a.min()}, {a.max()}] have "
                                 "no 8-bit display range (cliptk reads mode I as 16-bit data, 0..65535); "
                                 "convert the file to 8 or 16 bits")
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    a = a.astype(np.float64)  # mode F
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
        raise ImageLoadError(f"cannot read image {path}: float pixels in [{lo}, {hi}] are neither 0..1 nor 0..255 "
                             "(or not finite); convert the file to 8 or 16 bits")
    return np.round(a * 255 if hi <= 1 else a).astype(np.uint8)


def _to_rgb(im: Image.Image, path: Path) -> Image.Image:
    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        return Image.fromarray(_to_8bit(np.asarray(im), im.mode, path), "L").convert("RGB")
    if im.mode in _ALPHA or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im).convert("RGB")
    return im.convert("RGB")


def load_image(path: str | Path, target_size: int | tuple[int, int] | None = None) -> Image.Image:
    """Open ``path`` fully and return it as an 8-bit RGB ``PIL.Image``.

    Every mode Pillow opens is converted: grayscale ``L`` and 1-bit to grey RGB; ``CMYK`` and
    ``YCbCr`` by Pillow's conversion; alpha (``RGBA``, ``LA``, ``P`` with transparency) composited
    on black, as a crop would show it; 16-bit (``I;16``, ``I;16B`` ...) and 32-bit integer ``I``
    pixels scaled linearly from 0..65535 to 0..255 (not clipped: Pillow's own conversion clips,
    turning a dark 16-bit image white); float ``F`` pixels from 0..1 (or 0..255 when their maximum
    is above 1). The pixels are decoded here, so truncation is caught here.

    Args:
        target_size: the ``(height, width)`` (or one side) the caller will resize to, e.g.
            ``model.image_size``. A JPEG at least twice that size on both sides is then decoded at
            1/2, 1/4 or 1/8 scale with both sides still ``>= target_size`` (``Image.draft``): a
            12000x12000 photo costs ~2 MB instead of ~430 MB, and one over Pillow's
            decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) loads if its reduced size is
            under it. Smaller images, and all other formats, are decoded exactly as without it.

    Raises:
        ImageLoadError: the file does not exist, is empty, is not an image, is truncated/corrupt,
            has pixels with no 8-bit meaning, or is over the decompression-bomb limit (the message
            names the file and what to do).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "grey.png"
        >>> Image.new("L", (8, 16), 128).save(path)
        >>> load_image(path).mode, load_image(path).size
        ('RGB', (8, 16))
        >>> load_image(path.with_name("missing.png"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        cliptk.data.images.ImageLoadError: image file not found: ...missing.png (check the path ...)
    """
    path = Path(path)
    hw = _size_hw(target_size)
    if not path.is_file():
        raise ImageLoadError(f"image file not found: {path} (check the path and the dataset's root, or read the "
                             "dataset with on_error='skip' to leave missing images out)")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"image file is empty (0 bytes): {path}; {_UNREADABLE_HINT}")
    try:
        with _open(path, hw) as im:
            im.load()  # force decoding: a truncated JPEG fails here, not later in a worker
            return _to_rgb(im, path)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageLoadError(
            f"image {path} is too large to decode safely: {err} If the file is trusted, pass target_size= "
            "(the model's image size; JPEGs then decode at a reduced size) or raise PIL.Image.MAX_IMAGE_PIXELS; "
            f"otherwise {_UNREADABLE_HINT}") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"cannot read image {path}: not an image file Pillow can open ({err}); "
                             f"{_UNREADABLE_HINT}") from err
    except Exception as err:  # OSError (truncated), SyntaxError, ValueError, struct.error ... from a plugin
        raise ImageLoadError(f"cannot read image {path}: {type(err).__name__}: {err} (is the file corrupt or "
                             f"truncated?); {_UNREADABLE_HINT}") from err
