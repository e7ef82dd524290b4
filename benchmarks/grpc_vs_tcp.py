"""gRPC beside TCP: now the ``grpc`` scenario of ``durable-tq bench``; this runs it with the TCP
scenarios its variants are read against (docs/benchmarks.md, "gRPC beside TCP").

    .venv/bin/python benchmarks/grpc_vs_tcp.py [--tasks N] [any other durable-tq bench option]
"""

from __future__ import annotations

import sys

from durable_tq.cli import app

#: The gRPC scenario, and the TCP ones measured the same way (same broker, same load shapes).
SCENARIOS = ("enqueue-seq", "enqueue-pipelined", "drain", "e2e", "grpc")


def main(argv: list[str]) -> None:
    chosen = [arg for name in SCENARIOS for arg in ("--scenario", name)]
    app(args=["bench", *chosen, *argv], prog_name="durable-tq")


if __name__ == "__main__":
    main(sys.argv[1:])
