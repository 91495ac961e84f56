"""A generated corpus of bad images and bad manifests: each gives correct pixels or a clear error.

Every case either loads with the right pixels, compared with a reference computed here with numpy
from the array the file was written from (not with Pillow's own conversion), or is refused with an
error that names the file and says what to do. Never silent wrong data. The cases are listed in
:data:`BAD_INPUTS` (the README's count of bad inputs tried); each is seeded by its name.
"""
from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from PIL import Image, features

import cliptk as ct
from cliptk.data import ImageLoadError, ReIdDataset, camids_for_evaluation, load_image, stable_pid


# ------------------------------------------------------------------------------------ expectations
@dataclass
class Pixels:
    """The image loads as RGB equal to ``ref`` (H, W, 3) within ``tol`` grey levels."""
    ref: np.ndarray
    tol: int = 0
    target_size: int | None = None


@dataclass
class Refused:
    """Loading raises ImageLoadError whose message names the file and matches ``fix`` (what to do)."""
    fix: str


SKIP_HINT = "on_error='skip'"
rgb = lambda a: np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a  # noqa: E731


def composite_on_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.round(colour.astype(np.float64) * (alpha[..., None] / 255.0)).astype(np.uint8)


def png16(path: Path, arr: np.ndarray, colour_type: int) -> Path:
    """A 16-bit-per-channel PNG written by hand (Pillow cannot write 48/64-bit ones):
    colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def noise(rng, shape, dtype=np.uint8, hi=256):
    return rng.integers(0, hi, shape, dtype=np.int64).astype(dtype)


# ------------------------------------------------------------------------------------ image cases
def truncated_jpeg(d, rng):
    p = d / "truncated.jpg"
    Image.fromarray(noise(rng, (64, 64, 3))).save(p, quality=95)
    p.write_bytes(p.read_bytes()[:1500])
    return p, Refused("corrupt or truncated.*" + SKIP_HINT)


def truncated_png(d, rng):
    p = d / "truncated.png"
    Image.fromarray(noise(rng, (64, 64, 3))).save(p)
    p.write_bytes(p.read_bytes()[:600])
    return p, Refused("corrupt or truncated.*" + SKIP_HINT)


def zero_byte(d, rng):
    p = d / "empty.jpg"
    p.write_bytes(b"")
    return p, Refused("empty \\(0 bytes\\).*" + SKIP_HINT)


def text_named_jpg(d, rng):
    p = d / "notes.jpg"
    p.write_text("this is a text file, not a picture\n")
    return p, Refused("not an image file.*" + SKIP_HINT)


def random_bytes_png(d, rng):
    p = d / "noise.png"
    p.write_bytes(rng.bytes(500))
    return p, Refused(SKIP_HINT)


def png_header_only(d, rng):
    p = d / "header.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n")
    return p, Refused(SKIP_HINT)


def missing_file(d, rng):
    return d / "never-written.png", Refused("not found.*" + SKIP_HINT)


def folder_named_jpg(d, rng):
    p = d / "folder.jpg"
    p.mkdir()
    return p, Refused("not found.*" + SKIP_HINT)


def grey16_full_range(d, rng):
    a = noise(rng, (12, 9), np.uint16, 65536)
    a[0, 0], a[0, 1] = 0, 65535
    p = d / "grey16.png"
    Image.fromarray(a).save(p)
    return p, Pixels(rgb(np.round(a / 65535 * 255).astype(np.uint8)))


def grey16_dark(d, rng):
    # the reported case: mean 100 of 65535 loaded as all white
    a = (100 + noise(rng, (16, 8), np.uint16, 50)).astype(np.uint16)
    p = d / "dark16.png"
    Image.fromarray(a).save(p)
    return p, Pixels(rgb(np.round(a / 65535 * 255).astype(np.uint8)))


def grey16_handwritten_png(d, rng):
    a = noise(rng, (7, 5), np.uint16, 65536)
    return png16(d / "grey16_raw.png", a, 0), Pixels(rgb(np.round(a / 65535 * 255).astype(np.uint8)))


def grey16_big_endian_tiff(d, rng):
    a = noise(rng, (6, 10), np.uint16, 65536)
    p = d / "grey16b.tif"
    Image.fromarray(a.astype(">u2")).save(p)  # mode I;16B
    return p, Pixels(rgb(np.round(a / 65535 * 255).astype(np.uint8)))


def grey16_pgm_maxval(d, rng):
    a = noise(rng, (4, 6), np.uint16, 1001)
    p = d / "depth.pgm"
    p.write_bytes(b"P5\n6 4\n1000\n" + a.astype(">u2").tobytes())
    return p, Pixels(rgb(np.round(a / 1000 * 255).astype(np.uint8)), tol=1)


def rgb48_png(d, rng):
    a = noise(rng, (6, 5, 3), np.uint16, 65536)
    return png16(d / "rgb48.png", a, 2), Pixels(np.round(a / 65535 * 255).astype(np.uint8), tol=1)


def rgba64_png(d, rng):
    a = noise(rng, (5, 4, 4), np.uint16, 65536)
    ref = composite_on_black(np.round(a[..., :3] / 257), np.round(a[..., 3] / 257))
    return png16(d / "rgba64.png", a, 6), Pixels(ref, tol=2)


def la16_png(d, rng):
    a = noise(rng, (5, 4, 2), np.uint16, 65536)
    ref = rgb(composite_on_black(np.round(a[..., :1] / 257), np.round(a[..., 1] / 257))[..., 0])
    return png16(d / "la16.png", a, 4), Pixels(ref, tol=2)


def int32_tiff(d, rng):
    a = noise(rng, (5, 7), np.int32, 65536)
    p = d / "int32.tif"
    Image.fromarray(a).save(p)  # mode I: read as 16-bit data
    return p, Pixels(rgb(np.round(a / 65535 * 255).astype(np.uint8)))


def int32_out_of_range_tiff(d, rng):
    a = noise(rng, (5, 7), np.int32, 65536)
    a[0, 0] = -1000  # signed data: no defined 8-bit range
    p = d / "signed32.tif"
    Image.fromarray(a.astype(np.int32)).save(p)
    return p, Refused("no 8-bit display range.*convert the file")


def float_unit_tiff(d, rng):
    a = rng.random((6, 4)).astype(np.float32)
    p = d / "float01.tif"
    Image.fromarray(a).save(p)
    return p, Pixels(rgb(np.round(a.astype(np.float64) * 255).astype(np.uint8)))


def float_255_tiff(d, rng):
    a = (rng.random((6, 4)) * 255).astype(np.float32)
    a[0, 0] = 200.0
    p = d / "float255.tif"
    Image.fromarray(a).save(p)
    return p, Pixels(rgb(np.round(a.astype(np.float64)).astype(np.uint8)))


def float_nan_tiff(d, rng):
    a = rng.random((6, 4)).astype(np.float32)
    a[2, 2] = np.nan
    p = d / "floatnan.tif"
    Image.fromarray(a).save(p)
    return p, Refused("not finite.*convert the file")


def cmyk_tiff(d, rng):
    c = noise(rng, (6, 8, 4))
    p = d / "cmyk.tif"
    Image.fromarray(c, "CMYK").save(p)
    ref = (255 - c[..., :3].astype(np.float64)) * (255 - c[..., 3:].astype(np.float64)) / 255
    return p, Pixels(np.round(ref).astype(np.uint8), tol=1)


def cmyk_jpeg(d, rng):
    colour = noise(rng, (4,))
    c = np.broadcast_to(colour, (16, 16, 4)).copy()
    p = d / "cmyk.jpg"
    Image.fromarray(c, "CMYK").save(p, quality=100)
    ref = (255 - c[..., :3].astype(np.float64)) * (255 - c[..., 3:].astype(np.float64)) / 255
    return p, Pixels(np.round(ref).astype(np.uint8), tol=4)


def palette_png(d, rng):
    pal = noise(rng, (16, 3))
    idx = noise(rng, (6, 9), hi=16)
    im = Image.frombytes("P", (9, 6), idx.tobytes())
    im.putpalette(pal.ravel().tolist())
    p = d / "palette.png"
    im.save(p)
    return p, Pixels(pal[idx])


def palette_transparent_png(d, rng):
    pal = noise(rng, (8, 3))
    alpha = noise(rng, (8,))
    alpha[0] = 0
    idx = noise(rng, (5, 7), hi=8)
    im = Image.frombytes("P", (7, 5), idx.tobytes())
    im.putpalette(pal.ravel().tolist())
    p = d / "palette_trns.png"
    im.save(p, transparency=bytes(alpha.tolist()))
    return p, Pixels(composite_on_black(pal[idx], alpha[idx]), tol=1)


def palette_gif_animated(d, rng):
    frames = [noise(rng, (6, 6, 3)) // 64 * 64 for _ in range(2)]  # few colours: lossless in a GIF
    p = d / "anim.gif"
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(p, save_all=True, append_images=ims[1:])
    return p, Pixels(frames[0])  # the first frame


def one_bit_png(d, rng):
    a = rng.random((9, 11)) > 0.5
    p = d / "bits.png"
    Image.fromarray(a).save(p)
    return p, Pixels(rgb(a.astype(np.uint8) * 255))


def la_png(d, rng):
    a = noise(rng, (6, 5, 2))
    p = d / "la.png"
    Image.fromarray(a, "LA").save(p)
    return p, Pixels(rgb(composite_on_black(a[..., :1], a[..., 1])[..., 0]), tol=1)


def rgba_png(d, rng):
    a = noise(rng, (6, 5, 4))
    p = d / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    return p, Pixels(composite_on_black(a[..., :3], a[..., 3]), tol=1)


def rgba_webp_lossless(d, rng):
    if not features.check("webp"):
        pytest.skip("this Pillow has no WebP codec")
    a = noise(rng, (6, 5, 4))
    a[..., 3] = 255
    p = d / "opaque.webp"
    Image.fromarray(a, "RGBA").save(p, lossless=True)
    return p, Pixels(a[..., :3])


def bmp(d, rng):
    a = noise(rng, (5, 6, 3))
    p = d / "pic.bmp"
    Image.fromarray(a).save(p)
    return p, Pixels(a)


def one_by_one_png(d, rng):
    a = noise(rng, (1, 1, 3))
    p = d / "dot.png"
    Image.fromarray(a).save(p)
    return p, Pixels(a)


def one_by_one_jpeg(d, rng):
    a = np.full((1, 1, 3), 128, np.uint8)
    p = d / "dot.jpg"
    Image.fromarray(a).save(p, quality=100)
    return p, Pixels(a, tol=2)


def png_named_jpg(d, rng):
    a = noise(rng, (7, 3, 3))
    p = d / "really_png.jpg"
    Image.fromarray(a).save(p, "PNG")
    return p, Pixels(a)


def jpeg_named_png(d, rng):
    a = np.broadcast_to(noise(rng, (3,)), (16, 16, 3)).copy()
    p = d / "really_jpeg.png"
    Image.fromarray(a).save(p, "JPEG", quality=100)
    return p, Pixels(a, tol=2)


def grey_jpeg(d, rng):
    a = np.full((16, 16), int(noise(rng, (1,))[0]), np.uint8)
    p = d / "grey.jpg"
    Image.fromarray(a).save(p, quality=100)
    return p, Pixels(rgb(a), tol=1)


def _gradient(n: int) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n]
    return np.stack([x * 255 // (n - 1), y * 255 // (n - 1), np.full_like(x, 90)], axis=-1).astype(np.uint8)


def huge_png_over_limit(d, rng):
    p = d / "huge.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(p)  # 4096 px; the test sets the limit to 1000
    return p, Refused("too large to decode safely.*MAX_IMAGE_PIXELS")


def huge_png_with_target_size(d, rng):
    p = d / "huge_target.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(p)
    return p, Refused("too large.*target_size.*MAX_IMAGE_PIXELS")  # PNG cannot decode at a reduced size


def huge_jpeg_over_limit(d, rng):
    p = d / "huge.jpg"
    Image.fromarray(_gradient(128)).save(p, quality=95)
    return p, Refused("too large.*pass target_size")


def huge_jpeg_reduced_decode(d, rng):
    # over the limit at full size (128x128 > 2 x 1000 px), under it at 1/8 scale: decoded reduced
    a = _gradient(128)
    p = d / "huge_draft.jpg"
    Image.fromarray(a).save(p, quality=95)
    ref = a.reshape(16, 8, 16, 8, 3).mean(axis=(1, 3))  # what a 1/8 box downscale gives
    return p, Pixels(np.round(ref).astype(np.uint8), tol=8, target_size=16)


IMAGE_CASES: dict[str, Callable] = {f.__name__: f for f in [
    truncated_jpeg, truncated_png, zero_byte, text_named_jpg, random_bytes_png, png_header_only, missing_file,
    folder_named_jpg, grey16_full_range, grey16_dark, grey16_handwritten_png, grey16_big_endian_tiff,
    grey16_pgm_maxval, rgb48_png, rgba64_png, la16_png, int32_tiff, int32_out_of_range_tiff, float_unit_tiff,
    float_255_tiff, float_nan_tiff, cmyk_tiff, cmyk_jpeg, palette_png, palette_transparent_png,
    palette_gif_animated, one_bit_png, la_png, rgba_png, rgba_webp_lossless, bmp, one_by_one_png, one_by_one_jpeg,
    png_named_jpg, jpeg_named_png, grey_jpeg, huge_png_over_limit, huge_png_with_target_size, huge_jpeg_over_limit,
    huge_jpeg_reduced_decode,
]}
#: the cases that run under a monkeypatched decompression-bomb limit (instead of allocating a huge image)
LOW_PIXEL_LIMIT = 1000
HUGE = {"huge_png_over_limit", "huge_png_with_target_size", "huge_jpeg_over_limit", "huge_jpeg_reduced_decode"}
TARGET = {"huge_png_with_target_size": 16, "huge_jpeg_over_limit": None}


def _seed(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_image(case, tmp_path, monkeypatch):
    if case in HUGE:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", LOW_PIXEL_LIMIT)
    path, want = IMAGE_CASES[case](tmp_path, _seed(case))
    if isinstance(want, Pixels):
        im = load_image(path, target_size=want.target_size)
        got = np.asarray(im)
        assert im.mode == "RGB" and got.shape == want.ref.shape, (got.shape, want.ref.shape)
        diff = np.abs(got.astype(np.int64) - want.ref.astype(np.int64)).max()
        assert diff <= want.tol, f"{case}: pixels differ from the numpy reference by {diff} > {want.tol}"
        return
    with pytest.raises(ImageLoadError) as err:
        load_image(path, target_size=TARGET.get(case))
    message = str(err.value)
    assert path.name in message, f"{case}: the error does not name the file: {message}"
    assert re.search(want.fix, message), f"{case}: the error says no fix: {message}"
    # the skip policy leaves exactly this file out, and says which
    ds = ReIdDataset(tmp_path, pd.DataFrame({"path": [path.name], "pid": [1]}), on_error="skip")
    with pytest.warns(UserWarning, match=path.name):
        assert ds[0] is None
    assert ds.skipped == [str(path)]


def test_reduced_decode_only_when_it_helps(tmp_path):
    """Ordinary images decode exactly as without ``target_size``; large JPEGs decode smaller."""
    a = _gradient(256)
    p = tmp_path / "big.jpg"
    Image.fromarray(a).save(p, quality=90)
    full = np.asarray(load_image(p))
    assert np.array_equal(full, np.asarray(Image.open(p).convert("RGB")))  # default: unchanged
    assert np.array_equal(np.asarray(load_image(p, target_size=(200, 150))), full)  # < 2x the target: full size
    assert load_image(p, target_size=(128, 64)).size == (128, 128)  # 1/2: both sides stay >= the target
    assert load_image(p, target_size=(64, 32)).size == (64, 64)  # (height, width), as model.image_size
    assert load_image(p, target_size=16).size == (32, 32)  # 1/8 at most
    small = tmp_path / "crop.png"
    Image.fromarray(a[:64, :32]).save(small)
    assert np.array_equal(np.asarray(load_image(small, target_size=8)), a[:64, :32])  # not JPEG: unchanged
    ds = ReIdDataset(tmp_path, pd.DataFrame({"path": ["big.jpg"], "pid": [1]}), target_size=(32, 32))
    assert ds[0].size == (32, 32) and ds.select([0]).target_size == (32, 32)
    assert ds.image(0, target_size=(128, 128)).size == (128, 128)  # a per-call size overrides the dataset's
    with pytest.raises(ValueError, match="target_size"):
        load_image(p, target_size=0)


# --------------------------------------------------------------------------------- manifest cases
def _imgs(root: Path, *names: str) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 8), (9, 9, 9)).save(root / n)


def _write(root: Path, text: str, name: str = "m.csv", encoding: str = "utf-8") -> Path:
    p = root / name
    p.write_bytes(text.encode(encoding, "surrogateescape"))
    return p


def m_missing_files(root):
    _imgs(root, "a.jpg")
    p = _write(root, "path,pid\na.jpg,1\nb.jpg,1\nc.jpg,2\n")
    with pytest.raises(FileNotFoundError, match=r"m.csv: 2 of 3 .*b.jpg, c.jpg.*on_error='skip'"):
        ct.read_csv(p)


def m_missing_files_skipped(root):
    _imgs(root, "a.jpg", "c.jpg")
    p = _write(root, "path,pid\na.jpg,1\nb.jpg,1\nc.jpg,2\n")
    with pytest.warns(UserWarning, match="left out 1 of 3.*b.jpg"):
        ds = ct.read_csv(p, on_error="skip")
    assert ds.table["path"].tolist() == ["a.jpg", "c.jpg"] and ds.pids.tolist() == [1, 2]


def m_all_missing_skipped(root):
    p = _write(root, "path,pid\nb.jpg,1\n")
    with pytest.raises(FileNotFoundError, match="m.csv: 1 of 1.*b.jpg"):
        ct.read_csv(p, on_error="skip")


def m_windows_separators(root):
    _imgs(root, "imgs/a.jpg")
    p = _write(root, "path,pid\nimgs\\a.jpg,1\n")
    with pytest.raises(FileNotFoundError, match=r"imgs\\a.jpg.*fix the paths"):
        ct.read_csv(p)


def m_duplicate_rows(root):
    _imgs(root, "a.jpg", "b.jpg")
    p = _write(root, "path,pid\na.jpg,1\nb.jpg,1\na.jpg,1\n")
    with pytest.warns(UserWarning, match="1 duplicate row"):
        ds = ct.read_csv(p)
    assert ds.table["path"].tolist() == ["a.jpg", "b.jpg"]


def m_duplicate_spelled_differently(root):
    _imgs(root, "sub/a.jpg")
    p = _write(root, "path,pid\nsub/a.jpg,1\n./sub/a.jpg,1\nsub//a.jpg,1\n")
    with pytest.warns(UserWarning, match="2 duplicate row"):
        assert len(ct.read_csv(p)) == 1


def m_duplicate_query_in_gallery(root):
    _imgs(root, "a.jpg", "b.jpg")
    p = _write(root, "path,pid,split\na.jpg,1,query\nb.jpg,1,gallery\na.jpg,1,gallery\n")
    with pytest.raises(ValueError, match="m.csv: 1 file.*a.jpg.*own match"):
        ct.read_csv(p)


def m_duplicate_two_identities(root):
    _imgs(root, "a.jpg")
    p = _write(root, "path,pid\na.jpg,1\na.jpg,2\n")
    with pytest.raises(ValueError, match="m.csv: 1 file.*a.jpg.*keep one row per file"):
        ct.read_csv(p)


def m_non_utf8_names(root):
    name = os.fsdecode(b"j\xf6rg-\xff.jpg")
    try:
        _imgs(root, name)
    except (UnicodeEncodeError, OSError) as err:
        pytest.skip(f"this file system refuses non-UTF-8 names: {err}")
    _imgs(root, "plain.jpg")
    ds = ReIdDataset(root, pd.DataFrame({"path": [name, "plain.jpg"], "pid": [3, 4]}))
    again = ct.read_csv(ds.to_csv(root / "m.csv"))
    assert again.table["path"].tolist() == [name, "plain.jpg"] and again[0].size == (4, 8)


def m_non_utf8_folder(root):
    ident = os.fsdecode(b"caf\xe9")
    try:
        _imgs(root, f"{ident}/1.jpg", "bob/1.jpg")
    except (UnicodeEncodeError, OSError) as err:
        pytest.skip(f"this file system refuses non-UTF-8 names: {err}")
    ds = ct.read_folder(root)
    again = ct.read_csv(ds.to_csv(root / "m.csv"))
    assert again.pids.tolist() == ds.pids.tolist() and sorted(again.table["identity"]) == sorted([ident, "bob"])
    assert again[0].size == (4, 8)


def m_latin1_manifest(root):
    _imgs(root, os.fsdecode("été.jpg".encode("utf-8")))
    p = _write(root, "path,pid\nété.jpg,1\n", encoding="latin-1")  # é as one byte: not the file's UTF-8 name
    with pytest.raises(FileNotFoundError, match="m.csv: 1 of 1"):
        ct.read_csv(p)


def m_utf8_bom(root):
    _imgs(root, "a.jpg")
    p = _write(root, "\ufeffpath,pid\na.jpg,5\n")  # Excel's "CSV UTF-8"
    assert ct.read_csv(p).pids.tolist() == [5]


def m_string_pids(root):
    _imgs(root, "a.jpg", "b.jpg", "c.jpg")
    p = _write(root, "path,pid\na.jpg,alice\nb.jpg,bob\nc.jpg,alice\n")
    ds = ct.read_csv(p)
    assert ds.pids.tolist() == [stable_pid("alice"), stable_pid("bob"), stable_pid("alice")]
    assert ds.table["identity"].tolist() == ["alice", "bob", "alice"]


def m_string_pids_align_across_manifests(root):
    _imgs(root, "q.jpg", "g1.jpg", "g2.jpg")
    q = ct.read_csv(_write(root, "path,pid\nq.jpg,zed\n", "q.csv"))
    g = ct.read_csv(_write(root, "path,pid\ng1.jpg,amy\ng2.jpg,zed\n", "g.csv"))
    assert q.pids[0] == g.pids[1] != g.pids[0]


def m_mixed_pids(root):
    _imgs(root, "a.jpg", "b.jpg")
    p = _write(root, "path,pid\na.jpg,7\nb.jpg,bob\n")
    with pytest.raises(ValueError, match="m.csv: column 'pid'.*not a mix.*row 3 has 'bob'"):
        ct.read_csv(p)


def m_fractional_pids(root):
    _imgs(root, "a.jpg")
    p = _write(root, "path,pid\na.jpg,2.5\n")
    with pytest.raises(ValueError, match="m.csv: column 'pid' must hold integers.*row 2 has 2.5"):
        ct.read_csv(p)


def m_empty_pid(root):
    _imgs(root, "a.jpg", "b.jpg")
    p = _write(root, "path,pid\na.jpg,alice\nb.jpg,\n")
    with pytest.raises(ValueError, match="m.csv: column 'pid' has an empty value.*-1.*row 3"):
        ct.read_csv(p)


def m_colliding_pid_names(root):
    _imgs(root, "a.jpg", "b.jpg")
    ds = ct.read_csv(_write(root, "path,pid\na.jpg,0002\nb.jpg,2\n"))  # integers: 0002 is 2
    assert ds.pids.tolist() == [2, 2]
    _imgs(root, "x/0007/a.jpg", "x/7/b.jpg")
    with pytest.raises(ValueError, match="'0007' and '7' both map to pid 7.*rename"):
        ct.read_folder(root / "x")


def m_no_cameras(root):
    _imgs(root, "q.jpg", "g1.jpg", "g2.jpg")
    ds = ct.read_csv(_write(root, "path,pid,split\nq.jpg,1,query\ng1.jpg,1,gallery\ng2.jpg,2,gallery\n"))
    q, g = ds.subset("query"), ds.subset("gallery")
    assert not ds.has_cameras and (ds.camids == -1).all() and ds.summary()["cameras"].tolist() == [0, 0]
    qc, gc, known = camids_for_evaluation(q, g)
    r = ct.metrics.evaluate_reid(np.array([[1.0, 0]]), np.array([[1.0, 0], [0, 1]]), q.pids, g.pids, qc, gc)
    assert not known and r.n_skipped == 0 and r.mAP == 1.0  # before: every true match dropped as same-camera


def m_some_cameras_unknown(root):
    _imgs(root, "a.jpg", "b.jpg")
    ds = ct.read_csv(_write(root, "path,pid,camid\na.jpg,1,0\nb.jpg,1,\n"))
    assert ds.camids.tolist() == [0, -1] and not ds.has_cameras


def m_text_camids(root):
    _imgs(root, "a.jpg")
    with pytest.raises(ValueError, match="m.csv: column 'camid'.*row 2 has 'left'"):
        ct.read_csv(_write(root, "path,pid,camid\na.jpg,1,left\n"))


def m_header_only(root):
    with pytest.raises(ValueError, match="m.csv lists no images"):
        ct.read_csv(_write(root, "path,pid\n"))


def m_zero_byte_csv(root):
    with pytest.raises(ValueError, match="m.csv: the file is empty"):
        ct.read_csv(_write(root, ""))


def m_no_pid_column(root):
    _imgs(root, "a.jpg")
    with pytest.raises(ValueError, match="m.csv has no 'pid' column"):
        ct.read_csv(_write(root, "path,person\na.jpg,1\n"))


def m_no_path_column(root):
    with pytest.raises(ValueError, match="m.csv has no 'path' column"):
        ct.read_csv(_write(root, "file,pid\na.jpg,1\n"))


def m_absolute_paths_and_crlf(root):
    _imgs(root, "elsewhere/a.jpg")
    (root / "sub").mkdir()
    p = _write(root / "sub", f"path,pid\r\n{root / 'elsewhere/a.jpg'},4\r\n")  # absolute, Windows line ends
    assert ct.read_csv(p).pids.tolist() == [4] and ct.read_csv(p)[0].size == (4, 8)


def m_empty_folder_tree(root):
    (root / "alice").mkdir()
    (root / "alice" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images.*root/<identity>/<image>"):
        ct.read_folder(root)


MANIFEST_CASES: dict[str, Callable] = {f.__name__: f for f in [
    m_missing_files, m_missing_files_skipped, m_all_missing_skipped, m_windows_separators, m_duplicate_rows,
    m_duplicate_spelled_differently, m_duplicate_query_in_gallery, m_duplicate_two_identities, m_non_utf8_names,
    m_non_utf8_folder, m_latin1_manifest, m_utf8_bom, m_string_pids, m_string_pids_align_across_manifests,
    m_mixed_pids, m_fractional_pids, m_empty_pid, m_colliding_pid_names, m_no_cameras, m_some_cameras_unknown,
    m_text_camids, m_header_only, m_zero_byte_csv, m_no_pid_column, m_no_path_column, m_absolute_paths_and_crlf,
    m_empty_folder_tree,
]}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_bad_manifest(case, tmp_path):
    MANIFEST_CASES[case](tmp_path)


#: Every bad input this module tries (the README's "N bad inputs tried").
BAD_INPUTS: list[str] = [*IMAGE_CASES, *MANIFEST_CASES]


def test_the_corpus_is_counted():
    assert len(BAD_INPUTS) == len(set(BAD_INPUTS)) == len(IMAGE_CASES) + len(MANIFEST_CASES) >= 60
