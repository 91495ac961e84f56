"""Fail when a committed notebook carries outputs or execution counts; ``--strip`` removes them.

    python -m cliptk.tools.check_notebooks notebooks/           # CI: exit 1 and list offenders
    python -m cliptk.tools.check_notebooks --strip notebooks/   # before committing
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat


def dirty_cells(nb) -> list[int]:
    """Indices of code cells with outputs or an execution count."""
    return [i for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]


def strip(nb) -> None:
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
            c.execution_count = None
        c.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--strip", action="store_true", help="strip outputs in place instead of failing")
    args = ap.parse_args(argv)
    files = sorted(f for p in args.paths for f in ([p] if p.is_file() else p.glob("*.ipynb")))
    bad = []
    for f in files:
        nb = nbformat.read(f, as_version=4)
        if " " in f.name:
            bad.append(f"{f}: notebook names must not contain spaces")
        cells = dirty_cells(nb)
        if cells and args.strip:
            strip(nb)
            nbformat.write(nb, f)
        elif cells:
            bad.append(f"{f}: cells {cells} carry outputs; run `make notebooks-clean`")
    for line in bad:
        print(line, file=sys.stderr)
    print(f"checked {len(files)} notebook(s): {'ok' if not bad else f'{len(bad)} problem(s)'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
