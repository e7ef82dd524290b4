"""Soak: normal producers and workers beside hostile peers, broker RSS sampled every second.

    python benchmarks/soak.py --minutes 10      # or --quick (20 s)

A broker process on loopback with RLIMIT_NOFILE lowered (--nofile, default 512, max_connections
left at 1024 so the fd limit is what runs out). Phases: before (normal clients only, 20 %),
during (plus hostile peers, 60 %), after (normal clients only, 20 %). Normal clients: producers
enqueue and workers claim and ack, each on its own connection, one request at a time; their
round trips are recorded per phase. Hostile peers, bounded in count: non-readers pipelining
`get` of a 512 KB task, pre-hello floods, and connection churn past the fd limit.
Prints one JSON object: peak and end RSS, and the normal clients' p50/p99 per phase.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile


class Recorder:
    def __init__(self) -> None:
        self.phase = "before"
        self.times: dict[str, list[float]] = {"before": [], "during": [], "after": []}
        self.errors = 0
        self.lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self.lock:
            self.times[self.phase].append(seconds)


def _producer(port: int, rec: Recorder, stop: threading.Event, n: int) -> None:
    peer = hostile.Peer(port)
    peer.hello()
    i = 0
    while not stop.is_set():
        i += 1
        began = time.perf_counter()
        reply = peer.request("enqueue", i, queue=f"soak-{n % 4}", payload={"i": i})
        rec.add(time.perf_counter() - began)
        if not reply.get("ok"):
            rec.errors += 1
            time.sleep(0.05)
        time.sleep(0.002)
    peer.close()


def _worker(port: int, rec: Recorder, stop: threading.Event, n: int) -> None:
    peer = hostile.Peer(port)
    peer.hello()
    i = 0
    queues = [f"soak-{q}" for q in range(4)]
    while not stop.is_set():
        i += 1
        began = time.perf_counter()
        reply = peer.request("claim", i, queues=queues, max=10, wait=0.5)
        rec.add(time.perf_counter() - began)
        for task in reply.get("tasks", []):
            i += 1
            began = time.perf_counter()
            peer.request("ack", i, task_id=task["task_id"], lease_token=task["lease_token"])
            rec.add(time.perf_counter() - began)
    peer.close()


def _non_reader(port: int, task_id: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            peer = hostile.Peer(port, rcvbuf=8192)
            peer.hello()
            peer.flood(hostile.line("get", task_id=task_id) * 200, 3.0)
            stop.wait(2.0)
            peer.close()
        except (OSError, ConnectionError, ValueError):
            stop.wait(0.5)


def _pre_hello_flood(port: int, stop: threading.Event) -> None:
    junk = hostile.line("stats") * 1000
    while not stop.is_set():
        try:
            peer = hostile.Peer(port, rcvbuf=4096)
            peer.flood(junk, 3.0)
            peer.close()
        except (OSError, ConnectionError):
            stop.wait(0.5)


def _churn(port: int, count: int, stop: threading.Event) -> None:
    while not stop.is_set():
        sockets = hostile.open_silent(port, count)
        stop.wait(1.0)
        hostile.close_all(sockets)
        stop.wait(0.5)


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if len(values) < 2:
        return {"n": len(values), "p50_ms": None, "p99_ms": None}
    cuts = statistics.quantiles(values, n=100)
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
    }


def soak(seconds: float, nofile: int, workdir: Path) -> dict[str, object]:
    broker = hostile.Broker(workdir, nofile=nofile, hello_timeout=2, write_timeout=5)
    rec = Recorder()
    rss: list[float] = []
    stop_normal, stop_hostile = threading.Event(), threading.Event()
    try:
        owner = hostile.Peer(broker.port)
        owner.hello()
        big = owner.request("enqueue", 2, queue="big", payload="z" * 512_000)["task_id"]
        owner.close()
        normal = [lambda n=n: _producer(broker.port, rec, stop_normal, n) for n in range(4)]
        normal += [lambda n=n: _worker(broker.port, rec, stop_normal, n) for n in range(2)]
        threads = hostile.in_threads(*normal)
        began = time.monotonic()
        hostile_threads: list[threading.Thread] = []
        while (elapsed := time.monotonic() - began) < seconds:
            if not broker.running:
                raise RuntimeError("the broker exited:\n" + broker.log_text()[-3000:])
            rss.append(broker.rss_mb())
            if rec.phase == "before" and elapsed >= 0.2 * seconds:
                rec.phase = "during"
                hostile_threads = hostile.in_threads(
                    *[lambda: _non_reader(broker.port, big, stop_hostile) for _ in range(4)],
                    *[lambda: _pre_hello_flood(broker.port, stop_hostile) for _ in range(4)],
                    lambda: _churn(broker.port, nofile + 200, stop_hostile),
                )
            if rec.phase == "during" and elapsed >= 0.8 * seconds:
                stop_hostile.set()
                for thread in hostile_threads:
                    thread.join(10)
                rec.phase = "after"
            time.sleep(1.0)
        stop_normal.set()
        for thread in threads:
            thread.join(10)
        time.sleep(2.0)
        end_rss = broker.rss_mb()
        alive = broker.running
        code, took = broker.terminate(60)
        accept_pauses = broker.log_text().count("cannot accept connections")
    finally:
        stop_normal.set()
        stop_hostile.set()
        broker.kill()
    return {
        "seconds": seconds,
        "nofile": nofile,
        "broker_alive_at_end": alive,
        "sigterm_exit": code,
        "sigterm_seconds": round(took, 2),
        "accept_pause_bursts_logged": accept_pauses,
        "rss_mb": {"start": round(rss[0], 1), "peak": round(max(rss), 1), "end": round(end_rss, 1)},
        "normal_errors": rec.errors,
        "normal_latency": {phase: _percentiles(v) for phase, v in rec.times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="20 seconds")
    parser.add_argument("--nofile", type=int, default=512)
    args = parser.parse_args()
    seconds = 20.0 if args.quick else args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="durable_tq-soak-") as folder:
        print(json.dumps(soak(seconds, args.nofile, Path(folder)), indent=2))


if __name__ == "__main__":
    main()
