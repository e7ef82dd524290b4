"""Does scraping /metrics every second move TCP throughput? (docs/benchmarks.md, "HTTP")

Starts one broker, then runs ``durable-tq bench --url`` against it in rounds, alternating
"no scraper" and "a scraper GETting /metrics every second", and prints each round's tasks/s
per variant plus how long a scrape took.

    .venv/bin/python benchmarks/http_metrics_scrape.py [--tasks 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

SCENARIOS = ("enqueue-pipelined", "drain")


def start_broker(folder: Path) -> tuple[subprocess.Popen[str], str, str]:
    command = [
        sys.executable, "-m", "durable_tq", "serve", "--port", "0", "--http", "127.0.0.1:0",
        "--db", str(folder / "scrape.db"), "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=folder)
    assert proc.stdout is not None
    tcp = re.search(r"listening on (\S+)", proc.stdout.readline())
    http = re.search(r"HTTP API on (\S+)", proc.stdout.readline())
    assert tcp and http, "the broker did not say where it listens"
    return proc, tcp[1], http[1]


def scrape_every_second(url: str, stop: threading.Event, took: list[float]) -> None:
    while not stop.wait(1.0):
        started = time.perf_counter()
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
            reply.read()
        took.append(time.perf_counter() - started)


def bench(url: str, tasks: int) -> dict[str, float]:
    args = [sys.executable, "-m", "durable_tq", "bench", "--url", url, "--tasks", str(tasks)]
    for scenario in SCENARIOS:
        args += ["--scenario", scenario]
    done = subprocess.run([*args, "--json"], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    return {
        f"{name} / {variant['variant']}": float(variant["throughput"])
        for name, variants in report["scenarios"].items()
        for variant in variants
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, tcp_url, http_url = start_broker(Path(tmp))
        try:
            rounds: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
            scrape_times: list[float] = []
            for _ in range(options.rounds):
                for mode in ("off", "on"):
                    stop = threading.Event()
                    scraper = threading.Thread(
                        target=scrape_every_second, args=(http_url, stop, scrape_times)
                    )
                    if mode == "on":
                        scraper.start()
                    rounds[mode].append(bench(tcp_url, options.tasks))
                    stop.set()
                    if mode == "on":
                        scraper.join()
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{'variant':55} {'no scraper':>12} {'scrape 1/s':>12} {'change':>8}")
    for variant in rounds["off"][0]:
        off = statistics.median(r[variant] for r in rounds["off"])
        on = statistics.median(r[variant] for r in rounds["on"])
        print(f"{variant:55} {off:12,.0f} {on:12,.0f} {100 * (on / off - 1):+7.1f}%")
    if scrape_times:
        scrape_times.sort()
        print(
            f"{len(scrape_times)} scrapes: median {1000 * statistics.median(scrape_times):.1f} ms,"
            f" max {1000 * scrape_times[-1]:.1f} ms"
        )


if __name__ == "__main__":
    main()
