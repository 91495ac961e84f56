"""What does ``import cliptk`` cost, and which heavy libraries does it pull in?

Prints a table (a benchmark, not a test): for each checkout given (default: this one), the median
wall time of ``python -c "import cliptk"`` in a fresh interpreter over ``--repeat`` runs, the same
for ``import torch`` alone (the floor: cliptk needs torch), their ratio, and whether plotly,
ipywidgets, umap, grad-cam or open_clip were imported. Rows are measured round-robin, so load from
other processes hits every row alike.

    python benchmarks/bench_import.py                                  # this checkout
    python benchmarks/bench_import.py --repeat 7 /path/to/old/checkout .   # before vs after, side by side
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HEAVY = ("plotly", "ipywidgets", "umap", "pytorch_grad_cam", "open_clip")
PROBE = ("import json, sys, time; t = time.perf_counter(); import {mod}; dt = time.perf_counter() - t; "
         "print(json.dumps({{'s': dt, 'mods': [m for m in {heavy!r} if m in sys.modules]}}))")


def once(checkout: Path, mod: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(mod=mod, heavy=HEAVY)], cwd=checkout,
                         env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="*", type=Path, default=[Path(__file__).resolve().parents[1]])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    times = {c: [] for c in args.checkouts}
    torch_times: list[float] = []
    mods: dict[Path, list[str]] = {}
    for _ in range(args.repeat):  # round-robin
        torch_times.append(once(args.checkouts[0], "torch")["s"])
        for c in args.checkouts:
            r = once(c, "cliptk")
            times[c].append(r["s"])
            mods[c] = r["mods"]
    floor = statistics.median(torch_times)
    print("| checkout | `import cliptk` median s | `import torch` median s | ratio | heavy modules imported |")
    print("| --- | --- | --- | --- | --- |")
    for c in args.checkouts:
        t = statistics.median(times[c])
        print(f"| {c} | {t:.2f} | {floor:.2f} | {t / floor:.2f} | {', '.join(mods[c]) or 'none'} |")


if __name__ == "__main__":
    main()
