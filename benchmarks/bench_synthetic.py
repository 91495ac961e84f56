"""How fast does cliptk make its synthetic players?

Writes ``--images`` crops (train 80 % / test 20 % identities, 10 images each, no challenge
split) once per ``--workers`` value into a temporary directory, then times the in-memory
sampler used for caption pre-training. Prints a small table.

    python benchmarks/bench_synthetic.py                      # 5,000 images, workers 1 and 2
    python benchmarks/bench_synthetic.py --images 1000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from cliptk.synthetic import generate_players, make_players, sample_batch


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, default=10, help="sample_batch calls of 64 to time")
    args = ap.parse_args()

    per_id = 10
    n_ids = max(2, args.images // per_id)
    n_test = max(1, n_ids // 5)
    n_train = n_ids - n_test
    print(f"cpu cores: {os.cpu_count()}")
    print(f"{'task':<28}{'images':>8}{'workers':>9}{'seconds':>9}{'images/s':>10}{'cpu s':>8}")
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), _cpu_seconds()
            root = generate_players(Path(tmp) / "players", n_train_ids=n_train, n_test_ids=n_test,
                                    images_per_id=per_id, workers=workers, challenge=False)
            dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            n = sum(1 for _ in root.rglob("*.jpeg"))
        print(f"{'generate_players (files)':<28}{n:>8}{workers:>9}{dt:>9.2f}{n / dt:>10.0f}{cpu:>8.1f}")

    players = make_players(400, seed=0)
    rng = np.random.default_rng(0)
    for same_colour in (False, True):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        for _ in range(args.batches):
            sample_batch(players, 64, rng, same_colour=same_colour)
        dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        n = 64 * args.batches
        name = f"sample_batch(same_colour={'T' if same_colour else 'F'})"
        print(f"{name:<28}{n:>8}{1:>9}{dt:>9.2f}{n / dt:>10.0f}{cpu:>8.1f}")


if __name__ == "__main__":
    main()
