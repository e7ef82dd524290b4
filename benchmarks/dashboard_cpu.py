"""What one open dashboard costs the broker: its CPU time while a real headless Chromium keeps
a dashboard page open (polling as it does for people), against the same time with nobody
looking. (docs/dashboard.md, "What it costs the broker")

Starts ``durable-tq serve`` (HTTP on a free loopback port), fills it with a few queues and
``--tasks`` tasks (some dead, some scheduled) and one registered worker process, then for each
phase reads the broker process's CPU time (user + system) around ``--seconds`` of: nothing
(the baseline: the sweeper, the worker's heartbeats and long-polls), and each page open in
Chromium. Phases alternate over ``--rounds`` so that the load of a shared machine hits all
alike; it prints the medians.

    .venv/bin/python benchmarks/dashboard_cpu.py [--seconds 60] [--rounds 1] [--tasks 2000]

Needs the system's Chromium (``apt-get install chromium``) and the test extra (playwright,
psutil).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
from playwright.sync_api import sync_playwright

from durable_tq import Client

PAGES = {"overview": "#/", "queue": "#/queues/emails", "workers": "#/workers"}
WORKER_APP = """
from durable_tq import Worker

worker = Worker(concurrency=4, worker_id="bench-worker")


@worker.task("emails")
def send(payload):
    return None
"""


def start_broker(folder: Path) -> tuple[subprocess.Popen[str], str, str]:
    command = [
        sys.executable, "-m", "durable_tq", "serve", "--port", "0", "--http", "127.0.0.1:0",
        "--db", str(folder / "dashboard.db"), "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=folder)
    assert proc.stdout is not None
    tcp = re.search(r"listening on (\S+)", proc.stdout.readline())
    http = re.search(r"HTTP API on (\S+)", proc.stdout.readline())
    assert tcp and http, "the broker did not say where it listens"
    return proc, tcp[1], http[1]


def start_worker(folder: Path, url: str) -> subprocess.Popen[bytes]:
    (folder / "bench_app.py").write_text(textwrap.dedent(WORKER_APP))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    env["PYTHONPATH"] = str(folder)
    return subprocess.Popen(
        [sys.executable, "-m", "durable_tq", "worker", "bench_app:worker", "--url", url],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def fill(url: str, tasks: int) -> None:
    with Client.from_url(url) as client:
        for start in range(0, tasks, 500):
            batch = [
                {"queue": ("reports", "invoices")[n % 2], "payload": {"n": n}}
                for n in range(start, min(tasks, start + 500))
            ]
            client.enqueue_many(batch)
        client.pause("invoices")
        for n in range(50):
            client.enqueue("reports", {"n": n}, delay=3600)
        client.enqueue_many([{"queue": "emails", "payload": {"n": n}} for n in range(200)])


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def measure(broker: psutil.Process, seconds: float, page: Any | None, url: str) -> float:
    if page is not None:
        page.goto(url)
        page.wait_for_selector("h1")
        time.sleep(2)  # the page's first requests are not the steady cost
    before = cpu_seconds(broker)
    time.sleep(seconds)
    used = cpu_seconds(broker) - before
    if page is not None:
        page.goto("about:blank")
    return used


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    options = parser.parse_args()
    results: dict[str, list[float]] = {"nobody looking": [], **{name: [] for name in PAGES}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        proc, tcp_url, http_url = start_broker(folder)
        worker = start_worker(folder, tcp_url)
        try:
            fill(tcp_url, options.tasks)
            broker = psutil.Process(proc.pid)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=options.chromium)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                for _ in range(options.rounds):
                    results["nobody looking"].append(
                        measure(broker, options.seconds, None, http_url)
                    )
                    for name, fragment in PAGES.items():
                        used = measure(broker, options.seconds, page, f"{http_url}/{fragment}")
                        results[name].append(used)
                browser.close()
        finally:
            worker.terminate()
            worker.wait(30)
            proc.terminate()
            proc.wait(30)
    baseline = statistics.median(results["nobody looking"])
    print(f"broker CPU over {options.seconds:g} s (median of {options.rounds}):")
    print(f"{'':24} {'CPU s':>8} {'% of a core':>12} {'added by the page':>18}")
    for name, values in results.items():
        used = statistics.median(values)
        added = used - baseline
        extra = (
            ""
            if name == "nobody looking"
            else f"{added:+8.2f} s ({100 * added / options.seconds:+.2f} %)"
        )
        print(f"{name:24} {used:8.2f} {100 * used / options.seconds:11.2f}% {extra:>18}")


if __name__ == "__main__":
    main()
