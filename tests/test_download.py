"""Offline tests of the DeepSportRadar download: a small archive built here, served from file://."""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliptk.data import DownloadError, download_deepsportradar, download_main, read_deepsportradar
from cliptk.data import download as dl

FILES = ["reid_training/1_0_00.jpeg", "reid_training/1_0_01.jpeg", "reid_training/2_0_00.jpeg",
         "reid_test/query/5_1_00.jpeg", "reid_test/gallery/5_1_01.jpeg", "reid_test/gallery/5_1_02.jpeg",
         "reid_challenge/query/0.jpeg", "reid_challenge/gallery/0.jpeg", "reid_challenge/gallery/1.jpeg"]


def jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(i)
    Image.fromarray(rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_zip(path: Path, top: str = "data_reid/", files=FILES) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i, f in enumerate(files):
            z.writestr(top + f, jpeg(i))
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture()
def archive(tmp_path):
    src = tmp_path / "server"
    src.mkdir()
    return make_zip(src / "synergyreid_data.zip")


def test_download_unpacks_the_layout_and_is_idempotent(tmp_path, archive):
    root = tmp_path / "out" / "dsr"
    got = download_deepsportradar(root, url=archive.as_uri(), md5=md5(archive), progress=False)
    assert got == root
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.jpeg")) == sorted(FILES)  # data_reid/ stripped
    assert (root / "reid_training/1_0_01.jpeg").read_bytes() == jpeg(1)
    ds = read_deepsportradar(root)
    assert ds.summary()["images"].to_dict() == {"train": 3, "query": 1, "gallery": 2,
                                                "challenge_query": 1, "challenge_gallery": 2}
    assert leftovers(root.parent) == []
    stamp = (root / "reid_training/1_0_00.jpeg").stat().st_mtime_ns
    # a second call finds the dataset: no download (the URL does not even exist)
    assert download_deepsportradar(root, url=(tmp_path / "gone.zip").as_uri(), md5="0" * 32) == root
    assert (root / "reid_training/1_0_00.jpeg").stat().st_mtime_ns == stamp


def test_archive_without_top_folder_and_tar_gz(tmp_path):
    flat = make_zip(tmp_path / "flat.zip", top="")
    root = download_deepsportradar(tmp_path / "a", url=flat.as_uri(), md5=None, progress=False)
    assert len(read_deepsportradar(root)) == len(FILES)
    tgz = tmp_path / "data.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        for i, f in enumerate(FILES):
            info = tarfile.TarInfo(f"top/{f}")
            info.size = len(jpeg(i))
            t.addfile(info, io.BytesIO(jpeg(i)))
    root = download_deepsportradar(tmp_path / "b", url=tgz.as_uri(), md5=md5(tgz), progress=False)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.jpeg")) == sorted(FILES)


def test_wrong_checksum_leaves_nothing(tmp_path, archive):
    root = tmp_path / "dsr"
    with pytest.raises(DownloadError, match="checksum mismatch.*expected MD5 " + "f" * 32):
        download_deepsportradar(root, url=archive.as_uri(), md5="f" * 32, progress=False)
    assert not root.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_truncated_archive_leaves_nothing(tmp_path, archive, kind):
    if kind == "zip":
        data = archive.read_bytes()
    else:
        full = tmp_path / "full.tar.gz"
        with tarfile.open(full, "w:gz") as t:
            t.add(archive, arcname="big.zip")
            for i, f in enumerate(FILES):
                info = tarfile.TarInfo(f)
                info.size = len(jpeg(i))
                t.addfile(info, io.BytesIO(jpeg(i)))
        data = full.read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: len(data) // 2])
    root = tmp_path / "dsr"
    with pytest.raises(DownloadError, match="truncated"):
        download_deepsportradar(root, url=cut.as_uri(), md5=None, progress=False)
    assert not root.exists() and leftovers(tmp_path) == []
    # with the official checksum the cut file is refused before unpacking
    with pytest.raises(DownloadError, match="checksum"):
        download_deepsportradar(root, url=cut.as_uri(), md5=hashlib.md5(data).hexdigest(), progress=False)
    assert not root.exists() and leftovers(tmp_path) == []


def test_corrupt_member_is_caught(tmp_path, archive):
    data = bytearray(archive.read_bytes())
    start = data.find(b"reid_test/query")  # inside the local header of that member; corrupt its data
    data[start + 60:start + 70] = b"\x00" * 10
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="corrupt"):
        download_deepsportradar(tmp_path / "dsr", url=bad.as_uri(), md5=None, progress=False)
    assert not (tmp_path / "dsr").exists() and leftovers(tmp_path) == []


def test_archive_without_layout_and_occupied_root(tmp_path):
    other = make_zip(tmp_path / "other.zip", files=["images/a.jpeg"])
    with pytest.raises(DownloadError, match="no reid_training"):
        download_deepsportradar(tmp_path / "dsr", url=other.as_uri(), md5=None, progress=False)
    assert not (tmp_path / "dsr").exists() and leftovers(tmp_path) == []
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="busy"):
        download_deepsportradar(busy, url=other.as_uri(), md5=None)
    assert (busy / "notes.txt").read_text() == "mine"


def test_force_replaces_and_missing_url_fails_cleanly(tmp_path, archive):
    root = tmp_path / "dsr"
    root.mkdir()  # an empty folder is fine
    download_deepsportradar(root, url=archive.as_uri(), md5=md5(archive), progress=False)
    (root / "reid_training/extra_file.txt").write_text("old")
    download_deepsportradar(root, url=archive.as_uri(), md5=md5(archive), force=True, progress=False)
    assert not (root / "reid_training/extra_file.txt").exists()
    with pytest.raises(DownloadError, match="failed"):
        download_deepsportradar(tmp_path / "x", url=(tmp_path / "missing.zip").as_uri(), md5=None, progress=False)
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_short_read_against_content_length(tmp_path, monkeypatch):
    class Response(io.BytesIO):
        headers = {"Content-Length": "1000"}

    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda url, timeout: Response(b"x" * 10))
    with pytest.raises(DownloadError, match="10 of 1000 bytes"):
        download_deepsportradar(tmp_path / "dsr", url="https://example.invalid/a.zip", md5=None, progress=False)
    assert not (tmp_path / "dsr").exists() and leftovers(tmp_path) == []


def test_download_main(tmp_path, archive, capsys, monkeypatch):
    assert download_main("deepsportradar", tmp_path / "dsr", url=archive.as_uri()) == 0
    assert "challenge_gallery" in capsys.readouterr().out
    with pytest.raises(ValueError, match="known: \\['deepsportradar'\\]"):
        download_main("imagenet", tmp_path / "x")
    seen = {}
    monkeypatch.setitem(dl.DOWNLOADERS, "deepsportradar",
                        (lambda root, url, md5: seen.update(url=url, md5=md5) or archive, "U", "M"))
    # download_main summarises with the reader its module imported; point that at the real tree
    monkeypatch.setattr(dl, "read_dataset", lambda p: read_deepsportradar(tmp_path / "dsr"))
    download_main("deepsportradar", tmp_path / "y")
    assert seen == {"url": "U", "md5": "M"}  # defaults: official url and md5
    download_main("deepsportradar", tmp_path / "y", md5="none")
    assert seen == {"url": "U", "md5": None}


def test_official_constants_look_right():
    assert dl.DEEPSPORTRADAR_URL.startswith("https://github.com/DeepSportradar/player-reidentification-challenge/")
    assert dl.DEEPSPORTRADAR_URL.endswith("synergyreid_data.zip")
    assert len(dl.DEEPSPORTRADAR_MD5) == 32 and int(dl.DEEPSPORTRADAR_MD5, 16) >= 0


def _dead_pid() -> int:
    """The pid of a process that has exited (what a kill -9'd download leaves in its file names)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_partials_of_a_killed_run_are_cleaned_by_the_next(tmp_path, archive):
    # before: a download killed with -9 left hidden partial files that no later run removed
    pid = _dead_pid()
    (tmp_path / f".dsr.{pid}.download").write_bytes(b"half an archive")
    (tmp_path / f".dsr.{pid}.unpack" / "data_reid").mkdir(parents=True)
    (tmp_path / f".dsr.{pid}.unpack" / "data_reid" / "x.jpeg").write_bytes(b"x")
    live = tmp_path / f".dsr.{1}.download"  # pid 1 runs: another download in progress is left alone
    live.write_bytes(b"in progress")
    with pytest.warns(UserWarning, match="interrupted earlier download"):
        root = download_deepsportradar(tmp_path / "dsr", url=archive.as_uri(), md5=md5(archive), progress=False)
    assert leftovers(tmp_path) == [live.name] and len(read_deepsportradar(root)) == len(FILES)
    # killed between moving the old dataset aside and moving the new one in: the old one comes back
    (tmp_path / "dsr").rename(tmp_path / f".dsr.{pid}.old")
    with pytest.warns(UserWarning, match="restored"):
        again = download_deepsportradar(tmp_path / "dsr", url=(tmp_path / "gone.zip").as_uri(), md5=None)
    assert again == root and len(read_deepsportradar(root)) == len(FILES) and leftovers(tmp_path) == [live.name]


@pytest.mark.parametrize("url", ["notaurl", "", "ftp://host/a.zip", "https://", "file://", "C:archive.zip"])
def test_invalid_url_names_it_and_shows_a_valid_one(tmp_path, url):
    # before: `--url notaurl` was a bare "ValueError: unknown url type"
    with pytest.raises(DownloadError, match=f"{url!r}.*https://host/path/archive.zip.*file:///"):
        download_deepsportradar(tmp_path / "dsr", url=url, md5=None, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="notaurl"):
        download_main("deepsportradar", tmp_path / "dsr", url="notaurl")


def test_a_local_path_is_accepted_as_url(tmp_path, archive):
    root = download_deepsportradar(tmp_path / "dsr", url=str(archive), md5=md5(archive), progress=False)
    assert len(read_deepsportradar(root)) == len(FILES)
