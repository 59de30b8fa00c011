"""``torchrun [...] -m multishot.distill --config FILE``: one rank of a distillation run."""

from __future__ import annotations

import sys

from multishot.distill.cli import main

if __name__ == "__main__":
    sys.exit(main())
