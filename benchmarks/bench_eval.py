"""Re-id evaluation at scale: the previous evaluate_reid (sort every row) vs the counting kernel.

Prints one table: N queries x M gallery (512-d float32 embeddings of planted identities, 25
gallery images per identity, 6 cameras), seconds and peak extra memory (tracemalloc: numpy
buffers, not the embeddings themselves) of the previous implementation (a copy kept below, as it
was at commit 7933ab6) and of ``cliptk.metrics.evaluate_reid``, the speed-up, and the exactness:
max |delta AP| over queries, |delta mAP|, and whether every first-match rank is identical.
Wall seconds and, in brackets, process CPU seconds (all threads): on a loaded machine the CPU
seconds are the steadier measure of the work.
The kernel is compiled once before timing (numba caches it on disk for later processes).

    python benchmarks/bench_eval.py                      # 4000 x 20000 (a few minutes on 2 cores)
    python benchmarks/bench_eval.py --sizes 2000x10000,8000x40000
    python benchmarks/bench_eval.py --full               # 20000 x 100000 (the issue's goal: <= 40 s)
    python benchmarks/bench_eval.py --full --skip-old    # new only (the old one takes minutes there)
    python benchmarks/bench_eval.py --rerank 4000        # time k-reciprocal re-ranking at n images
    python benchmarks/bench_eval.py --neighbours 100000  # one explorer click: k=10 neighbours of a row among n

``--neighbours`` times :meth:`cliptk.metrics.NeighbourIndex.search` for single rows (median of 20
clicks; the index built once) against the explorer's current brute force (a full similarity row and a stable argsort)
and checks that both give the same neighbours.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from cliptk import metrics  # noqa: E402

DIM = 512
PER_ID = 25
CAMERAS = 6


def planted(nq: int, ng: int, seed: int = 0, noise: float = 3.0):
    """Identity centres on the unit sphere plus isotropic noise of norm ``noise`` (float32)."""
    rng = np.random.default_rng(seed)
    n_ids = max(2, ng // PER_ID)
    centres = rng.normal(size=(n_ids, DIM)).astype(np.float32) / np.sqrt(DIM)
    gp = rng.integers(0, n_ids, ng)
    qp = rng.integers(0, n_ids, nq)
    g = centres[gp] + (noise / np.sqrt(DIM)) * rng.normal(size=(ng, DIM)).astype(np.float32)
    q = centres[qp] + (noise / np.sqrt(DIM)) * rng.normal(size=(nq, DIM)).astype(np.float32)
    return q, g, qp, gp, rng.integers(0, CAMERAS, nq), rng.integers(0, CAMERAS, ng)


# ---------------------------------------------------------------------------------------------
# the previous implementation (cliptk/metrics.py at 7933ab6): a stable argsort of every row
def old_evaluate(q, g, qp, gp, qc, gc, block_elements: int = 1 << 22):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    nq, ng = q.shape[0], g.shape[0]
    ap = np.full(nq, np.nan)
    first = np.full(nq, -1, dtype=np.int64)
    step = max(1, block_elements // ng)
    for s in range(0, nq, step):
        e = min(nq, s + step)
        block = 1.0 - q[s:e] @ g.T
        order = np.argsort(block, axis=1, kind="stable")
        same_pid = gp[order] == qp[s:e, None]
        keep = ~(same_pid & (gc[order] == qc[s:e, None]))
        hits = same_pid & keep
        pos = np.cumsum(keep, axis=1)
        n_rel = hits.sum(axis=1)
        valid = n_rel > 0
        precision_at_hits = np.where(hits, np.cumsum(hits, axis=1) / np.maximum(pos, 1), 0.0)
        ap[s:e][valid] = precision_at_hits.sum(axis=1)[valid] / n_rel[valid]
        first_pos = pos[np.arange(e - s), hits.argmax(axis=1)]
        first[s:e][valid] = first_pos[valid]
    return ap, first


def measure(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, (dt, cpu), peak / 2**20


def new_evaluate(q, g, qp, gp, qc, gc):
    r = metrics.evaluate_reid(q, g, qp, gp, qc, gc)
    return r.ap, r.first_match


def run_size(nq: int, ng: int, skip_old: bool) -> str:
    q, g, qp, gp, qc, gc = planted(nq, ng)
    (ap_new, first_new), (t_new, c_new), m_new = measure(lambda: new_evaluate(q, g, qp, gp, qc, gc))
    map_new = float(np.nanmean(ap_new))
    if skip_old:
        return (f"| {nq:,} x {ng:,} | - | {t_new:.1f} ({c_new:.1f}) | - | {m_new:.0f} | - | {map_new:.4f} "
                "| - | - |")
    (ap_old, first_old), (t_old, c_old), m_old = measure(lambda: old_evaluate(q, g, qp, gp, qc, gc))
    d_ap = float(np.nanmax(np.abs(ap_new - ap_old))) if np.isfinite(ap_old).any() else 0.0
    d_map = abs(map_new - float(np.nanmean(ap_old)))
    same = "yes" if np.array_equal(first_new, first_old) and np.array_equal(np.isnan(ap_new), np.isnan(ap_old)) \
        else "NO"
    return (f"| {nq:,} x {ng:,} | {t_old:.1f} ({c_old:.1f}) | {t_new:.1f} ({c_new:.1f}) | {m_old:.0f} | {m_new:.0f} "
            f"| {t_old / t_new:.1f}x ({c_old / c_new:.1f}x) | {map_new:.4f} | {d_ap:.1e} / {d_map:.1e} | {same} |")


def run_rerank(n: int) -> str:
    nq = n // 5
    q, g, qp, gp, qc, gc = planted(nq, n - nq, seed=1)
    _, (dt, cpu), mem = measure(lambda: metrics.evaluate_reid(q, g, qp, gp, qc, gc, rerank=True))
    return f"re-rank {nq:,} + {n - nq:,} = {n:,} images: {dt:.1f} s wall ({cpu:.1f} s CPU), {mem:.0f} MiB peak"


def run_neighbours(n: int, k: int = 10, clicks: int = 20) -> str:
    _, x, _, _, _, _ = planted(1, n, seed=2)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)

    def brute(i):   # cliptk/widgets/explorer.py Explorer.neighbours as it is
        sims = x @ x[i]
        sims[i] = -np.inf
        return np.argsort(-sims, kind="stable")[:k]

    t0 = time.perf_counter()
    index = metrics.NeighbourIndex(x)
    t_build = time.perf_counter() - t0
    rows = np.random.default_rng(3).integers(0, n, clicks)
    t_new, t_old, same = [], [], True
    for i in rows:
        t0 = time.perf_counter()
        idx, _ = index.search([i], k)
        t1 = time.perf_counter()
        ref = brute(i)
        t_old.append(time.perf_counter() - t1)
        t_new.append(t1 - t0)
        same &= bool(np.array_equal(idx[0], ref))
    return (f"one click, k={k} neighbours among {n:,} points ({DIM}-d float32), median of {clicks}: "
            f"NeighbourIndex.search {1e3 * np.median(t_new):.1f} ms (index built once in {t_build:.2f} s), "
            f"brute force + argsort {1e3 * np.median(t_old):.1f} ms, "
            f"same neighbours: {'yes' if same else 'NO'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4000x20000", help="comma-separated NQxNG sizes")
    ap.add_argument("--full", action="store_true", help="add 20000x100000")
    ap.add_argument("--skip-old", action="store_true", help="time only the new implementation")
    ap.add_argument("--rerank", type=int, default=0, help="also time re-ranking on this many images")
    ap.add_argument("--neighbours", type=int, default=0, help="also time one explorer click among this many points")
    a = ap.parse_args(argv)
    sizes = [tuple(int(x) for x in s.lower().split("x")) for s in a.sizes.split(",") if s]
    if a.full:
        sizes.append((20_000, 100_000))
    warm = planted(50, 200)
    metrics.evaluate_reid(*warm)  # compile (or load) the kernels outside the timings
    print(f"evaluate_reid, {DIM}-d float32, {PER_ID} gallery images per identity, {CAMERAS} cameras, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| N x M | old s (CPU s) | new s (CPU s) | old peak MiB | new peak MiB | speed-up wall (CPU) | mAP "
          "| max abs dAP / dmAP | first matches identical |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for nq, ng in sizes:
        print(run_size(nq, ng, a.skip_old), flush=True)
    if a.rerank:
        print(run_rerank(a.rerank))
    if a.neighbours:
        metrics.nearest_neighbours(warm[1], 3, rows=[0])   # compile outside the timing
        print(run_neighbours(a.neighbours), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
