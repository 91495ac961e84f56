"""The challenge's CSV: exact layout, round trip within the format's precision, ids from datasets."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from cliptk.data import read_deepsportradar, read_submission, submission_ids, write_submission


def test_round_trip_sorts_queries_and_keeps_gallery_order(tmp_path):
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 2, (6, 9))
    q = np.array([40, 3, 17, 8, 99, 0])
    g = np.array([5, 5, 1, 7, 7, 7, 2, 2, 9])  # test-split galleries repeat pids
    path = write_submission(tmp_path / "sub" / "test.csv", d, q, g)
    dist, q2, g2 = read_submission(path)
    order = np.argsort(q)
    assert q2.tolist() == sorted(q.tolist())
    assert g2.tolist() == g.tolist()
    assert np.abs(dist - d[order]).max() <= 5e-6 + 1e-12  # %10.5f rounds to 5 decimals
    # an independent reader sees the same numbers
    raw = np.loadtxt(path, delimiter=",")
    assert raw.shape == (7, 10) and raw[0, 0] == 0
    assert np.array_equal(raw[1:, 1:], dist)
    assert not list(tmp_path.joinpath("sub").glob(".*"))  # no temporary file left


def test_text_layout_is_the_baselines(tmp_path):
    d = np.array([[0.123456789, 1.5], [12.0, 0.0]])
    path = write_submission(tmp_path / "s.csv", torch.tensor(d), [2, 1], [10, 20])
    lines = path.read_text().split("\n")
    assert lines[0] == "0,10,20"
    assert lines[1] == "1,  12.00000,   0.00000"
    assert lines[2] == "2,   0.12346,   1.50000"
    assert lines[3] == ""
    for line in lines[1:3]:
        assert all(re.fullmatch(r" *\d+\.\d{5}", f) and len(f) == 10 for f in line.split(",")[1:])


def test_errors_name_the_problem(tmp_path):
    d = np.zeros((2, 3))
    with pytest.raises(ValueError, match="3 ids"):
        write_submission(tmp_path / "a.csv", d, [1, 2], [1, 2])
    with pytest.raises(ValueError, match="integers"):
        write_submission(tmp_path / "a.csv", d, ["a", "b"], [1, 2, 3])
    d[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"distances\[1, 2\]"):
        write_submission(tmp_path / "a.csv", d, [1, 2], [1, 2, 3])
    assert not (tmp_path / "a.csv").exists()
    (tmp_path / "b.csv").write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="does not look like"):
        read_submission(tmp_path / "b.csv")
    with pytest.raises(FileNotFoundError):
        read_submission(tmp_path / "none.csv")


def test_ids_from_a_deepsportradar_folder(tmp_path):
    files = ["reid_test/query/12_3_00.jpeg", "reid_test/query/4_1_00.jpeg", "reid_test/gallery/4_1_01.jpeg",
             "reid_test/gallery/12_3_02.jpeg", "reid_challenge/query/10.jpeg", "reid_challenge/query/2.jpeg",
             "reid_challenge/gallery/7.jpeg"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 8)).save(tmp_path / f)
    ds = read_deepsportradar(tmp_path)
    q, cq, cg = ds.subset("query"), ds.subset("challenge_query"), ds.subset("challenge_gallery")
    assert dict(zip(q.table["path"], submission_ids(q))) == {"reid_test/query/12_3_00.jpeg": 12,
                                                             "reid_test/query/4_1_00.jpeg": 4}
    assert dict(zip(cq.table["path"], submission_ids(cq))) == {"reid_challenge/query/10.jpeg": 10,
                                                               "reid_challenge/query/2.jpeg": 2}
    path = write_submission(tmp_path / "c.csv", np.array([[0.5], [0.25]]), cq, cg)
    dist, qi, gi = read_submission(path)
    by_id = dict(zip(submission_ids(cq), [0.5, 0.25]))
    assert qi.tolist() == [2, 10] and gi.tolist() == [7]
    assert dist[:, 0].tolist() == [by_id[2], by_id[10]]
