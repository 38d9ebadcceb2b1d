"""``python -m fusedrnn.bench``: see ``cli.py`` and ``--help``."""

import sys

from .cli import main

sys.exit(main())
