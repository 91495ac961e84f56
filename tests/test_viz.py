"""Tests of cliptk.viz on synthetic data: random embeddings with planted clusters and tiny PIL images.

The ``toy`` dataset is built here rather than taken from conftest's ``tiny_players``: the tests
need embeddings whose planted clusters match the rows' metadata (team, camera, a float ``loss``
column) and a fixed row count (30) that the error-message assertions name.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from cliptk import metrics
from cliptk.data import ReIdDataset
from cliptk.viz import (ProjectionConfig, aligned_projection, embedding_report, export_html, html_fragment,
                        plot_before_after, plot_embeddings, project, thumbnail_uri, trace_rows, warm_up)
# private: the pair sampler behind embedding_report's alignment row; its invariants (distinct images,
# same identity, pid -1 left out, the cap) are only visible through an average in the public table
from cliptk.viz.quality import _same_id_pairs

N_IDS, PER_ID, DIM = 6, 5, 32
URI = r"data:image(?:/|\\u002f)(?:webp|jpeg);base64,"  # plotly's JSON writes '/' as \u002f inside <script>


def clustered(n_ids: int = N_IDS, per_id: int = PER_ID, dim: int = DIM, noise: float = 0.3, seed: int = 0):
    """Embeddings with one planted cluster per identity, and the identities."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(n_ids), per_id)
    return (rng.normal(size=(n_ids, dim))[pids] + noise * rng.normal(size=(len(pids), dim))).astype(np.float32), pids


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A dataset of tiny coloured images with team / camera / loss metadata, and its embeddings."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(1)
    emb, pids = clustered()
    rows = []
    for i, pid in enumerate(pids):
        path = f"{pid}_{i}.png"
        Image.new("RGB", (16, 32), tuple(int(c) for c in rng.integers(0, 255, 3))).save(root / path)
        rows.append(dict(path=path, pid=int(pid), camid=i % 2, split="gallery" if i % 3 else "query",
                         team=["red", "blue", "green"][pid % 3], loss=float(rng.random()), caption=f"player {pid}"))
    return ReIdDataset(root, pd.DataFrame(rows), name="toy"), emb


def nn1_purity(coords: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of points whose nearest other point (Euclidean) has the same label."""
    idx = NearestNeighbors(n_neighbors=2).fit(coords).kneighbors(return_distance=False, n_neighbors=1)[:, 0]
    return float(np.mean(labels[idx] == labels))


# ------------------------------------------------------------------------------------ projections
def test_pca_matches_svd_of_unit_rows():
    emb, _ = clustered()
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    centred = unit - unit.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    reference = u[:, :3] * s[:3]
    out = project(emb, "pca", 3)
    assert out.shape == (len(emb), 3) and out.dtype == np.float32
    np.testing.assert_allclose(np.abs(out), np.abs(reference), atol=1e-4)  # components are defined up to sign


def test_cosine_default_ignores_row_norms():
    emb, _ = clustered()
    scaled = emb * np.random.default_rng(3).uniform(0.1, 10, size=(len(emb), 1))
    np.testing.assert_allclose(project(scaled, "pca"), project(emb, "pca"), atol=1e-5)
    with pytest.raises(AssertionError):  # with a Euclidean metric the norms matter
        np.testing.assert_allclose(project(scaled, "pca", metric="euclidean"), project(emb, "pca", metric="euclidean"),
                                   atol=1e-3)


def test_umap_separates_planted_clusters_and_is_reproducible():
    emb, pids = clustered()
    warm_up(rows=len(emb))
    assert warm_up(rows=len(emb)) == 0.0  # once per process
    a = project(torch.from_numpy(emb), "umap", seed=0)
    b = project(emb, "umap", seed=0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (len(emb), 2)
    assert nn1_purity(a, pids) == 1.0
    assert metrics.trustworthiness(emb, a, k=4) > 0.9


_FIRST_SESSION = """
import warnings; warnings.simplefilter("ignore")
import numpy as np
from numba.core import event
from cliptk.viz import project, warm_up
from cliptk.viz.project import APPROXIMATE_FROM
warm_up()
rng = np.random.default_rng(0)
with event.install_recorder("numba:compile") as rec:   # below and above the switch to pynndescent
    project(rng.normal(size=(300, 16)), n_epochs=2)
    project(rng.normal(size=(APPROXIMATE_FROM + 100, 512)), n_epochs=2)
print("COMPILED", sorted({getattr(getattr(ev.data.get("dispatcher"), "py_func", None), "__qualname__", "?")
                          for _, ev in rec.buffer if ev.is_start and isinstance(ev.data, dict)}))
"""
_NEXT_SESSION = """
import warnings; warnings.simplefilter("ignore")
import numpy as np
from numba.core.dispatcher import Dispatcher
from cliptk.viz import project
import umap.umap_, umap.layouts
project(np.random.default_rng(0).normal(size=(200, 16)), n_epochs=2)
print("HITS", sum(sum(v.stats.cache_hits.values()) for m in (umap.umap_, umap.layouts)
                  for v in vars(m).values() if isinstance(v, Dispatcher)))
"""


@pytest.mark.slow
def test_warm_up_compiles_what_projections_run_and_kernels_stay_on_disk(tmp_path):
    """A first session (empty data folder, so nothing compiled is kept yet) says it compiles, and
    after warm_up() projections below and above umap-learn's switch to pynndescent (the path of a
    10k x 512 projection) compile no numba kernel. The next session loads umap-learn's kernels from
    data/cache/numba and says nothing."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["CLIPTK_DATA"] = str(tmp_path)
    first, nxt = (subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
                  for code in (_FIRST_SESSION, _NEXT_SESSION))
    assert "COMPILED []" in first.stdout, first.stdout
    assert "compiling UMAP's numba kernels" in first.stderr and str(tmp_path / "cache" / "numba") in first.stderr
    assert list((tmp_path / "cache" / "numba").rglob("*.nbi"))
    assert "compiling" not in nxt.stderr
    assert int(nxt.stdout.split("HITS")[1]) > 0


def test_tsne_with_pca_prereduction():
    emb, pids = clustered(dim=80)
    out = project(emb, "tsne", seed=0)  # 'auto' pre-reduces 80 -> 50 dims
    np.testing.assert_array_equal(out, project(emb, "tsne", seed=0))
    assert out.shape == (len(emb), 2)
    assert nn1_purity(out, pids) == 1.0


def test_pca_prereduction_keeps_cosine_neighbours(monkeypatch):
    # PCA of unit rows keeps Euclidean distances (exactly, when no variance is dropped), and between
    # unit vectors Euclidean order is cosine order: so after the pre-reduction the metric is Euclidean.
    emb, _ = clustered(dim=64, n_ids=4, per_id=10)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    reduced = PCA(39).fit_transform(unit)  # 40 points span at most 39 dimensions after centring
    cos_nn = NearestNeighbors(n_neighbors=5, metric="cosine").fit(unit).kneighbors(return_distance=False)
    euc_nn = NearestNeighbors(n_neighbors=5).fit(reduced).kneighbors(return_distance=False)
    np.testing.assert_array_equal(cos_nn, euc_nn)

    import umap

    seen = {}

    class FakeUMAP:
        def __init__(self, n_components, **kw):
            seen.update(kw, n_components=n_components)

        def fit_transform(self, x):
            seen["shape"] = x.shape
            return x[:, :seen["n_components"]]

    monkeypatch.setattr(umap, "UMAP", FakeUMAP)
    project(emb, "umap", pca_dims=10, n_neighbors=7)
    assert seen["metric"] == "euclidean" and seen["shape"] == (40, 10) and seen["n_neighbors"] == 7
    project(emb, "umap")
    assert seen["metric"] == "cosine" and seen["shape"] == (40, 64) and seen["random_state"] == 0


def test_projection_config_roundtrip_and_validation(tmp_path):
    cfg = ProjectionConfig("tsne", n_components=3, perplexity=12.0, options={"max_iter": 300})
    assert ProjectionConfig.from_yaml(cfg.to_yaml()) == cfg
    cfg.to_yaml(tmp_path / "p.yaml")
    assert ProjectionConfig.from_yaml(tmp_path / "p.yaml") == cfg
    for bad in (dict(method="isomap"), dict(n_components=4), dict(pca_dims=1), dict(n_neighbors=1), dict(threads=0)):
        with pytest.raises(ValueError):
            ProjectionConfig(**bad)
    with pytest.raises(ValueError, match="unknown ProjectionConfig field"):
        ProjectionConfig.from_dict({"methd": "pca"})
    emb, _ = clustered()
    np.testing.assert_array_equal(project(emb, ProjectionConfig("pca")), project(emb, "pca"))
    with pytest.raises(ValueError, match="not both"):
        project(emb, ProjectionConfig("pca"), seed=3)


def test_project_rejects_bad_input():
    emb, _ = clustered()
    bad = emb.copy()
    bad[7, 0] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        project(bad, "pca")
    zero = emb.copy()
    zero[4] = 0
    with pytest.raises(ValueError, match="row 4 is all zeros"):
        project(zero, "pca")
    with pytest.raises(ValueError, match="at least 4 rows"):
        project(emb[:3], "pca")


# ------------------------------------------------------------------------------------ static plots
def test_plot_embeddings_categorical_column(toy):
    ds, emb = toy
    fig = plot_embeddings(emb, ds, color_by="team", method="pca")
    teams = ds.table["team"].to_numpy()
    assert isinstance(fig, go.Figure)
    assert sorted(tr.name for tr in fig.data) == sorted(set(teams))
    seen = []
    for tr in fig.data:
        assert tr.type == "scatter"  # small N: SVG
        rows = trace_rows(tr)
        assert set(teams[rows]) == {tr.name}
        seen += rows.tolist()
        # hover text shows the row's metadata
        for r, text in zip(rows, tr.text):
            assert f"pid: {ds.pids[r]}" in text and f"team: {teams[r]}" in text and f"{r}.png" in text
    assert sorted(seen) == list(range(len(ds)))
    assert len({tr.marker.color for tr in fig.data}) == len(fig.data)


def test_plot_embeddings_alias_continuous_array_and_many_categories(toy):
    ds, emb = toy
    proj = project(emb, "pca")
    cam = plot_embeddings(proj, ds, color_by="camera")  # alias of camid; a projection is plotted as is
    assert sorted(tr.name for tr in cam.data) == ["0", "1"] and cam.layout.legend.title.text == "camid"
    assert not any("camera" in t for tr in cam.data for t in tr.text)  # no duplicate hover line
    np.testing.assert_allclose(np.concatenate([tr.x for tr in cam.data]),
                               proj[np.concatenate([trace_rows(tr) for tr in cam.data]), 0])
    loss = plot_embeddings(proj, ds, color_by="loss")
    (tr,) = loss.data
    np.testing.assert_allclose(tr.marker.color, ds.table["loss"].to_numpy()[trace_rows(tr)])
    assert tr.marker.showscale
    values = np.arange(len(ds)) % 4
    arr = plot_embeddings(proj, None, color_by=values)
    assert len(arr.data) == 4 and all("value: " in t for tr in arr.data for t in tr.text)
    many = plot_embeddings(proj, ds, color_by="pid", max_legend=3)  # 6 pids > 3: one trace, cycled colours
    (tr,) = many.data
    colour_of = {}
    for r, c in zip(trace_rows(tr), tr.marker.color):
        assert colour_of.setdefault(ds.pids[r], c) == c
    assert len(set(colour_of.values())) == N_IDS


def test_plot_embeddings_correct_matches_brute_force(toy):
    ds, emb = toy
    noisy = emb + np.random.default_rng(5).normal(scale=2.0, size=emb.shape).astype(np.float32)  # some errors
    fig = plot_embeddings(noisy, ds, color_by="correct", method="pca")
    unit = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.where(ds.pids[sims.argmax(1)] == ds.pids, "correct", "incorrect")
    got = np.empty(len(ds), dtype=object)
    for tr in fig.data:
        got[trace_rows(tr)] = tr.name
    np.testing.assert_array_equal(got, expected)
    assert {"correct", "incorrect"} == set(expected)  # the test data has both
    with pytest.raises(ValueError, match="high-dimensional"):
        plot_embeddings(project(emb, "pca"), ds, color_by="correct")


def test_plot_embeddings_webgl_and_3d():
    big, pids = clustered(n_ids=10, per_id=120, dim=8)
    fig = plot_embeddings(big, None, color_by=pids, method="pca")
    assert {tr.type for tr in fig.data} == {"scattergl"}
    assert {tr.type for tr in plot_embeddings(big[:50], None, color_by=pids[:50], method="pca", webgl=True).data} == {"scattergl"}
    fig3 = plot_embeddings(big[:100], None, color_by=pids[:100], method="pca", n_components=3)
    assert {tr.type for tr in fig3.data} == {"scatter3d"}
    rows = np.concatenate([trace_rows(tr) for tr in fig3.data])
    assert sorted(rows) == list(range(100))
    proj3 = project(big[:100], "pca", 3)
    tr = fig3.data[0]
    np.testing.assert_allclose(np.c_[tr.x, tr.y, tr.z], proj3[trace_rows(tr)], atol=1e-6)


def test_plot_embeddings_errors_name_the_problem(toy):
    ds, emb = toy
    with pytest.raises(ValueError, match="not a column.*team"):
        plot_embeddings(emb, ds, color_by="jersey", method="pca")
    with pytest.raises(ValueError, match="has 30 rows"):
        plot_embeddings(emb[:10], ds, method="pca")
    with pytest.raises(ValueError, match="one value per point"):
        plot_embeddings(emb, ds, color_by=np.arange(5), method="pca")


# ------------------------------------------------------------------------------------ before / after
def test_aligned_pca_undoes_a_rotation():
    emb, _ = clustered()
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(DIM, DIM)))
    before, after = aligned_projection(emb, emb @ q, "pca")
    # rotating the embedding space rotates the PCA scores (up to sign flips); Procrustes undoes it
    np.testing.assert_allclose(after, before, atol=1e-4)


def test_aligned_umap_keeps_identical_embeddings_together():
    emb, pids = clustered(n_ids=4, per_id=20)
    before, after = aligned_projection(emb, emb.copy(), "aligned_umap", seed=0)
    assert before.shape == after.shape == (80, 2)
    spread = np.linalg.norm(before - before.mean(0), axis=1).mean()
    assert np.linalg.norm(before - after, axis=1).mean() < 0.25 * spread
    assert nn1_purity(after, pids) == 1.0


def test_plot_before_after_shares_colours_and_reports_tightening(toy):
    ds, tight = toy
    loose = tight + np.random.default_rng(4).normal(scale=3.0, size=tight.shape).astype(np.float32)
    fig = plot_before_after(loose, tight, ds, color_by="team", method="pca")
    assert len(fig.data) == 2 * 3
    left = {tr.name: tr.marker.color for tr in fig.data if tr.xaxis == "x"}
    right = {tr.name: tr.marker.color for tr in fig.data if tr.xaxis == "x2"}
    assert left == right and len(left) == 3
    titles = [a.text for a in fig.layout.annotations]
    accs = [float(re.search(r"accuracy ([0-9.]+)", t).group(1)) for t in titles]
    assert accs == pytest.approx([metrics.knn_accuracy(loose, ds.pids, 5), metrics.knn_accuracy(tight, ds.pids, 5)],
                                 abs=1e-3)
    assert accs[1] > accs[0]
    assert all(sorted(np.concatenate([trace_rows(tr) for tr in fig.data if tr.xaxis == ax])) == list(range(len(ds)))
               for ax in ("x", "x2"))


def test_plot_before_after_correct_is_per_panel(toy):
    ds, tight = toy
    loose = tight + np.random.default_rng(4).normal(scale=3.0, size=tight.shape).astype(np.float32)
    fig = plot_before_after(loose, tight, ds, color_by="correct", method="pca")
    right = {tr.name for tr in fig.data if tr.xaxis == "x2"}
    assert right == {"correct"}  # the planted clusters: every nearest neighbour is right
    assert "incorrect" in {tr.name for tr in fig.data if tr.xaxis == "x"}


# ------------------------------------------------------------------------------------ HTML export
def test_thumbnail_uri_is_small_and_decodes():
    img = Image.new("RGB", (40, 120), (200, 30, 40))
    uri = thumbnail_uri(img, height=48)
    head, data = uri.split(",", 1)
    assert re.fullmatch(r"data:image/(webp|jpeg);base64", head)
    back = Image.open(io.BytesIO(base64.b64decode(data)))
    assert back.size == (16, 48)
    assert len(uri) < 2000


def hover_payload(page: str) -> dict:
    """The hover script's data (``var P = {...};``) of an exported page or fragment."""
    m = re.search(r"var P = (\{.*?\});\n", page, flags=re.S)
    assert m, "no hover payload in the page"
    return json.loads(m.group(1).replace("<\\/", "</"))


def ints(d: dict | None, n: int | None = None) -> np.ndarray:
    """The page's integer arrays: ``{"u1"|"u2"|"i4": base64}``, or None for ``arange(n)``."""
    if d is None:
        return np.arange(n)
    (kind, b64), = d.items()
    return np.frombuffer(base64.b64decode(b64), dtype="<" + kind).astype(np.int64)


def cell_colour(atlas: Image.Image, p: dict, k: int) -> np.ndarray:
    """Mean RGB of thumbnail ``k``'s cell, found the way the page's script finds it."""
    a = p["atlas"]
    cw, ch = a["cell"]
    j = k % (a["columns"] * a["rows"])
    x, y = (j % a["columns"]) * cw, (j // a["columns"]) * ch
    return np.asarray(atlas.convert("RGB").crop((x, y, x + cw, y + ch))).reshape(-1, 3).mean(0)


def test_html_fragment_packs_thumbnails_into_one_atlas(toy):
    ds, emb = toy
    fig = plot_embeddings(emb, ds, color_by="team", method="pca")
    frag = html_fragment(fig, ds, div_id="players")
    assert frag.lstrip().startswith("<div") and "<html" not in frag
    assert "plotly_hover" in frag and "getElementById('players')" in frag
    assert len(re.findall(URI, frag)) == 1                  # one atlas for 30 points, not one image per point
    assert fig.data[0].customdata.shape[1] == 1             # the caller's figure is not modified
    p = hover_payload(frag)
    n = sum(len(tr.x) for tr in fig.data)
    rows, points = ints(p["rows"], n), ints(p["points"], n)
    assert p["points"] is not None                          # 3 traces (teams): points are not in row order
    for tr, off in zip(fig.data, p["offsets"]):             # point j of trace i -> its dataset row
        np.testing.assert_array_equal(rows[points[off:off + len(tr.x)]], trace_rows(tr))
    head, data = p["atlas"]["urls"][0].split(",", 1)
    atlas = Image.open(io.BytesIO(base64.b64decode(data)))
    assert p["atlas"]["cell"] == [24, 48]                   # the images' 1:2 aspect at 48 px
    for k, row in enumerate(rows):                          # each cell holds its row's (solid) colour
        want = np.asarray(Image.open(ds.root / ds.table["path"].iat[row]).convert("RGB")).reshape(-1, 3).mean(0)
        assert np.abs(cell_colour(atlas, p, k) - want).max() < 12, (k, row)
    assert p["labels"] is None and p["missing"] == []       # one file: plotly's own hover label has the metadata
    plain = html_fragment(fig, ds, thumbnails=False)
    assert "plotly_hover" not in plain and "data:image" not in plain


def test_export_html_writes_a_standalone_page(toy, tmp_path):
    ds, emb = toy
    path = export_html(emb, ds, tmp_path / "sub" / "page.html", color_by="pid", method="pca",
                       include_plotlyjs="cdn")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    assert len(re.findall(URI, text)) == 1
    assert not (tmp_path / "sub" / "page_files").exists()


def test_export_html_folder_layout_has_atlas_files_and_a_metadata_table(toy, tmp_path):
    ds, emb = toy
    fig = plot_embeddings(emb, ds, color_by="team", method="pca")
    path = export_html(fig, ds, tmp_path / "page.html", layout="folder")
    files = tmp_path / "page_files"
    assert sorted(f.name for f in files.iterdir()) in (["atlas-0000.webp", "plotly.min.js"],
                                                       ["atlas-0000.jpeg", "plotly.min.js"])
    text = path.read_text()
    assert 'src="page_files/plotly.min.js"' in text and "data:image" not in text
    assert "team: red" not in text and "row 0" not in text  # no per-point hover text in the figure JSON
    p = hover_payload(text)
    url = p["atlas"]["urls"][0]
    atlas = Image.open(tmp_path / url)
    rows = ints(p["rows"], len(ds))
    for k, row in enumerate(rows):
        want = np.asarray(Image.open(ds.root / ds.table["path"].iat[row]).convert("RGB")).reshape(-1, 3).mean(0)
        assert np.abs(cell_colour(atlas, p, k) - want).max() < 12
    labels = p["labels"]
    assert labels["columns"][:3] == ["pid", "camid", "split"] and labels["columns"][-1] == "path"
    for c in ("pid", "team", "loss", "path"):              # the box's metadata, decoded as the page decodes it
        d = labels["data"][c]
        got = [d["values"][i] for i in ints(d["codes"])] if "codes" in d else d["values"]
        want = ds.table[c].to_numpy()[rows]
        if c == "path":
            want = [os.path.basename(v) for v in want]
        assert list(got) == list(want), c
    # a second export of fewer points replaces the folder as a whole
    export_html(plot_embeddings(emb[:4], None, color_by=None, method="pca"), ds, path, layout="folder",
                thumbnails=False)
    assert sorted(f.name for f in files.iterdir()) == ["plotly.min.js"]
    assert not list(tmp_path.glob("page_files.*"))          # no temporary or old folder left behind
    with pytest.raises(ValueError, match="layout="):
        export_html(fig, ds, path, layout="zip")


def test_compact_colours_draw_the_same_colour_per_point():
    from cliptk.viz.figures import compact_colours

    colours = ["#ff0000", "#00ff00", "#0000ff", "#00ff00", "#ff0000"] * 3
    tr = go.Scattergl(x=np.arange(15), y=np.arange(15), marker=dict(color=colours))
    compact_colours(tr)
    values, scale = np.asarray(tr.marker.color), tr.marker.colorscale
    for v, want in zip(values, colours):          # the colour scale's step that holds each value
        steps = [c for (lo, c), (hi, _) in zip(scale[::2], scale[1::2]) if lo <= v <= hi]
        assert steps == [want]
    assert (tr.marker.cmin, tr.marker.cmax) == (0.0, 1.0)


def test_label_table_drops_empty_columns_and_stores_constant_ones_once(toy):
    from cliptk.viz.export import _label_table

    ds, _ = toy
    t = ds.table.copy()
    t["note"], t["site"] = None, "arena"
    table = _label_table(ReIdDataset(ds.root, t, name="toy2"), np.arange(len(t)))
    assert "note" not in table["columns"] and table["data"]["site"] == {"values": ["arena"]}
    assert "codes" in table["data"]["camid"] and list(table["data"]["camid"]["codes"]) == ["u1"]


def test_export_html_switches_to_a_folder_above_the_threshold(toy, tmp_path, monkeypatch):
    from cliptk.viz import export as export_mod

    ds, emb = toy
    monkeypatch.setattr(export_mod, "FOLDER_THRESHOLD", 29)
    export_html(plot_embeddings(emb[:29], None, color_by=None, method="pca"), ds, tmp_path / "small.html")
    export_html(plot_embeddings(emb, None, color_by=None, method="pca"), ds, tmp_path / "large.html")
    assert not (tmp_path / "small_files").exists() and (tmp_path / "large_files").is_dir()


def test_export_names_unreadable_images_and_leaves_their_cells_blank(toy, tmp_path):
    ds, emb = toy
    bad = tmp_path / "bad"
    shutil.copytree(ds.root, bad)
    broken = bad / ds.table["path"].iat[3]
    broken.write_bytes(b"not an image")
    ds2 = ReIdDataset(bad, ds.table.copy(), name="toy-bad")
    with pytest.warns(UserWarning, match=r"1 of 30 images could not be read.*" + re.escape(broken.name)):
        frag = html_fragment(emb, ds2, color_by=None, method="pca")
    p = hover_payload(frag)
    assert [int(ints(p["rows"], len(ds))[k]) for k in p["missing"]] == [3]


def test_pack_thumbnails_is_the_same_in_worker_processes(toy):
    from cliptk.viz.atlas import pack_thumbnails

    ds, _ = toy
    one = pack_thumbnails(ds, range(len(ds)), height=16, columns=4, rows_per_atlas=2, workers=1)
    two = pack_thumbnails(ds, range(len(ds)), height=16, columns=4, rows_per_atlas=2, workers=2)
    assert len(one.images) == 4 and one.images == two.images    # 30 thumbnails, 8 per atlas, same bytes
    assert one.cell == (8, 16) and one.place(29) == (3, 8, 16)      # 29 = atlas 3, cell 5: column 1, row 1


def test_export_rejects_figures_without_rows(toy):
    ds, _ = toy
    with pytest.raises(ValueError, match="no customdata"):
        html_fragment(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), ds)


# ------------------------------------------------------------------------------------ numbers
def test_same_id_pairs_are_distinct_images_of_one_identity():
    pids = np.array([3, 1, 3, 2, 1, 3, -1, -1, 5])
    i, j = _same_id_pairs(pids, 100, np.random.default_rng(0))
    assert len(i) == 5  # every image of an identity with >= 2 labelled images (pid 3: 3, pid 1: 2)
    assert np.all(i != j) and np.all(pids[i] == pids[j]) and np.all(pids[i] >= 0)
    i2, _ = _same_id_pairs(pids, 3, np.random.default_rng(0))
    assert len(i2) == 3


def test_embedding_report_values(toy):
    ds, emb = toy
    proj = project(emb, "pca")
    table = embedding_report(emb, ds, proj, k=3, k_projection=5)
    assert list(table.index) == ["knn_accuracy", "alignment", "uniformity", "neighbourhood_overlap", "trustworthiness"]
    assert table.loc["knn_accuracy", "value"] == pytest.approx(metrics.knn_accuracy(emb, ds.pids, 3))
    assert table.loc["uniformity", "value"] == pytest.approx(metrics.uniformity(emb))
    assert table.loc["trustworthiness", "value"] == pytest.approx(metrics.trustworthiness(emb, proj, 5))
    assert table.loc["neighbourhood_overlap", "value"] == pytest.approx(metrics.neighbourhood_overlap(emb, proj, 5))
    # alignment of same-identity pairs sits between 0 and the alignment of random pairs
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    random_pairs = np.mean(((unit - unit[np.random.default_rng(0).permutation(len(unit))]) ** 2).sum(1))
    assert 0 < table.loc["alignment", "value"] < random_pairs
    assert set(table["better"]) == {"higher", "lower"}
    no_proj = embedding_report(emb, ds.pids)
    assert "trustworthiness" not in no_proj.index


def test_embedding_report_ignores_unknown_identities(toy):
    ds, emb = toy
    pids = ds.pids.copy()
    pids[:5] = -1
    table = embedding_report(emb, pids, k=3)
    assert table.loc["knn_accuracy", "value"] == pytest.approx(metrics.knn_accuracy(emb[5:], pids[5:], 3))
