"""``python -m agent`` is ``edge-agent``."""

import sys

from .cli.main import main

sys.exit(main())
