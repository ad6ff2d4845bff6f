"""``python -m converters``: the same as the ``edgedet-convert`` command."""
from converters.cli import main

raise SystemExit(main())
