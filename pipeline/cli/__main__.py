"""``python -m pipeline.cli``: the ``batml`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
