"""``python -m mona_core`` runs the ``mona`` command line."""

import sys

from mona_core.cli import main

sys.exit(main())
