"""How long do cliptk's projections take on N x D embeddings, and how faithful are they?

Prints a table (a benchmark, not a test): one row per method with wall-clock seconds after
warm-up, the 10-NN overlap between embedding and projection and trustworthiness (on a sample).
The embeddings are random with planted clusters (identities), L2-normalised like CLIP features.

    python benchmarks/bench_projection.py                       # 10k x 512 on 2 cores
    python benchmarks/bench_projection.py --n 2000 --methods umap,pca --cores 0   # all cores

``--cores N`` pins the process to N CPU cores (Linux) and sets the thread counts of numba,
OpenMP and BLAS before they are imported, to mimic a small laptop or CI runner.

``wall s`` is what a user waits; ``cpu s`` is the process's CPU time summed over its threads. On a
busy shared machine wall time is inflated by other processes, while CPU time is not: a
single-threaded run (UMAP with a seed) then needs about ``cpu s`` of wall time on an idle core.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="number of embeddings (default 10000)")
    ap.add_argument("--dim", type=int, default=512, help="embedding dimension (default 512)")
    ap.add_argument("--ids", type=int, default=500, help="planted clusters (identities)")
    ap.add_argument("--methods", default="pca,umap,umap-parallel,tsne",
                    help="comma list of pca, umap (seed 0, one thread), umap-parallel (seed None), tsne")
    ap.add_argument("--cores", type=int, default=2, help="pin to this many cores (0 = leave as is)")
    ap.add_argument("--sample", type=int, default=2000, help="points used for the quality columns")
    return ap.parse_args()


def main() -> None:
    args = parse()
    if args.cores > 0:  # before numba / BLAS are imported
        for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.cores)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from cliptk import metrics
    from cliptk.viz import project, warm_up

    rng = np.random.default_rng(0)
    pids = rng.integers(0, args.ids, args.n)
    emb = rng.normal(size=(args.ids, args.dim))[pids] + 0.8 * rng.normal(size=(args.n, args.dim))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"{args.n} x {args.dim} embeddings, {args.ids} planted clusters, {cores} core(s){load}")
    t = time.perf_counter()
    compile_s = warm_up()
    print(f"warm_up (numba compile, once per kernel): {compile_s:.1f} s\n", flush=True)

    settings = {"pca": ("pca", dict(seed=0)), "umap": ("umap", dict(seed=0)),
                "umap-parallel": ("umap", dict(seed=None)), "tsne": ("tsne", dict(seed=0))}
    sample = np.sort(rng.choice(args.n, min(args.sample, args.n), replace=False))
    header = (f"{'method':<14} {'seed':>5} {'wall s':>8} {'cpu s':>8} {'10-NN overlap':>14} "
              f"{'trustworthiness':>16}")
    print(header)
    print("-" * len(header))
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if name not in settings:
            sys.exit(f"unknown method {name!r}; choose from {sorted(settings)}")
        method, kw = settings[name]
        t, c = time.perf_counter(), time.process_time()
        proj = project(emb, method, **kw)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        overlap = metrics.neighbourhood_overlap(emb[sample], proj[sample], k=10)
        trust = metrics.trustworthiness(emb, proj, k=10, max_samples=len(sample))
        print(f"{name:<14} {str(kw['seed']):>5} {seconds:8.1f} {cpu:8.1f} {overlap:14.3f} {trust:16.3f}", flush=True)


if __name__ == "__main__":
    main()
