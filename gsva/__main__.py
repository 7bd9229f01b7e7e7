"""``python -m gsva`` = the ``gsva`` command."""

import sys

from .cli import main

sys.exit(main())
