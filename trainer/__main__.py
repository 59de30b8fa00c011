"""``torchrun [...] -m multishot.trainer --config FILE``: one rank of a fine-tuning run."""

from __future__ import annotations

import sys

from multishot.trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
