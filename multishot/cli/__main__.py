"""``python -m multishot.cli``: the ``multishot`` command."""

import sys

from multishot.cli import main

sys.exit(main())
