"""Plumbing written once: atomic file writes, image thumbnails, embedding-row checks, the
distributed rank. Private to cliptk (no stable API); every module that needs one of these imports
it from here rather than writing its own.
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

__all__ = ["atomic_path", "atomic_write", "atomic_write_text", "thumbnail_bytes", "thumbnail_uri", "to_numpy",
           "as_rows", "unit_rows", "world", "barrier", "sum_over_ranks", "pid_alive"]


# ------------------------------------------------------------------------------------------ files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``,
    on any error (or KeyboardInterrupt) removed. A reader never sees a half-written file.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "x.txt") as tmp:
        ...     _ = tmp.write_text("hello")
        >>> (d / "x.txt").read_text(), sorted(p.name for p in d.iterdir())
        ('hello', ['x.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` that lands atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


# ------------------------------------------------------------------------------------- thumbnails
def _format(fmt: str) -> str:
    from PIL import features

    fmt = fmt.upper()
    return "JPEG" if fmt == "WEBP" and not features.check("webp") else fmt


def thumbnail_bytes(image, height: int = 48, fmt: str = "WEBP", quality: int = 70) -> bytes:
    """``image`` (PIL) scaled to ``height`` pixels, aspect kept, encoded as ``fmt`` (WEBP falls
    back to JPEG where Pillow lacks it; PNG and JPEG as asked)."""
    from PIL import Image

    im = image.convert("RGB")
    w = max(1, round(im.width * height / max(im.height, 1)))
    im = im.resize((w, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format=_format(fmt), quality=quality)
    return buf.getvalue()


def thumbnail_uri(image, height: int = 48, fmt: str = "WEBP", quality: int = 70) -> str:
    """A ``data:image/...;base64,...`` URI of :func:`thumbnail_bytes`, for ``<img src>`` or plotly.

    Example:
        >>> from PIL import Image
        >>> thumbnail_uri(Image.new("RGB", (32, 64), "red"), fmt="JPEG")[:23]
        'data:image/jpeg;base64,'
    """
    fmt = _format(fmt)
    data = base64.b64encode(thumbnail_bytes(image, height, fmt, quality)).decode("ascii")
    return f"data:image/{fmt.lower()};base64,{data}"


# ------------------------------------------------------------------------------------------- rows
def to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy array of a tensor, array or sequence (bf16/fp16 tensors are upcast to fp32)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name}: cannot convert {type(x).__name__} to an array") from exc


def as_rows(x: Any, name: str, dtype: type | None = None) -> np.ndarray:
    """A non-empty 2-D float array of finite values (``dtype``, or float32 unless the input is
    float64); the error names ``name`` and the first bad row.

    Example:
        >>> as_rows([[1, 2], [3, float("nan")]], "emb")
        Traceback (most recent call last):
        ValueError: emb row 1 contains NaN or inf; check the encoder output
    """
    a = to_numpy(x, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items x dim), got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); pass at least one embedding")
    if dtype is None:
        dtype = np.float64 if a.dtype == np.float64 else np.float32
    a = a.astype(dtype, copy=False)
    finite = np.isfinite(a).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} row {int(np.flatnonzero(~finite)[0])} contains NaN or inf; check the encoder output")
    return a


def unit_rows(x: Any, name: str, dtype: type | None = None) -> np.ndarray:
    """:func:`as_rows` scaled to unit L2 norm; raises on an all-zero row (no direction)."""
    a = as_rows(x, name, dtype)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{name} row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros and cannot be "
                         "L2-normalised")
    return a / norms


# ------------------------------------------------------------------------------------ distributed
def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank of the running process group (nothing to wait for without one)."""
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier()


def sum_over_ranks(values: list[int]) -> list[int]:
    """``values`` summed element-wise over the ranks of the running process group (as they are
    without one); a CUDA tensor carries them under NCCL, a CPU one under gloo.

    Example:
        >>> sum_over_ranks([3, 4])
        [3, 4]
    """
    import torch
    import torch.distributed as dist

    if world()[1] == 1:
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.cpu()]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (this process's own pid counts as dead: in a
    leftover file name it was a dead process's, since reused)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True
