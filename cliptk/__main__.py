"""``python -m cliptk``: the command line (see :mod:`cliptk.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":  # importable (e.g. by pytest --doctest-modules) without running
    sys.exit(main())
