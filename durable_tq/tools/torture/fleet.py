"""The torture test on PostgreSQL: several brokers on one database, one SIGKILLed at a time.

:func:`run_fleet_torture` runs the load of :func:`~durable_tq.tools.torture.harness.run_torture`
against ``brokers`` brokers (``python -m durable_tq serve --db postgresql://...``) sharing one
database instead of one broker on a file. Producers and consumers are spread over the brokers;
each child knows every broker's port and, when its connection breaks, leaves what was in
flight and moves to the next broker. The harness SIGKILLs one broker at a time (the first
time, and then half the time, the one holding the sweep lock; now and then while it starts
up), keeps it down a moment, and starts it again on its port. Consumers are SIGKILLed too.

Then the queue is drained and the same checker holds the histories against the database (no
ok'd write lost, every ok'd task succeeded, no task acked twice or handed out while leased...).
In place of SQLite's ``integrity_check`` it checks what several brokers add: the others
served while one was down, and the sweeps were taken over every time the sweeping broker was
killed (which broker holds the sweep lock is read from ``pg_locks``; each session's
``application_name`` carries its broker's pid).

The database must not hold torture tasks from an earlier run; it is left as the run left it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from durable_tq import errors
from durable_tq.tools.torture.checker import (
    Check,
    StoredTask,
    check_history,
    examples,
    read_history,
    stored_tasks,
)
from durable_tq.tools.torture.children import (
    HOST,
    MIN_SERVING,
    QUEUE,
    STARTUP_KILL_SHARE,
    TICK,
    TICKS,
    Progress,
)
from durable_tq.tools.torture.flows import check_dependencies, check_waits
from durable_tq.tools.torture.harness import (
    TortureConfig,
    TortureReport,
    _Child,
    _counts,
    _process_checks,
    _Tally,
    broker_stats,
    free_port,
    live_tasks,
)

log = logging.getLogger("durable_tq.tools.torture")

#: How often the harness asks PostgreSQL which broker holds the sweep lock (seconds).
SWEEP_SAMPLE = 0.1
#: A killed broker stays down this long (uniform, seconds) before it is started again.
DOWNTIME = (0.1, 1.5)
#: Bound on a survivor's ``stats`` reply while another broker is down (seconds).
SURVIVOR_TIMEOUT = 10.0

#: The session holding the sweep lock (``backends.postgres.store.SWEEP_LOCK``, a bigint key:
#: classid is its high half, objid its low half) and its application_name.
SWEEP_HOLDER = """
SELECT a.application_name
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid = %(high)s::oid AND l.objid = %(low)s::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def read_postgres(url: str) -> dict[int, StoredTask]:
    """Every task of the torture queue and of the schedules' queue (what
    ``checker.read_database`` reads from SQLite)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, state, payload, lease_token, last_error, result, queue FROM tasks "
            "WHERE queue IN (%s, %s)",
            (QUEUE, TICKS),
        ).fetchall()
    return stored_tasks(rows)


def _fixed_port(taken: list[int]) -> int:
    """A free port for a broker to come back on, below the kernel's range of ephemeral ports:
    no outgoing connection can be given it while its broker is down (a client retrying a
    port in that range may even get the very port and connect to itself)."""
    low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randrange(max(1024, low - 12000), low) if low > 2048 else free_port()
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        return port
    return free_port()


def _holder_pid(application_name: str | None) -> int | None:
    """The broker pid in an application_name such as ``durable_tq sweep pid=1234``."""
    if application_name is None or "pid=" not in application_name:
        return None
    try:
        return int(application_name.rsplit("pid=", 1)[1])
    except ValueError:
        return None


def _refuse_used_database(url: str) -> None:
    """The checks need a torture queue of this run only: refuse a database holding one."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT to_regclass('tasks') IS NOT NULL").fetchone()
            used = bool(exists and exists[0]) and (
                conn.execute("SELECT 1 FROM tasks WHERE queue = %s LIMIT 1", (QUEUE,)).fetchone()
                is not None
            )
    except psycopg.Error as exc:
        raise errors.ConfigError(f"cannot use {url} for the torture test: {exc}") from exc
    if used:
        raise errors.ConfigError(
            f"the database already holds tasks of the queue {QUEUE!r} (an earlier run?); "
            "give the torture test an empty database (createdb ..., then --db .../NAME)"
        )


@dataclass
class _Member:
    """One broker of the fleet: its fixed port, its process, and whether it serves."""

    number: int
    port: int
    child: _Child
    ready: bool = False
    restarted: bool = False
    #: Killed: started again at this moment (``time.monotonic()``).
    down_until: float | None = None


@dataclass(frozen=True)
class _Kill:
    at: float  # time.time()
    pid: int
    member: int
    serving: bool


@dataclass
class _FleetTally:
    #: (time.time(), pid of the broker holding the sweep lock or None), at each change.
    sweepers: list[tuple[float, int | None]] = field(default_factory=list)
    kills: list[_Kill] = field(default_factory=list)
    #: Whether a survivor answered ``stats`` right after each kill.
    survivors: list[bool] = field(default_factory=list)


class _Fleet:
    """One run: the brokers, the children, the kill schedule and the tallies."""

    def __init__(
        self, config: TortureConfig, url: str, workdir: Path, seed: int, say: Progress
    ) -> None:
        self.config = config
        self.url = url
        self.workdir = workdir
        self.seed = seed
        self.say = say
        self.rng = random.Random(seed)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
        self.tally = _Tally()
        self.fleet = _FleetTally()
        ports: list[int] = []
        while len(ports) < config.brokers:
            ports.append(_fixed_port(ports))
        self.members = [_Member(n, port, self._broker(n, port)) for n, port in enumerate(ports)]
        self.chaos_on = False
        self.chaos_end = 0.0
        self.next_kill: float | None = None
        self.kill_target: _Member | None = None
        self.producers = [self._producer(n) for n in range(config.producers)]
        self.consumers = [self._consumer(n, 0) for n in range(config.consumers)]
        self.retired: list[_Child] = []
        self._sampler: Any = None
        self._sampled_at = 0.0

    # --- the processes ---

    def _broker(self, number: int, port: int) -> _Child:
        env = dict(self.env)
        env.update(
            DURABLE_TQ_SWEEP_INTERVAL="0.2",
            DURABLE_TQ_HEARTBEAT_INTERVAL="1",
            DURABLE_TQ_WORKER_TIMEOUT="30",
            DURABLE_TQ_RETENTION="0",
            DURABLE_TQ_SYNCHRONOUS=self.config.synchronous,
            DURABLE_TQ_MAX_CONNECTIONS="4096",
        )
        command = [
            sys.executable, "-m", "durable_tq", "serve", "--no-http",
            "--host", HOST, "--port", str(port), "--db", self.url,
        ]  # fmt: skip
        return _Child(f"broker{number}", command, env, self.workdir)

    def _child_command(self, role: str, name: str, seed: str, first: int) -> list[str]:
        """A child that starts on broker ``first`` and moves on round the others."""
        ports = [m.port for m in self.members[first:] + self.members[:first]]
        command = [
            sys.executable, "-m", "durable_tq.tools.torture", role,
            "--log", str(self.workdir / f"{name}.history"),
            "--name", name, "--seed", seed, "--concurrency", str(self.config.lanes),
            "--rate", str(self.config.rate), "--lease", str(self.config.lease),
        ]  # fmt: skip
        for port in ports:
            command += ["--port", str(port)]
        return command

    def _producer(self, number: int) -> _Child:
        name = f"producer{number}"
        first = number % len(self.members)
        command = self._child_command("producer", name, f"{self.seed}/p{number}", first)
        return _Child(name, command, self.env, self.workdir)

    def _consumer(self, number: int, generation: int) -> _Child:
        settle = number < self.config.settle_consumer_count
        name = f"consumer{number}{'s' if settle else ''}-g{generation}"
        # Consumers start one broker on from the producers, so work crosses brokers.
        first = (number + 1 + generation) % len(self.members)
        command = self._child_command(
            "consumer", name, f"{self.seed}/c{number}/{generation}", first
        )
        if settle:
            command.append("--settle")
        return _Child(name, command, self.env, self.workdir)

    def _start(self, member: _Member, *, restart: bool) -> None:
        member.child.start()
        member.ready = False
        member.restarted = restart
        member.down_until = None
        if restart:
            self._plan_kill(member)

    def _watch_member(self, member: _Member) -> None:
        """Start a killed broker when its downtime is over; note when a started one answers;
        restart one that died by itself or does not answer."""
        now = time.monotonic()
        if member.child.proc is None:  # not started yet
            return
        if member.down_until is not None:
            if now >= member.down_until:
                self._start(member, restart=True)
                self.tally.restarts += 1
            return
        code = member.child.died_on_its_own()
        if code is not None:
            self.tally.unexpected_exits.append(f"{member.child.name} exited with {code}")
            self.say(f"{member.child.name} exited on its own with code {code}; restarting")
            self._start(member, restart=True)
            return
        if member.ready:
            return
        if broker_stats(member.port, timeout=2.0) is not None:
            member.ready = True
            if member.restarted:
                self.tally.recoveries.append(now - member.child.started_at)
        elif now - member.child.started_at > self.config.start_timeout:
            self.tally.unexpected_exits.append(f"{member.child.name} did not answer in time")
            self.say(f"{member.child.name} does not answer; killing and restarting it")
            member.child.kill()
            self._start(member, restart=True)

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

    def _tick(self) -> None:
        for member in self.members:
            self._watch_member(member)
        self._watch_children()
        self._sample_sweeper()

    # --- who sweeps ---

    def _sample_sweeper(self) -> None:
        """Note which broker holds the sweep lock, when it changed."""
        now = time.monotonic()
        if now - self._sampled_at < SWEEP_SAMPLE:
            return
        self._sampled_at = now
        import psycopg

        from durable_tq.backends.postgres.store import SWEEP_LOCK

        try:
            if self._sampler is None or self._sampler.closed:
                self._sampler = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            halves = {"high": SWEEP_LOCK >> 32, "low": SWEEP_LOCK & 0xFFFFFFFF}
            row = self._sampler.execute(SWEEP_HOLDER, halves).fetchone()
        except psycopg.Error as exc:
            log.warning("could not read the sweep lock's holder: %s", exc)
            self._sampler = None
            return
        pid = _holder_pid(row[0] if row else None)
        sweepers = self.fleet.sweepers
        if not sweepers or sweepers[-1][1] != pid:
            sweepers.append((time.time(), pid))

    def _sweeping_member(self) -> _Member | None:
        pid = self.fleet.sweepers[-1][1] if self.fleet.sweepers else None
        for member in self.members:
            proc = member.child.proc
            if member.ready and proc is not None and proc.pid == pid:
                return member
        return None

    # --- the chaos ---

    def _plan_kill(self, starting: _Member | None = None) -> None:
        """The moment of the next kill: now and then while ``starting`` (just restarted)
        starts up, else a while after every broker serves again."""
        left = self.config.kills - self.tally.broker_kills
        self.kill_target = None
        if not self.chaos_on or left <= 0:
            self.next_kill = None
            return
        now = time.monotonic()
        if starting is not None:
            if self.rng.random() < STARTUP_KILL_SHARE:
                self.next_kill = now + self.rng.uniform(0.05, 1.0)
                self.kill_target = starting
            else:
                self.next_kill = None  # planned once every broker answers
            return
        recovery = self.tally.recoveries[-1] if self.tally.recoveries else 1.0
        mean_gap = max(MIN_SERVING, (self.chaos_end - now) / left - recovery)
        self.next_kill = now + self.rng.uniform(0.1, 2 * mean_gap)

    def _victim(self) -> _Member:
        """The first kill, then half of them, hit the broker that sweeps."""
        if self.kill_target is not None:
            return self.kill_target
        sweeping = self._sweeping_member()
        if sweeping is not None and (not self.fleet.kills or self.rng.random() < 0.5):
            return sweeping
        return self.rng.choice([m for m in self.members if m.ready] or self.members)

    def _kill(self) -> None:
        victim = self._victim()
        self.next_kill = None
        self.kill_target = None
        proc = victim.child.proc
        serving = victim.ready
        self.fleet.kills.append(
            _Kill(time.time(), proc.pid if proc else -1, victim.number, serving)
        )
        victim.child.kill()
        victim.ready = False
        victim.down_until = time.monotonic() + self.rng.uniform(*DOWNTIME)
        self.tally.broker_kills += 1
        survivors = [m for m in self.members if m is not victim and m.ready]
        answered = None
        if survivors:
            survivor = self.rng.choice(survivors)
            answered = broker_stats(survivor.port, timeout=SURVIVOR_TIMEOUT) is not None
            self.fleet.survivors.append(answered)
        self.say(
            f"{victim.child.name} SIGKILLed while {'serving' if serving else 'starting up'} "
            f"({self.tally.broker_kills}/{self.config.kills})"
            + ("" if answered is None else f"; a survivor answered: {answered}")
        )

    def _kill_consumer(self) -> None:
        index = self.rng.randrange(len(self.consumers))
        self.consumers[index].kill()
        self.tally.consumer_kills += 1
        self._replace_consumer(index)

    def _await_brokers(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout + 1.0
        while not all(m.ready for m in self.members) and time.monotonic() < deadline:
            self._tick()
            time.sleep(TICK)

    def _await_load(self) -> None:
        """Wait (bounded) until every child has been told something."""
        deadline = time.monotonic() + self.config.start_timeout
        histories = [self.workdir / f"{c.name}.history" for c in [*self.producers, *self.consumers]]
        while time.monotonic() < deadline:
            if all(path.exists() and path.stat().st_size > 0 for path in histories):
                return
            self._tick()
            time.sleep(0.1)
        self.say("not every child got going within start_timeout; starting the chaos anyway")

    def chaos(self) -> None:
        config = self.config
        # The first broker migrates the database alone, then the others join.
        self._start(self.members[0], restart=False)
        self._await_brokers_up_to(1)
        for member in self.members[1:]:
            self._start(member, restart=False)
        self._await_brokers()
        for child in [*self.producers, *self.consumers]:
            child.start()
        self._await_load()
        began = time.monotonic()
        self.chaos_end = began + config.duration
        self.chaos_on = True
        consumer_kills = sorted(
            began + self.rng.uniform(min(0.5, config.duration / 4), config.duration)
            for _ in range(config.consumer_kill_count if config.consumers else 0)
        )
        give_up = self.chaos_end + config.duration + 60.0
        self.say(
            f"chaos for about {config.duration:g} s: {config.kills} kills, one broker of "
            f"{len(self.members)} at a time"
        )
        while True:
            now = time.monotonic()
            if self.next_kill is None and all(m.ready for m in self.members):
                self._plan_kill()
            if self.next_kill is not None and now >= self.next_kill:
                self._kill()
            while consumer_kills and consumer_kills[0] <= now:
                consumer_kills.pop(0)
                self._kill_consumer()
            done = self.tally.broker_kills >= config.kills and not consumer_kills
            if (now >= self.chaos_end and done) or now >= give_up:
                break
            self._tick()
            time.sleep(TICK)
        self.chaos_on = False
        self.next_kill = None

    def _await_brokers_up_to(self, count: int) -> None:
        deadline = time.monotonic() + self.config.start_timeout + 1.0
        while sum(m.ready for m in self.members) < count and time.monotonic() < deadline:
            self._tick()
            time.sleep(TICK)

    # --- the end ---

    def drain(self) -> None:
        """Stop the producers, bring every broker back, let the consumers finish, stop all."""
        self.say("chaos over: stopping producers, draining the queue")
        for child in self.producers:
            self._stop_child(child)
        began = time.monotonic()
        zero_since: float | None = None
        while time.monotonic() - began < self.config.drain_timeout:
            self._tick()
            serving = [m for m in self.members if m.ready]
            stats = broker_stats(serving[0].port) if serving else None
            if stats is not None and live_tasks(stats) == 0:
                zero_since = zero_since or time.monotonic()
                if time.monotonic() - zero_since >= 0.5:
                    self.tally.drained = True
                    break
            else:
                zero_since = None
            time.sleep(0.25)
        self.tally.drain_seconds = time.monotonic() - began
        # A broker killed late may still be down: every one must come back and stop cleanly.
        self._await_brokers()
        for child in self.consumers:
            self._stop_child(child)
        stops = []
        for member in self.members:
            code = member.child.stop() if member.child.running else "down"
            stops.append(f"{member.child.name}: {'clean (exit 0)' if code == 0 else code}")
        clean = all(s.endswith("clean (exit 0)") for s in stops)
        self.tally.final_stop = "clean (exit 0)" if clean else "; ".join(stops)
        self._sampled_at = 0.0
        self._sample_sweeper()  # no broker left: nobody holds the lock

    def _stop_child(self, child: _Child) -> None:
        code = child.stop()
        if code not in (0, -signal.SIGTERM):  # stopped before its handler was in place
            self.tally.unexpected_exits.append(f"{child.name} did not stop cleanly ({code})")

    def kill_everything(self) -> None:
        for child in [*(m.child for m in self.members), *self.producers, *self.consumers]:
            if child.running:
                child.kill()
        if self._sampler is not None:
            self._sampler.close()


def _takeovers(fleet: _FleetTally) -> tuple[int, list[float], list[str]]:
    """Kills of the broker holding the sweep lock, how long until another one held it, and
    those never taken over."""
    sweepers = fleet.sweepers
    kills = 0
    delays: list[float] = []
    missed: list[str] = []
    for kill in fleet.kills:
        before = [pid for at, pid in sweepers if at <= kill.at]
        if not before or before[-1] != kill.pid:
            continue
        kills += 1
        after = [at for at, pid in sweepers if at > kill.at and pid not in (None, kill.pid)]
        if after:
            delays.append(after[0] - kill.at)
        else:
            missed.append(f"broker{kill.member} (pid {kill.pid}) at {kill.at:.3f}")
    return kills, delays, missed


def _fleet_checks(tally: _Tally, fleet: _FleetTally, brokers: int) -> list[Check]:
    # The file check is SQLite's; PostgreSQL keeps its own consistency.
    checks = [c for c in _process_checks(tally) if not c.name.startswith("integrity_check")]
    answered = sum(fleet.survivors)
    checks.append(
        Check(
            "the other brokers served while one was down",
            answered == len(fleet.survivors),
            f"a survivor answered stats after {answered} of {len(fleet.survivors)} kills"
            if brokers > 1
            else "one broker: nobody else to serve",
        )
    )
    kills, delays, missed = _takeovers(fleet)
    holders = {pid for _, pid in fleet.sweepers if pid is not None}
    checks.append(
        Check(
            "the sweeps were taken over when the sweeping broker was killed",
            not missed and (kills > 0 or brokers == 1 or not fleet.kills),
            f"{kills} kills of the sweeping broker, {len(delays)} taken over "
            f"(at most {max(delays, default=0.0):.2f} s later); "
            f"{len(holders)} broker processes swept in turn"
            + (f"; never taken over: {examples(missed)}" if missed else ""),
        )
    )
    return checks


def run_fleet_torture(config: TortureConfig, progress: Progress | None = None) -> TortureReport:
    """The torture test on ``config.db_url`` with ``config.brokers`` brokers (module
    docstring). Raises ConfigError for a database it cannot use; never for a failed check."""
    from durable_tq.backends.postgres.store import describe_url

    say = progress or (lambda message: log.info("%s", message))
    url = config.db_url
    if url is None or config.brokers < 1:
        raise errors.ConfigError("the fleet torture test needs a PostgreSQL URL and brokers >= 1")
    _refuse_used_database(url)
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(1 << 31)
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="durable_tq-torture-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"seed {seed}, {config.brokers} brokers on {describe_url(url)}, working in {workdir}")
    run = _Fleet(config, url, workdir, seed, say)
    began = time.monotonic()
    try:
        run.chaos()
        run.drain()
    finally:
        run.kill_everything()
    history = read_history(workdir)
    try:
        stored = read_postgres(url)
    except Exception as exc:  # the checks then report every ok'd write as missing
        stored = {}
        run.tally.unexpected_exits.append(f"reading the database failed: {exc}")
    # Dependencies and waits are checked as on one SQLite broker; schedules are not
    # registered here (their check needs one broker's lives, docs/postgres.md).
    wait_check, wait_counts = check_waits(history, stored, [k.at for k in run.fleet.kills])
    checks = [
        *check_history(history, stored),
        *check_dependencies(history, stored),
        wait_check,
        *_fleet_checks(run.tally, run.fleet, len(run.members)),
    ]
    counts = {**_counts(run.tally, history, stored), **wait_counts}
    kills, delays, _ = _takeovers(run.fleet)
    per_broker = [sum(k.member == m.number for k in run.fleet.kills) for m in run.members]
    counts.update(
        {
            "brokers": len(run.members),
            "kills per broker": " ".join(str(n) for n in per_broker),
            "kills while starting up": sum(not k.serving for k in run.fleet.kills),
            "kills of the sweeping broker": kills,
            "sweep takeovers: max s": round(max(delays, default=0.0), 3),
            "sweep takeovers: mean s": round(sum(delays) / len(delays), 3) if delays else 0.0,
            "sweep lock holders (processes)": len({p for _, p in run.fleet.sweepers if p}),
        }
    )
    counts["wall s"] = round(time.monotonic() - began, 1)
    settings = {
        "db": describe_url(url),
        "brokers": config.brokers,
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
