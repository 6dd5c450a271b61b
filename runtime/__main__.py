"""``python -m runtime``: the ``cellray`` command line (start, status, stop, bench)."""

import sys

from runtime.cli import main

sys.exit(main())
