"""Client CPU per request: N pipelined enqueues through one AsyncClient against a broker
running in a subprocess (so only the client's work is on this process's clock).

    .venv/bin/python benchmarks/client_cpu.py [N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import anyio

from durable_tq.client import AsyncClient

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
CONCURRENT = 200


async def main(port: int) -> None:
    async with AsyncClient("127.0.0.1", port) as client:
        for _ in range(200):  # warm up
            await client.enqueue("warm", {"n": 0})
        sent = iter(range(N))

        async def producer() -> None:
            for n in sent:
                await client.enqueue("bench", {"n": n, "text": "hello"})

        cpu, wall = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENT):
                tg.start_soon(producer)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{N} pipelined enqueues: client CPU {cpu * 1e6 / N:.1f} us/request, "
        f"wall {wall:.2f} s ({N / wall:.0f}/s)"
    )


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = 17000 + os.getpid() % 2000
        env = {**os.environ, "DURABLE_TQ_SYNCHRONOUS": "NORMAL"}
        broker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "durable_tq",
                "serve",
                "--db",
                f"{tmp}/b.db",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.5)
            anyio.run(main, port)
        finally:
            broker.terminate()
            broker.wait()


if __name__ == "__main__":
    run()
