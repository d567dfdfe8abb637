"""``python -m turnout``: the same as the ``turnout`` command."""

import sys

from turnout.server.cli import main

sys.exit(main())
