"""``python -m edgedet.train``: see :mod:`edgedet.train.cli`."""
import sys

from edgedet.train.cli import main

if __name__ == "__main__":  # guarded: spawned data-loader workers import this module too
    sys.exit(main())
