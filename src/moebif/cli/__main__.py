"""``python -m moebif.cli``: the ``moebif`` command."""

import sys

from . import main

sys.exit(main())
