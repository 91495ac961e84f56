"""Dataset readers on trees the tests build, image conversion and bad-input errors.

The generated corpus of bad images and manifests is in ``test_bad_inputs.py``; here each reader and
dataset method is tested on the behaviour it documents."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cliptk as ct
from cliptk.data import (IMAGE_SUFFIXES, ImageLoadError, ReIdDataset, camids_for_evaluation, concat, load_image,
                         stable_pid)


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
    # pids come from the names (a fixed hash for non-integer names), not from a per-call count
    assert ds.table.groupby("identity")["pid"].first().to_dict() == {"alice": stable_pid("alice"),
                                                                     "bob": stable_pid("bob")}
    assert (ds.pids == [stable_pid("alice")] * 2 + [stable_pid("bob")] * 4).all()
    assert ds[0].mode == "RGB"
    assert set(ds.splits) == {"train"}
    assert (ds.camids == -1).all() and not ds.has_cameras


def test_read_folder_reads_every_pillow_format_and_nested_folders(tmp_path):
    # before: only .jpg/.jpeg/.png directly in the identity folder were read; whole identities vanished
    files = {"a/1.webp": "WEBP", "a/2.BMP": "BMP", "b/3.gif": "GIF", "b/4.tif": "TIFF", "c/5.TIFF": "TIFF",
             "d/cam1/6.jpg": "JPEG", "d/cam2/deeper/7.png": "PNG", "e/8.JPEG": "JPEG"}
    for name, fmt in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16), (30, 60, 90)).save(p, fmt)
    (tmp_path / "a" / ".hidden.jpg").write_bytes(b"macOS resource fork")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    _img(tmp_path / ".ipynb_checkpoints" / "x.jpg")
    ds = ct.read_folder(tmp_path)
    assert sorted(ds.table["path"]) == sorted(files)
    assert ds.table.set_index("path").loc["d/cam2/deeper/7.png", "identity"] == "d"  # the top-level folder
    assert sorted(set(ds.table["identity"])) == ["a", "b", "c", "d", "e"]
    assert all(ds[i].size == (8, 16) for i in range(len(ds)))
    assert {".webp", ".bmp", ".gif", ".tif", ".tiff", ".jpg", ".png"} <= set(IMAGE_SUFFIXES)
    _img(tmp_path / "loose.jpg")
    with pytest.warns(UserWarning, match="1 image.*no identity folder.*loose.jpg"):
        ct.read_folder(tmp_path)


def test_read_folder_query_and_gallery_read_separately_align(tmp_path):
    # before: read_folder numbered identities per call, so query "zed" and gallery "zed" differed
    for name in ("query/zed/q.jpg", "query/amy/q.jpg", "gallery/amy/g1.jpg", "gallery/bo/g.jpg",
                 "gallery/zed/g1.jpg", "gallery/zed/g2.jpg"):
        _img(tmp_path / name)
    q = ct.read_folder(tmp_path / "query", split="query")
    g = ct.read_folder(tmp_path / "gallery", split="gallery")
    qp = dict(zip(q.table["identity"], q.pids))
    gp = dict(zip(g.table["identity"], g.pids))
    assert qp["zed"] == gp["zed"] and qp["amy"] == gp["amy"] and gp["bo"] not in qp.values()
    # the root with split folders, read in one call: the same pids, splits from the folder names
    both = ct.read_folder(tmp_path)
    assert set(both.split_names) == {"query", "gallery"}
    assert dict(zip(both.table["identity"], both.pids)) == {**gp, **qp}
    assert ct.read_folder(tmp_path, split="query").table["path"].tolist() == ["query/amy/q.jpg", "query/zed/q.jpg"]
    # integer names keep their integer, in every call
    _img(tmp_path / "ints" / "0042" / "a.jpg")
    assert ct.read_folder(tmp_path / "ints").pids.tolist() == [42]
    # a root mixing split folders and identity folders is refused, as are two names for one pid
    _img(tmp_path / "ints" / "42" / "b.jpg")
    with pytest.raises(ValueError, match="'0042' and '42' both map to pid 42"):
        ct.read_folder(tmp_path / "ints")
    _img(tmp_path / "stray" / "x.jpg")
    with pytest.raises(ValueError, match="stray"):
        ct.read_folder(tmp_path)


def test_stable_pid_is_a_fixed_function_of_the_name():
    # fixed values: the same in every process and machine (a hash, not a counter)
    assert stable_pid("alice") == stable_pid(" alice ") == 7577889139907209
    assert stable_pid("0002") == 2 and stable_pid("-1") == -1 and stable_pid("+7") == 7
    names = [f"player-{i}" for i in range(2000)]
    pids = [stable_pid(n) for n in names]
    assert len(set(pids)) == len(names) and all(2**52 <= p < 2**53 for p in pids)
    big = ReIdDataset("r", pd.DataFrame({"path": ["a.jpg", "b.jpg"], "pid": [2**60 + 1, 3]}))
    assert big.pids.tolist() == [2**60 + 1, 3]  # integer pids never pass through float


def test_holdout_makes_disjoint_deterministic_query_gallery(tmp_path):
    rows = [{"path": f"{i}/{k}.jpg", "pid": i, "n": k} for i in range(10) for k in range(2 + i % 3)]
    rows.append({"path": "junk.jpg", "pid": -1, "n": 0})
    rows.append({"path": "single.jpg", "pid": 99, "n": 0})  # one image: cannot give query and gallery
    ds = ReIdDataset(tmp_path, pd.DataFrame(rows))
    h = ds.holdout(0.5, seed=3, queries_per_id=1)
    t = h.table
    ids = {s: set(t.loc[(t["split"] == s) & (t["pid"] >= 0), "pid"]) for s in ("train", "query", "gallery")}
    assert len(ids["query"]) == 5 and ids["query"] == ids["gallery"] and not ids["train"] & ids["query"]
    assert 99 in ids["train"] and 99 not in ids["query"]
    assert t.loc[t["path"] == "junk.jpg", "split"].item() == "train"
    assert not set(t.loc[t["split"] == "query", "path"]) & set(t.loc[t["split"] == "gallery", "path"])
    assert (t[t["split"] == "query"].groupby("pid").size() == 1).all()
    assert len(h) == len(ds) and (h.table["path"] == ds.table["path"]).all()  # only the split column changes
    # deterministic, whatever the row order; another seed draws other identities
    shuffled = ds.select(np.random.default_rng(0).permutation(len(ds))).holdout(0.5, seed=3)
    assert (shuffled.table.set_index("path")["split"].sort_index() == t.set_index("path")["split"].sort_index()).all()
    assert any(set(ds.holdout(0.5, seed=s).subset("query").pids) != ids["query"] for s in range(4))
    two = ds.holdout(3, seed=0, queries_per_id=2)
    assert len(set(two.subset("query").pids)) == 3 and (two.subset("query").table.groupby("pid").size() == 2).all()
    with pytest.raises(ValueError, match="already has split"):
        h.holdout(2)
    with pytest.raises(ValueError, match="only .* have 4 images.*lower ids or queries_per_id"):
        ds.holdout(5, queries_per_id=3)
    with pytest.raises(KeyError, match="holdout"):
        ds.subset("query")


def test_holdout_with_cameras_draws_queries_with_a_cross_camera_match(tmp_path):
    rows = [{"path": f"{i}_{k}.jpg", "pid": i, "camid": k % 2 if i < 6 else 0} for i in range(8) for k in range(3)]
    h = ReIdDataset(tmp_path, pd.DataFrame(rows)).holdout(6, seed=1)
    q, g = h.subset("query"), h.subset("gallery")
    assert set(q.pids) == set(range(6))  # identities 6 and 7 have one camera: not eligible
    for pid, cam in zip(q.pids, q.camids):
        assert ((g.pids == pid) & (g.camids != cam)).any()


def test_camids_for_evaluation_no_cameras_means_no_filtering(tmp_path):
    q = ReIdDataset(tmp_path, pd.DataFrame({"path": ["a.jpg", "b.jpg"], "pid": [1, 2], "split": "query"}))
    g = ReIdDataset(tmp_path, pd.DataFrame({"path": ["c.jpg", "./a.jpg", "d.jpg"], "pid": [1, 1, 2]}))
    qc, gc, known = camids_for_evaluation(q, g)
    assert not known and qc.tolist() == [0, 1] and gc.tolist() == [-1, 0, -1]
    r = ct.metrics.evaluate_reid(np.eye(2), np.array([[1.0, 0], [1, 0], [0, 1]]), q.pids, g.pids, qc, gc)
    assert r.n_skipped == 0 and r.mAP == 1.0  # c.jpg and d.jpg count; a.jpg (the query itself) does not
    cams = ReIdDataset(tmp_path, pd.DataFrame({"path": ["x.jpg"], "pid": [1], "camid": [3]}))
    assert cams.has_cameras and camids_for_evaluation(cams, cams)[2]
    assert camids_for_evaluation(cams, cams)[1].tolist() == [3]


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
    assert ds.camids.tolist() == [-1] and ds.splits.tolist() == ["train"] and ds.captions == [None]
    assert not ds.has_cameras
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
    pd.DataFrame({"path": ["ok/a.jpg", "ok/b.jpg", "ok/c.jpg"], "pid": [0, 0, 1]}).to_csv(tmp_path / "m.csv", index=False)
    ds = ct.read_csv(tmp_path / "m.csv")
    with pytest.raises(ImageLoadError, match="b.jpg.*on_error='skip'"):
        ds[1]
    assert ds[0].size == (64, 64) and good.exists()


def test_read_csv_checks_files_exist_at_read_time(tmp_path):
    # before: a missing file was found only when training sampled it
    for i in range(3):
        _img(tmp_path / f"{i}.jpg")
    rows = [f"{i}.jpg" for i in range(3)] + [f"gone{i}.jpg" for i in range(5)]
    pd.DataFrame({"path": rows, "pid": [0, 0, 1, 1, 2, 2, 3, 3]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(FileNotFoundError, match=r"m.csv: 5 of 8 .*gone0.jpg, gone1.jpg, gone2.jpg \.\.\..*on_error='skip'"):
        ct.read_csv(tmp_path / "m.csv")
    with pytest.warns(UserWarning, match="left out 5 of 8"):
        ds = ct.read_csv(tmp_path / "m.csv", on_error="skip")
    assert ds.table["path"].tolist() == ["0.jpg", "1.jpg", "2.jpg"] and len(ds.skipped) == 5
    pd.DataFrame({"path": ["gone0.jpg"], "pid": [0]}).to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(FileNotFoundError, match="1 of 1"):
        ct.read_csv(tmp_path / "none.csv", on_error="skip")  # nothing left: an error even when skipping


def test_read_csv_empty_manifest_is_an_error(tmp_path):
    # before: a header-only CSV read as 0 images and training said "1 single-image identities skipped"
    (tmp_path / "h.csv").write_text("path,pid,camid\n")
    with pytest.raises(ValueError, match="h.csv lists no images"):
        ct.read_csv(tmp_path / "h.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match="e.csv: the file is empty"):
        ct.read_csv(tmp_path / "e.csv")


def test_read_csv_duplicate_paths(tmp_path):
    # before: a file listed twice was paired with itself as its own positive
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _img(tmp_path / name)
    (tmp_path / "same.csv").write_text("path,pid\na.jpg,1\nb.jpg,1\n./a.jpg,1\nc.jpg,2\nc.jpg,2\n")
    with pytest.warns(UserWarning, match="2 duplicate row"):
        ds = ct.read_csv(tmp_path / "same.csv")
    assert ds.table["path"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    (tmp_path / "split.csv").write_text("path,pid,split\na.jpg,1,query\nb.jpg,1,gallery\na.jpg,1,gallery\n")
    with pytest.raises(ValueError, match="split.csv: 1 file.*a.jpg \\(rows 2, 4.*own match"):
        ct.read_csv(tmp_path / "split.csv")
    (tmp_path / "pid.csv").write_text("path,pid\na.jpg,1\na.jpg,2\n")
    with pytest.raises(ValueError, match="pid.csv: 1 file.*a.jpg"):
        ct.read_csv(tmp_path / "pid.csv")


def test_read_csv_string_pids_map_stably(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _img(tmp_path / name)
    (tmp_path / "names.csv").write_text("path,pid\na.jpg,alice\nb.jpg,bob\nc.jpg,alice\n")
    ds = ct.read_csv(tmp_path / "names.csv")
    assert ds.pids.tolist() == [stable_pid("alice"), stable_pid("bob"), stable_pid("alice")]
    assert ds.table["identity"].tolist() == ["alice", "bob", "alice"]
    for body, what in (("a.jpg,7\nb.jpg,bob\n", "row 3 has 'bob'"), ("a.jpg,1.5\n", "row 2 has 1.5"),
                       ("a.jpg,alice\nb.jpg,\n", "row 3 has an empty|empty value.*row 3"),
                       ("a.jpg,1\nb.jpg,1.0\nc.jpg,nan\n", "row 4")):
        (tmp_path / "bad.csv").write_text("path,pid\n" + body)
        with pytest.raises(ValueError, match=f"bad.csv.*'pid'.*({what})"):
            ct.read_csv(tmp_path / "bad.csv")
    (tmp_path / "cams.csv").write_text("path,pid,camid\na.jpg,1,2\nb.jpg,1,\n")
    assert ct.read_csv(tmp_path / "cams.csv").camids.tolist() == [2, -1]  # an empty cell: unknown camera
    (tmp_path / "cams.csv").write_text("path,pid,camid\na.jpg,1,left\n")
    with pytest.raises(ValueError, match="'camid'.*-1 or empty = unknown.*row 2 has 'left'"):
        ct.read_csv(tmp_path / "cams.csv")


def test_to_csv_round_trips_non_utf8_file_names(tmp_path):
    # before: to_csv failed after the header, leaving a header-only CSV that read back as 0 images
    name = os.fsdecode(b"caf\xe9-\xff.jpg")  # Latin-1 bytes: not UTF-8
    try:
        _img(tmp_path / "imgs" / name)
    except (UnicodeEncodeError, OSError) as err:
        pytest.skip(f"this file system refuses non-UTF-8 names: {err}")
    _img(tmp_path / "imgs" / "plain.jpg")
    ds = ReIdDataset(tmp_path / "imgs", pd.DataFrame({"path": [name, "plain.jpg"], "pid": [1, 2]}))
    out = ds.to_csv(tmp_path / "m.csv")
    again = ct.read_csv(out)
    assert again.table["path"].tolist() == [f"imgs/{name}", "imgs/plain.jpg"]
    assert again[0].size == (8, 16)
    # a write that fails leaves no partial manifest behind
    bad = ReIdDataset(tmp_path, pd.DataFrame({"path": ["x.jpg"], "pid": [1], "note": [object()]}))
    bad.table["note"] = [_Unprintable()]
    with pytest.raises(RuntimeError, match="unprintable"):
        bad.to_csv(tmp_path / "partial.csv")
    assert not (tmp_path / "partial.csv").exists() and not list(tmp_path.glob(".partial.csv*"))


class _Unprintable:
    def __str__(self):
        raise RuntimeError("unprintable")


def test_skip_policy_counts_and_warns_once(tmp_path):
    _img(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"junk")
    pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg"], "pid": [0, 0, 1]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.warns(UserWarning, match="left out 1 of 3.*c.jpg"):  # missing: found at read time
        ds = ct.read_csv(tmp_path / "m.csv", on_error="skip")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        clean = ds.drop_unreadable()
    assert len(clean) == 1 and clean.table["path"].tolist() == ["a.jpg"]
    assert len(ds.skipped) == 2 and any("b.jpg" in s for s in ds.skipped) and any("c.jpg" in s for s in ds.skipped)
    assert any("1 unreadable" in str(x.message) for x in w)


def test_without_unreadable_leaves_out_only_unreadable_rows(tmp_path):
    # before: skipped rows became NaN embeddings and evaluation blamed the model
    for i in range(4):
        _img(tmp_path / f"{i}.jpg")
    pd.DataFrame({"path": [f"{i}.jpg" for i in range(4)], "pid": [0, 0, 1, 1]}).to_csv(tmp_path / "m.csv", index=False)
    ds = ct.read_csv(tmp_path / "m.csv", on_error="skip")
    (tmp_path / "1.jpg").write_bytes(b"broken after reading")
    emb = np.ones((4, 3))
    emb[1] = np.nan  # what embed gives a skipped file
    emb[3] = np.nan  # a NaN the model produced on a readable image: kept, so evaluation still says so
    with pytest.warns(UserWarning, match="left out 1 of 4 .*1.jpg"):
        kept, kept_emb = ds.without_unreadable(emb)
    assert kept.table["path"].tolist() == ["0.jpg", "2.jpg", "3.jpg"] and kept_emb.shape == (3, 3)
    assert np.isnan(kept_emb[2]).all()
    torch = pytest.importorskip("torch")
    k2, e2 = ds.without_unreadable(torch.ones(4, 3))
    assert k2 is ds and isinstance(e2, torch.Tensor)
    t = torch.ones(4, 3)
    t[1] = float("nan")
    with pytest.warns(UserWarning, match="left out 1 of 4"):
        k3, e3 = ds.without_unreadable(t)
    assert len(k3) == 3 and isinstance(e3, torch.Tensor) and tuple(e3.shape) == (3, 3)
    with pytest.raises(ValueError, match="4 images but embeddings of shape \\(3, 3\\)"):
        ds.without_unreadable(np.ones((3, 3)))


def test_select_concat_summary(tmp_path):
    _dsr_tree(tmp_path)
    ds = ct.read_deepsportradar(tmp_path)
    both = concat([ds.subset("query"), ds.subset("gallery")])
    assert len(both) == 4 and both.split_names == ["query", "gallery"]
    s = ds.summary()
    assert s.loc["train", "identities"] == 2 and s.loc["gallery", "images"] == 3
    assert ds.identities().tolist() == [7, 8, 12, 40]
    assert "ReIdDataset" in repr(ds)


def test_read_dataset_on_a_generated_tree(tiny_players_root, tiny_players):
    ds = ct.read_dataset(tiny_players_root)  # guesses the DeepSportRadar layout
    pd.testing.assert_frame_equal(ds.table, tiny_players.table)
    assert ds.split_names == ["train", "query", "gallery"]
    assert ds.summary()["identities"].to_dict() == {"train": 8, "query": 3, "gallery": 3}
    # the generator's manifest is joined in: captions and metadata, its camera kept apart from camid
    assert all(isinstance(c, str) and c for c in ds.captions)
    assert {"team", "colour", "number", "camera"} <= set(ds.table.columns)
    assert all(p.suffix in IMAGE_SUFFIXES for p in ds.paths[:3]) and ds[0].size == (32, 64)
