"""``python -m search``: the same as the ``hpsearch`` command."""

import sys

from search.cli import main

sys.exit(main())
