"""CPU time per claim + ack, in process: the broker's own cost of handing a task out and
finishing it, without a network or a load generator.

The wall clock of a shared machine moves by tens of percent between runs; the CPU time this
process spends (``time.process_time``, every thread: the event loop and the database thread)
moves much less, which is what it takes to see a change of a few microseconds per task, such
as the latency histograms of ``/metrics``. To compare two versions, run it under each (a
checkout of the older one on ``PYTHONPATH``), alternating:

    git archive OLD durable_tq migrations | tar -x -C /tmp/old
    for i in 1 2 3; do
        PYTHONPATH=/tmp/old .venv/bin/python benchmarks/claim_ack_cpu.py
        .venv/bin/python benchmarks/claim_ack_cpu.py
    done

Prints one line per phase: the median over ``--rounds`` of CPU microseconds per task.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from durable_tq.config import load_settings
from durable_tq.core.broker import Broker, Session, TaskSpec

QUEUE = "cpu"
PAYLOAD = json.dumps({"n": 1, "pad": "x" * 80})


async def claim_and_ack(broker: Broker, tasks: int, per_claim: int) -> float:
    """CPU seconds to claim ``tasks`` tasks ``per_claim`` at a time and ack each claim's tasks
    (concurrently, so they share a commit) before the next claim."""
    await broker.enqueue_many([TaskSpec(queue=QUEUE, payload=PAYLOAD)] * tasks)
    session = Session(greeted=True)
    started = time.process_time()
    done = 0
    while done < tasks:
        claimed = (await broker.claim([QUEUE], per_claim, session=session))["tasks"]
        if not claimed:
            raise RuntimeError(f"ran out of tasks after {done}")
        async with anyio.create_task_group() as acks:
            for task in claimed:
                acks.start_soon(broker.ack, task["task_id"], task["lease_token"])
        done += len(claimed)
    return time.process_time() - started


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(db_path=Path(folder) / "cpu.db", synchronous=args.synchronous)
        async with Broker(settings) as broker:
            await claim_and_ack(broker, 500, 32)  # warm up: first-use costs, caches
            for per_claim in (1, 32):
                samples = [
                    await claim_and_ack(broker, args.tasks, per_claim) / args.tasks * 1e6
                    for _ in range(args.rounds)
                ]
                print(
                    f"claim max={per_claim:<3} + ack: {statistics.median(samples):7.1f} us CPU "
                    f"per task (median of {args.rounds}; {min(samples):.1f}-{max(samples):.1f})"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per round and phase")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--synchronous", default="NORMAL", choices=("FULL", "NORMAL", "OFF"))
    anyio.run(main, parser.parse_args())
