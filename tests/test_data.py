"""Dataset readers on trees the tests build, image conversion and bad-input errors."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cliptk as ct
from cliptk.data import ImageLoadError, concat, load_image


def _img(path, mode="RGB", size=(8, 16), color=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        im = Image.new("RGB", size, (200, 10, 10)).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        im = Image.new(mode, size, color if color is not None else (0 if mode in ("L", "1") else (10, 200, 30)[:len(mode)] + (255,) * (len(mode) - 3)))
    fmt = "PNG" if path.suffix == ".png" else "JPEG"
    im.save(path, fmt)
    return path


def test_read_folder(tmp_path):
    for ident, n in (("alice", 2), ("bob", 3)):
        for k in range(n):
            _img(tmp_path / ident / f"{k}.jpg")
    _img(tmp_path / "bob" / "x.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    ds = ct.read_folder(tmp_path)
    assert len(ds) == 6
    assert ds.table.groupby("identity")["pid"].first().to_dict() == {"alice": 0, "bob": 1}
    assert (ds.pids == [0, 0, 1, 1, 1, 1]).all()
    assert ds[0].mode == "RGB"
    assert set(ds.splits) == {"train"}


def test_read_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ct.read_folder(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match=str(tmp_path)):
        ct.read_folder(tmp_path)


def test_read_csv_roundtrip_and_extra_columns(tmp_path):
    for i in range(4):
        _img(tmp_path / "imgs" / f"{i}.jpg")
    pd.DataFrame({"path": [f"imgs/{i}.jpg" for i in range(4)], "pid": [3, 3, 7, 7], "camid": [0, 1, 0, 1],
                  "caption": ["red 3", "", "blue 7", "blue 7"], "split": ["query", "gallery", "query", "gallery"],
                  "team": ["A", "A", "B", "B"]}).to_csv(tmp_path / "m.csv", index=False)
    ds = ct.read_csv(tmp_path / "m.csv")
    assert list(ds.pids) == [3, 3, 7, 7] and list(ds.camids) == [0, 1, 0, 1]
    assert ds.captions == ["red 3", None, "blue 7", "blue 7"]
    assert list(ds.table["team"]) == ["A", "A", "B", "B"]
    assert len(ds.subset("query")) == 2 and list(ds.subset("gallery").pids) == [3, 7]
    ds.to_csv(tmp_path / "again.csv")
    again = ct.read_csv(tmp_path / "again.csv")
    pd.testing.assert_frame_equal(again.table, ds.table)
    assert again[1].size == (8, 16)


def test_read_csv_minimal_and_errors(tmp_path):
    _img(tmp_path / "a.jpg")
    pd.DataFrame({"path": ["a.jpg"], "pid": [1]}).to_csv(tmp_path / "min.csv", index=False)
    ds = ct.read_csv(tmp_path / "min.csv")
    assert ds.camids.tolist() == [0] and ds.splits.tolist() == ["train"] and ds.captions == [None]
    pd.DataFrame({"path": ["a.jpg"]}).to_csv(tmp_path / "nopid.csv", index=False)
    with pytest.raises(ValueError, match="nopid.csv.*'pid'"):
        ct.read_csv(tmp_path / "nopid.csv")
    pd.DataFrame({"path": ["a.jpg", "a.jpg"], "pid": ["1", "x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv.*row 3.*'x'"):
        ct.read_csv(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        ct.read_csv(tmp_path / "nothere.csv")
    with pytest.raises(KeyError, match="available"):
        ds.subset("query")


def _dsr_tree(root):
    for name in ["12_3_00.jpeg", "12_3_01.jpeg", "40_1_02.jpeg", "40_1_05.jpeg"]:
        _img(root / "reid_training" / name)
    _img(root / "reid_test" / "query" / "7_9_00.jpeg")
    for f in ("01", "02"):
        _img(root / "reid_test" / "gallery" / f"7_9_{f}.jpeg")
    _img(root / "reid_test" / "gallery" / "8_9_03.jpeg")
    _img(root / "reid_challenge" / "query" / "0.jpeg")
    _img(root / "reid_challenge" / "gallery" / "0.jpeg")
    _img(root / "reid_challenge" / "gallery" / "1.jpeg")


def test_read_deepsportradar(tmp_path):
    _dsr_tree(tmp_path)
    ds = ct.read_deepsportradar(tmp_path)
    t = ds.table.set_index("path")
    assert t.loc["reid_training/40_1_05.jpeg", ["pid", "sequence", "frame", "split"]].tolist() == [40, 1, 5, "train"]
    q = ds.subset("query")
    assert q.pids.tolist() == [7] and q.table["frame"].tolist() == [0]
    g = ds.subset("gallery")
    assert sorted(g.pids.tolist()) == [7, 7, 8]
    # frame as camid: the camera rule drops nothing between a frame-00 query and its gallery
    assert not set(q.camids) & set(g.camids)
    cq, cg = ds.subset("challenge_query"), ds.subset("challenge_gallery")
    assert len(cq) == 1 and len(cg) == 2 and (cg.pids == -1).all()
    assert ct.read_dataset(tmp_path).table.equals(ds.table)


def test_read_deepsportradar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="reid_training"):
        ct.read_deepsportradar(tmp_path)
    _img(tmp_path / "reid_training" / "player_one.jpeg")
    with pytest.raises(ValueError, match="player_one.jpeg"):
        ct.read_deepsportradar(tmp_path)


def test_read_deepsportradar_query_must_be_frame_00(tmp_path):
    _img(tmp_path / "reid_test" / "query" / "7_9_03.jpeg")
    with pytest.raises(ValueError, match="7_9_03.jpeg.*frame 00"):
        ct.read_deepsportradar(tmp_path)


def test_read_market1501(tmp_path):
    names = {"bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "-1_c1s1_000001_00.jpg",
                                    "0000_c1s1_000002_00.jpg"],
             "query": ["0005_c3s1_000101_00.jpg"],
             "bounding_box_test": ["0005_c1s1_000201_01.jpg", "0005_c3s1_000102_02.jpg", "-1_c2s1_000003_00.jpg",
                                   "0000_c4s1_000004_00.jpg"]}
    for folder, files in names.items():
        for f in files:
            _img(tmp_path / folder / f)
    ds = ct.read_market1501(tmp_path)
    assert ds.subset("train").pids.tolist() == [2, 2]
    assert ds.subset("train").camids.tolist() == [1, 2]
    assert ds.subset("query").camids.tolist() == [3]
    assert sorted(ds.subset("gallery").pids.tolist()) == [5, 5]
    junk = ct.read_market1501(tmp_path, keep_junk=True)
    assert sorted(junk.subset("gallery").pids.tolist()) == [-1, -1, 5, 5]
    assert len(junk.subset("train")) == 2  # junk never trains
    _img(tmp_path / "query" / "oops.jpg")
    with pytest.raises(ValueError, match="oops.jpg"):
        ct.read_market1501(tmp_path)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16"])
def test_load_image_converts_to_rgb(tmp_path, mode):
    p = tmp_path / f"x_{mode.replace(';', '')}.png"
    if mode == "I;16":
        Image.fromarray(np.full((16, 8), 40000, dtype=np.uint16)).save(p)
    elif mode == "LA":
        Image.new("LA", (8, 16), (128, 255)).save(p)
    else:
        _img(p, mode)
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (8, 16)


def test_rgba_alpha_composited_on_black(tmp_path):
    p = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (255, 255, 255, 0)).save(p)
    assert np.asarray(load_image(p)).max() == 0


def test_bad_images_name_the_file(tmp_path):
    good = _img(tmp_path / "ok" / "a.jpg", size=(64, 64))
    corrupt = tmp_path / "ok" / "b.jpg"
    corrupt.write_bytes(b"this is not a jpeg")
    truncated = tmp_path / "ok" / "c.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    for bad in (corrupt, truncated, tmp_path / "ok" / "missing.jpg"):
        with pytest.raises(ImageLoadError, match=bad.name):
            load_image(bad)
    pd.DataFrame({"path": ["ok/a.jpg", "ok/b.jpg", "ok/c.jpg", "ok/missing.jpg"], "pid": [0, 0, 1, 1]}).to_csv(
        tmp_path / "m.csv", index=False)
    ds = ct.read_csv(tmp_path / "m.csv")
    with pytest.raises(ImageLoadError, match="b.jpg"):
        ds[1]
    assert ds[0].size == (64, 64) and good.exists()


def test_skip_policy_counts_and_warns_once(tmp_path):
    _img(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"junk")
    pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg"], "pid": [0, 0, 1]}).to_csv(tmp_path / "m.csv", index=False)
    ds = ct.read_csv(tmp_path / "m.csv", on_error="skip")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        clean = ds.drop_unreadable()
    assert len(clean) == 1 and clean.table["path"].tolist() == ["a.jpg"]
    assert len(ds.skipped) == 2 and any("b.jpg" in s for s in ds.skipped)
    assert any("2 unreadable" in str(x.message) for x in w)


def test_select_concat_summary(tmp_path):
    _dsr_tree(tmp_path)
    ds = ct.read_deepsportradar(tmp_path)
    both = concat([ds.subset("query"), ds.subset("gallery")])
    assert len(both) == 4 and both.split_names == ["query", "gallery"]
    s = ds.summary()
    assert s.loc["train", "identities"] == 2 and s.loc["gallery", "images"] == 3
    assert ds.identities().tolist() == [7, 8, 12, 40]
    assert "ReIdDataset" in repr(ds)
