"""Fetch the real DeepSportRadar player re-identification data, for a user with internet access.

:func:`download_deepsportradar` downloads the public challenge archive, checks its MD5, unpacks
it and leaves ``root/reid_training``, ``root/reid_test/{query,gallery}`` and
``root/reid_challenge/{query,gallery}``: the layout :func:`~cliptk.data.read_deepsportradar` reads.
It sits above the readers (it prints what it fetched with :func:`~cliptk.data.read_dataset`).

Where the data comes from: the challenge repository
``DeepSportradar/player-reidentification-challenge`` ships the archive in git as
``baseline/data/synergyreid/raw/synergyreid_data.zip``, and its loader
(``reid/datasets/synergyreid.py``) checks the MD5 below and expects one top-level folder
``data_reid/`` in the zip. :data:`DEEPSPORTRADAR_URL` is GitHub's raw-file address of that archive
on the ``master`` branch as of the 2023 edition (new challenge set, commit ``625e15c``);
:data:`DEEPSPORTRADAR_MD5` is the checksum that commit's loader expects. Both were read from the
repository, not from a download (this project is built offline): if the organisers replace the
archive, the check fails with a message saying so; pass the new ``url`` / ``md5`` (or
``md5=None`` to skip the check).

Safety: the archive goes to a temporary file next to ``root`` and is renamed only when complete;
it is unpacked into a temporary folder that is renamed to ``root`` only when the layout is
there; a wrong checksum, a truncated or corrupt archive, or an archive without the layout raises
and leaves neither the archive nor a half-written dataset behind. Running it again on a finished
``root`` returns at once (idempotent). A run killed outright (``kill -9``, power loss) cannot clean
up after itself: its hidden partial files (``.<root>.<pid>.download`` / ``.unpack`` / ``.old``
beside ``root``) are removed by the next call, and a previous dataset caught mid-replacement is
put back, once the process that wrote them is gone.

Example (skipped under doctest: it downloads the archive, which needs the internet):
    >>> root = download_deepsportradar("data/deepsportradar")       # doctest: +SKIP
    >>> ds = read_deepsportradar(root)                                # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from .._util import pid_alive
from .readers import read_dataset

__all__ = [
    "download_deepsportradar",
    "download_main",
    "DEEPSPORTRADAR_URL",
    "DEEPSPORTRADAR_MD5",
    "DownloadError",
    "DOWNLOADERS",
]

#: Raw-file URL of the challenge archive in the challenge repository (master branch, 2023 edition).
DEEPSPORTRADAR_URL = ("https://github.com/DeepSportradar/player-reidentification-challenge/raw/master/"
                      "baseline/data/synergyreid/raw/synergyreid_data.zip")
#: MD5 of that archive, as checked by the challenge's own loader (``SynergyReID.md5``, 2023).
DEEPSPORTRADAR_MD5 = "2a1cdbd10d2b8f0da6575e3581343e31"

_LAYOUT = ("reid_training", "reid_test")  # read_deepsportradar needs at least one of these
_MARKER = ".cliptk-download.json"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed, was incomplete, had the wrong checksum or an unusable archive."""


_URL_HELP = ("a valid one looks like https://host/path/archive.zip, http://... or file:///absolute/path/archive.zip "
             "(or give the path of an archive on this machine)")


def _check_url(url: str) -> str:
    """``url`` if it is an http(s) or file URL; the file URL of an existing local path; else an error."""
    text = os.fspath(url) if isinstance(url, os.PathLike) else url
    if not isinstance(text, str) or not text.strip():
        raise DownloadError(f"download: {url!r} is not a URL; {_URL_HELP}")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme in ("http", "https") and parts.netloc:
        return text
    if parts.scheme == "file" and parts.path:
        return text
    if len(parts.scheme) <= 1 and Path(text).expanduser().is_file():  # a plain path (or a Windows drive letter)
        return Path(text).expanduser().resolve().as_uri()
    raise DownloadError(f"download: {text!r} is not a URL cliptk can fetch"
                        + (f" (scheme {parts.scheme!r})" if parts.scheme else "") + f"; {_URL_HELP}")


def _clean_stale(root: Path) -> list[str]:
    """Remove the partial files of earlier downloads into ``root`` whose process is gone (killed
    with no chance to clean up); put back a previous dataset caught mid-replacement. Returns what
    was done, one line per file."""
    if not root.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(root.name)}\.(\d+)\.(download|unpack|old)$")
    done = []
    for p in sorted(root.parent.iterdir()):
        m = pattern.match(p.name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        if m.group(2) == "old" and not root.exists() and _has_layout(p):
            os.replace(p, root)
            done.append(f"restored {root} from {p.name}")
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p}")
        else:
            p.unlink(missing_ok=True)
            done.append(f"removed {p}")
    if done:
        warnings.warn(f"download: cleaned up after an interrupted earlier download: {'; '.join(done)}", stacklevel=3)
    return done


def _has_layout(folder: Path) -> bool:
    return any((folder / d).is_dir() for d in _LAYOUT)


def _fetch(url: str, dest: Path, progress: bool, timeout: float) -> str:
    """Stream ``url`` into ``dest``; return the MD5 hex digest of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            written = 0
            with tqdm(total=expected, unit="B", unit_scale=True, desc=f"download {Path(url).name}",
                      disable=not progress, leave=False) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    except OSError as err:  # URLError, HTTPError, IncompleteRead (http.client) and disk errors
        raise DownloadError(f"download of {url} failed: {err}; check the URL and your connection, "
                            "then run again (nothing was kept)") from err
    if expected is not None and written != expected:
        raise DownloadError(f"download of {url} stopped after {written} of {expected} bytes; run again")
    return digest.hexdigest()


def _unpack(archive: Path, dest: Path, url: str) -> None:
    """Unpack a zip or tar archive into ``dest`` (members cannot escape ``dest``)."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                bad = z.testzip()  # reads every member and checks its CRC
                if bad is not None:
                    raise DownloadError(f"archive from {url} is corrupt: member {bad} fails its CRC check")
                z.extractall(dest)  # zipfile drops absolute paths and '..' components
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(dest, filter="data")  # refuses links/paths leaving dest
        else:
            raise DownloadError(f"{url} is neither a zip nor a tar archive (truncated download?); "
                                "check the URL, or download it by hand and pass url='file:///path/to/archive'")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DownloadError(f"cannot unpack the archive from {url}: {err} (truncated or corrupt? run again; "
                            "if it persists, download it by hand and pass url='file:///...')") from err


def _find_layout(folder: Path) -> Path | None:
    """``folder`` or the one sub-folder (at most two levels down) holding ``reid_training``/``reid_test``."""
    if _has_layout(folder):
        return folder
    for depth in (1, 2):
        hits = [p for p in folder.glob("/".join(["*"] * depth))
                if p.is_dir() and not p.name.startswith(("__MACOSX", ".")) and _has_layout(p)]
        if hits:
            return sorted(hits)[0]
    return None


def download_deepsportradar(root: str | os.PathLike = "data/deepsportradar", url: str = DEEPSPORTRADAR_URL,
                            md5: str | None = DEEPSPORTRADAR_MD5, *, force: bool = False,
                            progress: bool = True, timeout: float = 60.0) -> Path:
    """Download, check and unpack the DeepSportRadar player re-id archive into ``root``; return ``root``.

    Args:
        root: destination; afterwards it holds ``reid_training/``, ``reid_test/`` and (in the
            official archive) ``reid_challenge/``, ready for :func:`cliptk.read_deepsportradar`.
        url: where to get the archive (``https://``, ``http://`` or ``file://``, or the path of a
            local file; a zip or a tar).
            A top-level folder in the archive (the official one has ``data_reid/``) is removed.
        md5: expected MD5 hex digest of the archive; ``None`` skips the check.
        force: download and replace ``root`` even if it already holds the layout.
        progress: show a download progress bar.
        timeout: socket timeout in seconds.

    If ``root`` already holds the layout (from an earlier call, or unpacked by hand) and not
    ``force``, nothing is downloaded. A file ``root/.cliptk-download.json`` records the url and
    MD5 it came from.

    Raises:
        DownloadError: ``url`` is not an http(s)/file URL (the message shows what one looks like),
            the download failed or was cut short, the MD5 differs, the archive is truncated/corrupt,
            or it holds no ``reid_training``/``reid_test`` folder. Nothing is left behind in these
            cases.
        FileExistsError: ``root`` exists, is not empty and is not such a dataset.

    Example (needs the internet; a local copy works offline with ``url="file:///path/to/archive.zip"``):
        >>> root = download_deepsportradar("data/deepsportradar")       # doctest: +SKIP
        >>> read_deepsportradar(root).summary()                           # doctest: +SKIP
    """
    root = Path(root)
    url = _check_url(url)
    _clean_stale(root)
    if _has_layout(root) and not force:
        return root
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not _has_layout(root))):
        raise FileExistsError(f"download_deepsportradar: {root} exists and is not a DeepSportRadar dataset "
                              "(no reid_training/ or reid_test/); choose an empty or new folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{root.name}.{os.getpid()}"
    archive = root.parent / f".{tag}.download"
    unpacked = root.parent / f".{tag}.unpack"
    old = root.parent / f".{tag}.old"
    try:
        got = _fetch(url, archive, progress, timeout)
        if md5 is not None and got.lower() != md5.lower():
            raise DownloadError(f"checksum mismatch for {url}: expected MD5 {md5}, got {got} (truncated download, "
                                "or the organisers replaced the archive); run again, or pass the new md5 "
                                "(md5=None skips the check)")
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        _unpack(archive, unpacked, url)
        found = _find_layout(unpacked)
        if found is None:
            top = sorted(p.name for p in unpacked.iterdir())[:10]
            raise DownloadError(f"the archive from {url} holds no reid_training/ or reid_test/ folder "
                                f"(top level: {top}); is it the DeepSportRadar re-id data?")
        (found / _MARKER).write_text(json.dumps({"url": url, "md5": got}, indent=1))
        if root.exists():  # empty, or a dataset being replaced with force=True
            os.replace(root, old)
        try:
            os.replace(found, root)
        except OSError:
            if old.exists():
                os.replace(old, root)  # put the previous dataset back
            raise
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return root


#: Datasets :func:`download_main` knows: name -> download function ``(root, url, md5) -> Path``.
DOWNLOADERS: dict[str, tuple[Callable[..., Path], str, str]] = {
    "deepsportradar": (download_deepsportradar, DEEPSPORTRADAR_URL, DEEPSPORTRADAR_MD5),
}


def download_main(name: str, root: str | os.PathLike, url: str | None = None, md5: str | None = None) -> int:
    """Command-line entry (``python -m cliptk data download deepsportradar``): download ``name`` into
    ``root`` and print a summary of what is there. Without ``url`` the official archive and its
    MD5 are used; with a custom ``url`` the MD5 is checked only if ``md5`` is given; ``md5="none"``
    always skips the check. Returns the exit code 0.

    Raises:
        ValueError: ``name`` is not a known dataset (the message lists them).
        DownloadError, FileExistsError: see :func:`download_deepsportradar`.

    Example:
        >>> download_main("imagenet", "data/imagenet")
        Traceback (most recent call last):
        ValueError: unknown dataset 'imagenet'; known: ['deepsportradar']
    """
    if name not in DOWNLOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DOWNLOADERS)}")
    fn, default_url, default_md5 = DOWNLOADERS[name]
    check = default_md5 if md5 is None and url is None else (None if str(md5).lower() == "none" else md5)
    out = fn(root, url=url or default_url, md5=check)
    print(f"{name}: {out}")
    print(read_dataset(out).summary().to_string())
    return 0
