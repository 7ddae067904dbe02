#!/usr/bin/env python
"""Build the results table of finished runs: the same as ``python -m autonorm.compare``.

Usage: python scripts/make_table.py FOLDER [FOLDER ...] [--out DIR] [options]
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from autonorm.compare import main
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from autonorm.compare import main

if __name__ == "__main__":
    sys.exit(main())
