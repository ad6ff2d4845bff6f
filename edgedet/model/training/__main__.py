"""``python -m edgedet.model.training``: see :mod:`edgedet.model.training.cli`."""
import sys

from edgedet.model.training.cli import main

if __name__ == "__main__":  # guarded: spawned data-loader workers import this module too
    sys.exit(main())
