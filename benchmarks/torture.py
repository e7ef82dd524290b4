"""Crash test of the broker: ``durable-tq torture`` as a script (same options).

python benchmarks/torture.py --kills 30 --duration 120 --seed 1
"""

from __future__ import annotations

import sys

from durable_tq.cli import app

if __name__ == "__main__":
    app(args=["torture", *sys.argv[1:]], prog_name="benchmarks/torture.py")
