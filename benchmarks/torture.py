"""Crash test of the broker: ``durable-tq torture`` as a script (same options).

python benchmarks/torture.py --kills 30 --duration 120 --seed 1
"""

from __future__ import annotations

import typer

from durable_tq.cli.torture import torture

if __name__ == "__main__":
    typer.run(torture)
