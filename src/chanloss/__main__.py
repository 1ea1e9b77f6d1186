"""``python -m chanloss``: the command line of :mod:`chanloss.cli`."""

import sys

from chanloss.cli import main

sys.exit(main())
