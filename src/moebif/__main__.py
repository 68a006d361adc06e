"""``python -m moebif``: the ``moebif`` command."""

import sys

from .cli import main

sys.exit(main())
