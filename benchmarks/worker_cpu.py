"""Worker CPU per task: N no-op tasks through one worker process (its own interpreter, so its
process_time is the worker's alone) against a broker subprocess.

    .venv/bin/python benchmarks/worker_cpu.py [N] [concurrency] [prefetch]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import anyio

from durable_tq.client import AsyncClient

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
CONCURRENCY = int(sys.argv[2]) if len(sys.argv) > 2 else 16
PREFETCH = int(sys.argv[3]) if len(sys.argv) > 3 else 0

WORKER = """
import inspect, logging, sys, time
import anyio
from durable_tq import Worker
logging.basicConfig(level=logging.INFO, stream=open("/dev/null", "w"))
options = dict(url=sys.argv[1], concurrency=int(sys.argv[2]), wait=0.5)
if "prefetch" in inspect.signature(Worker).parameters:
    options["prefetch"] = int(sys.argv[3])
worker = Worker(**options)
@worker.task("noop")
async def noop(payload, ctx):
    return None
start, wall = time.process_time(), time.perf_counter()
anyio.run(lambda: worker.run(until_idle=True))
print(time.process_time() - start, time.perf_counter() - wall)
"""


async def fill(port: int) -> None:
    async with AsyncClient("127.0.0.1", port) as client:
        for first in range(0, N, 500):
            batch = [{"queue": "noop", "payload": n} for n in range(first, min(first + 500, N))]
            await client.enqueue_many(batch)


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = 19000 + os.getpid() % 2000
        env = {**os.environ, "DURABLE_TQ_SYNCHRONOUS": "NORMAL"}
        broker = subprocess.Popen(
            [sys.executable, "-m", "durable_tq", "serve", "--db", f"{tmp}/b.db",
             "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1.5)
            anyio.run(fill, port)
            out = subprocess.run(
                [sys.executable, "-c", WORKER, f"tcp://127.0.0.1:{port}", str(CONCURRENCY),
                 str(PREFETCH)],
                check=True, capture_output=True, text=True,
            ).stdout.split()  # fmt: skip
            cpu, wall = float(out[0]), float(out[1])
            print(
                f"{N} no-op tasks, concurrency {CONCURRENCY}, prefetch {PREFETCH}: worker CPU "
                f"{cpu * 1e6 / N:.0f} us/task, wall {wall:.2f} s ({N / wall:.0f} tasks/s)"
            )
        finally:
            broker.terminate()
            broker.wait()


if __name__ == "__main__":
    run()
