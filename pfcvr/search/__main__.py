"""`python -m pfcvr.search ...`: the same as `pfcvr search ...` (the CLI parses the arguments)."""
from __future__ import annotations

import sys

from pfcvr.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
