"""``python -m durable_tq``: the command line."""

from durable_tq.cli import main

main()
