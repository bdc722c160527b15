"""``python -m npsfuse``: the ``npsfuse`` command line."""

import sys

from .cli import main

sys.exit(main())
