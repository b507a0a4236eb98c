#!/usr/bin/env python3
"""Relay with every core: `bench/run.py --only cores` (kept under this name for
`make bench-workers` and habit). The harness, the phases and the targets are described in
bench/run.py (`run_cores`, TARGETS) and docs/performance.md ("Every core").

    python bench/workers.py                       # = python bench/run.py --only cores
    python bench/workers.py --rounds 3 --seconds 10
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

if __name__ == "__main__":
    sys.argv = [str(Path(run.__file__)), "--only", "cores", *sys.argv[1:]]
    sys.exit(run.main())
