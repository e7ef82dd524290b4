"""The torture harness: the broker and child processes, the chaos loop of kills and
restarts, the run and its report."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from durable_tq.tools.torture.checker import (
    Check,
    History,
    StoredTask,
    check_history,
    examples,
    read_database,
    read_history,
)
from durable_tq.tools.torture.children import (
    HOST,
    MIN_SERVING,
    QUEUE,
    SCHEDULES,
    STARTUP_KILL_SHARE,
    STOP_TIMEOUT,
    TICK,
    TICKS,
    Progress,
)
from durable_tq.tools.torture.flows import (
    PROBE_INTERVAL,
    BrokerLife,
    Probe,
    check_dependencies,
    check_schedules,
    check_waits,
    kill_times,
    read_schedules,
)
from durable_tq.wire.schema import PROTOCOL_VERSION

log = logging.getLogger("durable_tq.tools.torture")

# --- the harness --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TortureConfig:
    """How long and how hard to torture. Durations in seconds."""

    duration: float = 120.0
    kills: int = 30
    #: SIGKILLs of consumer processes; None: half of ``kills``.
    consumer_kills: int | None = None
    producers: int = 2
    consumers: int = 3
    seed: int | None = None
    #: Where the database, histories and logs go; None: a fresh temporary folder.
    workdir: Path | None = None
    #: Enqueues per second per producer process (0: as fast as it can).
    rate: float = 50.0
    #: Consumers that claim and settle through ``settle`` (batches, claims in the same
    #: transaction); None: half of them, rounded up. The rest use claim/ack/fail/release.
    settle_consumers: int | None = None
    #: Concurrent requests per child process.
    lanes: int = 4
    lease: float = 2.0
    synchronous: str = "FULL"
    drain_timeout: float = 120.0
    start_timeout: float = 30.0
    #: A PostgreSQL URL: run ``brokers`` brokers on that database (``tools.torture.fleet``).
    db_url: str | None = None
    brokers: int = 1

    @property
    def settle_consumer_count(self) -> int:
        if self.settle_consumers is None:
            return (self.consumers + 1) // 2
        return min(self.settle_consumers, self.consumers)

    @property
    def consumer_kill_count(self) -> int:
        return self.kills // 2 if self.consumer_kills is None else self.consumer_kills


@dataclass
class TortureReport:
    seed: int
    config: dict[str, Any]
    counts: dict[str, Any]
    checks: list[Check]
    workdir: str

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "seed": self.seed,
            "config": self.config,
            "counts": self.counts,
            "checks": [
                {"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks
            ],
            "workdir": self.workdir,
        }


def free_port() -> int:
    """A port nobody listens on now (chosen once; the broker comes back on it after a kill)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def integrity_check(db_path: Path) -> str:
    """``PRAGMA integrity_check`` on a read-only connection ("ok" when the file is sound).

    Read-only, so it leaves the write-ahead log exactly as the crash left it for the broker's
    own recovery to find.
    """
    if not db_path.exists():
        return "ok"
    try:
        conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        return f"cannot open: {exc}"
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.Error as exc:
        return f"failed: {exc}"
    finally:
        conn.close()
    return "; ".join(str(row[0]) for row in rows[:10])


def broker_request(
    port: int, op: str, arguments: dict[str, Any] | None = None, timeout: float = 2.0
) -> dict[str, Any] | None:
    """One request over a fresh raw connection; its ok reply, None when there is none."""
    request = json.dumps({"id": 2, "op": op, **(arguments or {})}).encode()
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            with sock.makefile("rwb") as stream:
                stream.write(
                    b'{"id":1,"op":"hello","version":%d,"client":"torture-probe"}\n'
                    % PROTOCOL_VERSION
                )
                stream.write(request + b'\n{"id":3,"op":"bye"}\n')
                stream.flush()
                replies = [json.loads(stream.readline()) for _ in range(2)]
    except (OSError, ValueError):
        return None
    reply = replies[1]
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        return None
    return reply


def broker_stats(port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """``stats`` over a fresh raw connection; None when the broker does not answer."""
    return broker_request(port, "stats", timeout=timeout)


def live_tasks(stats: dict[str, Any]) -> int:
    counts = stats.get("queues", {}).get(QUEUE, {})
    live = ("waiting", "scheduled", "queued", "leased")
    return sum(int(counts.get(state, 0)) for state in live)


#: Where the prober's writes go (never claimed).
PROBES = "torture-probe"


class Prober:
    """A durable write (an enqueue) every PROBE_INTERVAL s, one at a time, from a thread, and
    when each was answered: where the broker was seen working (flows.responsive)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.probes: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="torture prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop it (if it runs) and wait for the write in flight."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.time()
            args = {"queue": PROBES, "payload": len(self.probes)}
            reply = broker_request(self.port, "enqueue", args, timeout=2.0)
            self.probes.append(Probe(sent, time.time() if reply is not None else None))
            self._stop.wait(PROBE_INTERVAL)


class _Child:
    """One child process (broker, producer or consumer) and how it ended."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.killed = False

    def start(self) -> None:
        with (self.cwd / f"{self.name}.err").open("ab") as stderr:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.cwd,
                env=self.env,
            )
        self.started_at = time.monotonic()
        self.killed = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def died_on_its_own(self) -> int | None:
        """The exit code if it ended without being killed or stopped by us."""
        if self.proc is None or self.killed:
            return None
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc is not None:
            self.killed = True
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; the exit code, or None when it had to be SIGKILLed."""
        if self.proc is None:
            return 0
        self.killed = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


@dataclass
class _Tally:
    broker_kills: int = 0
    consumer_kills: int = 0
    restarts: int = 0
    recoveries: list[float] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    drained: bool = False
    drain_seconds: float = 0.0
    final_stop: str = "not reached"
    #: Every broker process: when it started, first answered, and ended.
    lives: list[BrokerLife] = field(default_factory=list)


class _Torture:
    """One run of the harness: its processes, its schedule and its tally."""

    def __init__(self, config: TortureConfig, workdir: Path, seed: int, progress: Progress) -> None:
        self.config = config
        self.workdir = workdir
        self.seed = seed
        self.say = progress
        self.rng = random.Random(seed)
        self.port = free_port()
        self.db_path = workdir / "torture.db"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
        self.tally = _Tally()
        self.prober = Prober(self.port)
        self.broker = self._broker()
        self.broker_ready = False
        self.broker_restarted = False
        self.chaos_on = False
        self.chaos_end = 0.0
        self.next_broker_kill: float | None = None
        self.producers = [self._producer(n) for n in range(config.producers)]
        self.consumers: list[_Child] = [self._consumer(n, 0) for n in range(config.consumers)]
        self.retired: list[_Child] = []

    # --- the processes ---

    def _broker(self) -> _Child:
        env = dict(self.env)
        env.update(
            DURABLE_TQ_SWEEP_INTERVAL="0.2",
            DURABLE_TQ_HEARTBEAT_INTERVAL="1",
            # Long: a lease ends by expiry or by its holder, so overlaps are exact to check.
            DURABLE_TQ_WORKER_TIMEOUT="30",
            DURABLE_TQ_RETENTION="0",
            DURABLE_TQ_SYNCHRONOUS=self.config.synchronous,
            DURABLE_TQ_MAX_CONNECTIONS="4096",
        )
        command = [
            sys.executable, "-m", "durable_tq", "serve",
            "--host", HOST, "--port", str(self.port), "--db", str(self.db_path),
        ]  # fmt: skip
        return _Child("broker", command, env, self.workdir)

    def _child_command(self, role: str, name: str, seed: str) -> list[str]:
        return [
            sys.executable, "-m", "durable_tq.tools.torture", role,
            "--port", str(self.port), "--log", str(self.workdir / f"{name}.history"),
            "--name", name, "--seed", seed, "--concurrency", str(self.config.lanes),
            "--rate", str(self.config.rate), "--lease", str(self.config.lease),
        ]  # fmt: skip

    def _producer(self, number: int) -> _Child:
        name = f"producer{number}"
        return _Child(name, self._child_command("producer", name, f"{self.seed}/p{number}"),
                      self.env, self.workdir)  # fmt: skip

    def _consumer(self, number: int, generation: int) -> _Child:
        settle = number < self.config.settle_consumer_count
        name = f"consumer{number}{'s' if settle else ''}-g{generation}"
        seed = f"{self.seed}/c{number}/{generation}"
        command = self._child_command("consumer", name, seed)
        if settle:
            command.append("--settle")
        return _Child(name, command, self.env, self.workdir)

    def _start_broker(self, *, restart: bool = True) -> None:
        self.tally.lives.append(BrokerLife(started=time.time()))
        self.broker.start()
        self.broker_ready = False
        self.broker_restarted = restart
        self._plan_broker_kill(starting=True)

    def _watch_broker(self) -> None:
        """Note when a (re)started broker first answers; restart it if it died by itself."""
        code = self.broker.died_on_its_own()
        if code is not None:
            self._broker_ended("died")
            self.tally.unexpected_exits.append(f"broker exited with {code}")
            self.say(f"broker exited on its own with code {code}; restarting")
            self._check_file("after the broker exited")
            self._start_broker()
            return
        if self.broker_ready:
            return
        if broker_stats(self.port, timeout=2.0) is not None:
            self.tally.lives[-1].ready = time.time()
            self.broker_ready = True
            if self.broker_restarted:
                self.tally.recoveries.append(time.monotonic() - self.broker.started_at)
            if self.next_broker_kill is None:
                self._plan_broker_kill(starting=False)
        elif time.monotonic() - self.broker.started_at > self.config.start_timeout:
            self.tally.unexpected_exits.append("broker did not answer within start_timeout")
            self.say("broker does not answer; killing and restarting it")
            self._broker_ended("killed")
            self.broker.kill()
            self._check_file("after a broker that did not answer")
            self._start_broker()

    def _watch_children(self) -> None:
        for index, child in enumerate(self.consumers):
            code = child.died_on_its_own()
            if code is not None:
                self.tally.unexpected_exits.append(f"{child.name} exited with {code}")
                self._replace_consumer(index)
        for child in self.producers:
            code = child.died_on_its_own()
            if code is not None:
                self.tally.unexpected_exits.append(f"{child.name} exited with {code}")
                child.start()

    def _replace_consumer(self, index: int) -> None:
        old = self.consumers[index]
        self.retired.append(old)
        generation = int(old.name.rsplit("-g", 1)[1]) + 1
        self.consumers[index] = self._consumer(index, generation)
        self.consumers[index].start()

    def _register_schedules(self) -> None:
        """Interval schedules into TICKS; consumers claim their tasks with the others, so a
        slot fired twice would show as a second task (a live one would hide it)."""
        for name, every in SCHEDULES.items():
            spec = {"name": name, "queue": TICKS, "every": every, "missed": "latest"}
            if broker_request(self.port, "schedule_upsert", spec, timeout=10.0) is None:
                self.tally.unexpected_exits.append(f"schedule {name} could not be registered")

    def _check_file(self, when: str) -> None:
        result = integrity_check(self.db_path)
        self.tally.integrity.append(result)
        if result != "ok":
            self.say(f"integrity_check {when}: {result}")

    # --- the chaos ---

    def _plan_broker_kill(self, *, starting: bool) -> None:
        """Pick the moment of the next broker kill: mostly a while after it serves again,
        sometimes while it is still starting up (recovering the file)."""
        left = self.config.kills - self.tally.broker_kills
        if not self.chaos_on or left <= 0:
            self.next_broker_kill = None
            return
        now = time.monotonic()
        if starting:
            if self.rng.random() < STARTUP_KILL_SHARE:
                self.next_broker_kill = now + self.rng.uniform(0.05, 1.0)
            else:
                self.next_broker_kill = None  # planned once it answers
            return
        # Spread the kills left over the time left, less the time each restart takes.
        recovery = self.tally.recoveries[-1] if self.tally.recoveries else 1.0
        mean_gap = max(MIN_SERVING, (self.chaos_end - now) / left - recovery)
        self.next_broker_kill = now + self.rng.uniform(0.1, 2 * mean_gap)

    def _broker_ended(self, how: str) -> None:
        life = self.tally.lives[-1]
        life.ended, life.how = time.time(), how

    def _kill_broker(self) -> None:
        self._broker_ended("killed")  # before the kill: it surely served until now
        self.broker.kill()
        self.tally.broker_kills += 1
        state = "serving" if self.broker_ready else "starting up"
        self._check_file(f"after kill #{self.tally.broker_kills}")
        self._start_broker()
        self.tally.restarts += 1
        self.say(
            f"broker SIGKILLed while {state} ({self.tally.broker_kills}/{self.config.kills}); "
            f"integrity {self.tally.integrity[-1]}; restarted"
        )

    def _kill_consumer(self) -> None:
        index = self.rng.randrange(len(self.consumers))
        self.consumers[index].kill()
        self.tally.consumer_kills += 1
        self._replace_consumer(index)

    def _await_broker(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout + 1.0
        while not self.broker_ready and time.monotonic() < deadline:
            self._watch_broker()
            time.sleep(TICK)

    def _await_load(self) -> None:
        """Wait (bounded) until every producer and consumer has been told something, so the
        first kill lands under load rather than while the children are still importing."""
        deadline = time.monotonic() + self.config.start_timeout
        histories = [self.workdir / f"{c.name}.history" for c in [*self.producers, *self.consumers]]
        while time.monotonic() < deadline:
            if all(path.exists() and path.stat().st_size > 0 for path in histories):
                return
            self._watch_broker()
            self._watch_children()
            time.sleep(0.1)
        self.say("not every child got going within start_timeout; starting the chaos anyway")

    def chaos(self) -> None:
        """Start everything, then kill the broker and consumers until the kills are done."""
        config = self.config
        self._start_broker(restart=False)
        self._await_broker()
        self._register_schedules()
        self.prober.start()
        for child in [*self.producers, *self.consumers]:
            child.start()
        self._await_load()
        began = time.monotonic()
        self.chaos_end = began + config.duration
        self.chaos_on = True
        self._plan_broker_kill(starting=False)
        consumer_kills = sorted(
            began + self.rng.uniform(min(0.5, config.duration / 4), config.duration)
            for _ in range(config.consumer_kill_count if config.consumers else 0)
        )
        # Kills wait for the broker to serve between them; give up on the rest this late.
        give_up = self.chaos_end + config.duration + 60.0
        self.say(f"chaos for about {config.duration:g} s: {config.kills} broker kills")
        while True:
            now = time.monotonic()
            if self.next_broker_kill is not None and now >= self.next_broker_kill:
                self._kill_broker()
            while consumer_kills and consumer_kills[0] <= now:
                consumer_kills.pop(0)
                self._kill_consumer()
            done = self.tally.broker_kills >= config.kills and not consumer_kills
            if (now >= self.chaos_end and done) or now >= give_up:
                break
            self._watch_broker()
            self._watch_children()
            time.sleep(TICK)
        self.chaos_on = False

    # --- the end ---

    def drain(self) -> None:
        """Stop the producers, let the consumers finish everything, stop all in order."""
        self.say("chaos over: stopping producers, draining the queue")
        for child in self.producers:
            self._stop_child(child)
        began = time.monotonic()
        zero_since: float | None = None
        while time.monotonic() - began < self.config.drain_timeout:
            self._watch_broker()
            self._watch_children()
            stats = broker_stats(self.port) if self.broker_ready else None
            if stats is not None and live_tasks(stats) == 0:
                zero_since = zero_since or time.monotonic()
                if time.monotonic() - zero_since >= 0.5:
                    self.tally.drained = True
                    break
            else:
                zero_since = None
            time.sleep(0.25)
        self.tally.drain_seconds = time.monotonic() - began
        for child in self.consumers:
            self._stop_child(child)
        self.prober.stop()
        self._broker_ended("stopped")
        code = self.broker.stop()
        self.tally.final_stop = "clean (exit 0)" if code == 0 else f"exit code {code}"
        self._check_file("after the final stop")

    def _stop_child(self, child: _Child) -> None:
        # -SIGTERM: the signal came before the child had its handler in place (just started).
        code = child.stop()
        if code not in (0, -signal.SIGTERM):
            self.tally.unexpected_exits.append(f"{child.name} did not stop cleanly ({code})")

    def kill_everything(self) -> None:
        self.prober.stop()
        for child in [self.broker, *self.producers, *self.consumers]:
            if child.running:
                child.kill()


def _process_checks(tally: _Tally) -> list[Check]:
    bad = [r for r in tally.integrity if r != "ok"]
    return [
        Check(
            "integrity_check ok after every kill and at the end",
            not bad,
            f"{len(tally.integrity)} checks, {len(bad)} failed"
            + (f": {examples(bad)}" if bad else ""),
        ),
        Check(
            "queue drained after the chaos",
            tally.drained,
            f"in {tally.drain_seconds:.1f} s" if tally.drained else "timed out",
        ),
        Check(
            "processes ended only when killed or stopped",
            not tally.unexpected_exits and tally.final_stop.startswith("clean"),
            "; ".join([*tally.unexpected_exits[:5], f"broker final stop: {tally.final_stop}"]),
        ),
    ]


def _counts(tally: _Tally, history: History, stored: dict[int, StoredTask]) -> dict[str, Any]:
    recoveries = tally.recoveries
    outcomes = history.outcomes
    known = ("enqueue ok", "enqueue unknown")
    return {
        "broker kills (SIGKILL)": tally.broker_kills,
        "consumer kills (SIGKILL)": tally.consumer_kills,
        "enqueues ok": outcomes["enqueue ok"],
        "enqueues unknown (no reply)": outcomes["enqueue unknown"],
        "enqueues refused (error reply)": sum(
            n for k, n in outcomes.items() if k.startswith("enqueue ") and k not in known
        ),
        "tasks stored": sum(1 for task in stored.values() if task.queue == QUEUE),
        "dependents stored (after)": sum(1 for task in stored.values() if task.parents),
        "doomed tasks stored (failed for good)": sum(1 for task in stored.values() if task.doomed),
        "dependents cancelled": sum(
            1 for task in stored.values() if task.parents and task.state == "cancelled"
        ),
        "claims": history.claims,
        "redeliveries (attempt > 1)": history.redeliveries,
        "acks ok": outcomes["ack ok"],
        "acks unknown (no reply)": outcomes["ack unknown"],
        "acks lease_lost": outcomes["ack lease_lost"],
        "fails ok": outcomes["fail ok"],
        "releases ok": outcomes["release ok"],
        "extends ok": outcomes["extend ok"],
        "leases abandoned": outcomes["abandon -"],
        "late acks refused": outcomes["late_ack lease_lost"],
        "settles ok": outcomes["settle ok"],
        "settles unknown (no reply)": outcomes["settle unknown"],
        "settle items sent": history.settle_items,
        "settle items ok": sum(n for k, n in history.via_settle.items() if k.endswith(" ok")),
        "settle items lease_lost": sum(
            n for k, n in history.via_settle.items() if k.endswith(" lease_lost")
        ),
        "acks ok via settle": history.via_settle["ack ok"],
        "late acks refused via settle": history.via_settle["late_ack lease_lost"],
        "restarts measured": len(recoveries),
        "max recovery s (restart to first reply)": round(max(recoveries, default=0.0), 3),
        "mean recovery s": round(sum(recoveries) / len(recoveries), 3) if recoveries else 0.0,
        "drain s": round(tally.drain_seconds, 1),
        "malformed history lines": history.malformed,
    }


def run_torture(config: TortureConfig, progress: Progress | None = None) -> TortureReport:
    """Run the whole torture test; see the module docstring. Never raises on a failed check."""
    say = progress or (lambda message: log.info("%s", message))
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(1 << 31)
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="durable_tq-torture-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"seed {seed}, working in {workdir}")
    run = _Torture(config, workdir, seed, say)
    began = time.monotonic()
    try:
        run.chaos()
        run.drain()
    finally:
        run.kill_everything()
    lives, probes = run.tally.lives, run.prober.probes
    (workdir / "broker.lives").write_text("".join(life.to_json() + "\n" for life in lives))
    (workdir / "broker.probes").write_text(
        "".join(f"{p.sent:.6f} {'-' if p.answered is None else f'{p.answered:.6f}'}\n"
                for p in probes)
    )  # fmt: skip
    history = read_history(workdir)
    try:
        stored = read_database(run.db_path)
        schedules, firings = read_schedules(run.db_path)
    except sqlite3.Error as exc:
        stored, schedules, firings = {}, {}, []
        run.tally.integrity.append(f"final read failed: {exc}")
    wait_check, wait_counts = check_waits(history, stored, kill_times(lives))
    schedule_checks, schedule_counts = check_schedules(schedules, firings, lives, probes)
    checks = [
        *check_history(history, stored),
        *check_dependencies(history, stored),
        wait_check,
        *schedule_checks,
        *_process_checks(run.tally),
    ]
    counts = {**_counts(run.tally, history, stored), **wait_counts, **schedule_counts}
    counts["wall s"] = round(time.monotonic() - began, 1)
    settings = {
        "duration": config.duration,
        "kills": config.kills,
        "consumer_kills": config.consumer_kill_count,
        "producers": config.producers,
        "consumers": config.consumers,
        "settle_consumers": config.settle_consumer_count,
        "rate": config.rate,
        "lanes": config.lanes,
        "lease": config.lease,
        "synchronous": config.synchronous,
    }
    return TortureReport(seed, settings, counts, checks, str(workdir))


def remove_workdir(report: TortureReport) -> None:
    shutil.rmtree(report.workdir, ignore_errors=True)


def render(report: TortureReport, out: TextIO | None = None, *, kept: bool = True) -> None:
    """Print the report as two rich tables (checks, counts) and the verdict."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out)
    checks = Table(title=f"durable_tq torture: seed {report.seed}", title_justify="left")
    checks.add_column("check")
    checks.add_column("result")
    checks.add_column("detail")
    for check in report.checks:
        verdict = "[green]PASS[/]" if check.passed else "[bold red]FAIL[/]"
        checks.add_row(check.name, verdict, check.detail)
    counts = Table(title="counts", title_justify="left")
    counts.add_column("what")
    counts.add_column("value", justify="right")
    settings = {f"setting {name}": value for name, value in report.config.items()}
    for name, value in {**report.counts, **settings}.items():
        counts.add_row(name, str(value))
    console.print(checks)
    console.print(counts)
    verdict = "[green]all checks passed[/]" if report.passed else "[bold red]CHECKS FAILED[/]"
    console.print(verdict + (f" (files kept in {report.workdir})" if kept else ""))
