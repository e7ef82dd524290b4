"""One benchmark run: the broker, the control connection, and measuring one variant.

:class:`Bench` owns what every scenario shares: the broker under test (started here unless a
URL was given), a control connection (stats, preloading, purging; never timed), the resource
watch on the broker process, the progress bar and the report. :meth:`Bench.measure` runs one
variant: a fresh queue, optional preload, the load processes released together, and the
broker's commit counters, CPU and memory read around the timed window.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from durable_tq.tools.bench import profile, wire
from durable_tq.tools.bench.broker_process import BrokerProcess, ResourceWatch, find_listening_pid
from durable_tq.tools.bench.fleet import Fleet, LoadError
from durable_tq.tools.bench.loadgen import LoadResult, LoadSpec
from durable_tq.tools.bench.postgres import DatabaseWatch
from durable_tq.tools.bench.report import MB, Latency, Measurement, Report, machine_info

PRELOAD_BATCH = 1000
PRELOAD_WINDOW = 4


def grpc_installed() -> bool:
    """Whether the grpc extra imports here (the broker started here needs it for --grpc)."""
    try:
        import grpc_health.v1.health  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class BenchOptions:
    """What ``durable-tq bench`` was asked to do."""

    scenarios: tuple[str, ...]
    tasks: int = 20_000
    payload_bytes: int = 100
    synchronous: str = "FULL"
    quick: bool = False
    url: str | None = None
    token: str | None = None
    rate: float = 1000.0
    duration: float = 10.0
    limits_seconds: float = 2.0
    db_dir: Path | None = None
    repeat: int = 1  # whole runs, each on a fresh broker; the report gives medians
    profile_dir: Path | None = None  # py-spy the broker during each measurement, keep it here
    claim_scaling_args: tuple[str, ...] = ()
    #: A PostgreSQL URL: start ``brokers`` brokers on that database and spread the load
    #: processes of each measurement over them.
    db_url: str | None = None
    brokers: int = 1

    def effective(self) -> BenchOptions:
        """``--quick``: counts so small that the run only proves the tool works."""
        if not self.quick:
            return self
        return replace(
            self,
            tasks=min(self.tasks, 200),
            rate=min(self.rate, 200.0),
            duration=min(self.duration, 1.0),
            limits_seconds=min(self.limits_seconds, 0.2),
        )


@dataclass
class Snapshot:
    """The broker's counters at one moment."""

    commits: int | None
    writes: int | None
    cpu: float | None
    at: float
    busy_seconds: float | None = None  # the writer's time in batches (newer brokers)
    commit_seconds: float | None = None  # ... of which in COMMIT
    #: PostgreSQL backends of the benchmark's database: CPU seconds by pid (``--db``).
    database_cpu: dict[int, float] | None = None


@dataclass
class Variant:
    """One variant of a scenario, ready to run."""

    scenario: str
    variant: str
    specs: list[LoadSpec]
    #: How many tasks the measured roles move in all (the progress bar's total).
    tasks: int
    latency_of: str
    load: str
    #: Roles whose tasks and latencies are the result; the others only generate load.
    measured_roles: frozenset[str] = frozenset()
    other_latency_of: str | None = None
    preload: int = 0
    #: For open-ended roles (workers): stop once the measured roles reach ``tasks``.
    open_ended: bool = False
    notes: list[str] = field(default_factory=list)


class Bench:
    """A running benchmark session; use as a context manager."""

    def __init__(self, options: BenchOptions, console: Console, *, show_progress: bool) -> None:
        self.options = options
        self.console = console
        self.show_progress = show_progress
        self._queue_numbers = itertools.count(1)
        self._tempdir: Path | None = None
        self.broker: BrokerProcess | None = None
        self.endpoint: wire.Endpoint | None = None
        self.control: wire.WireConnection | None = None
        #: With ``--db``: every broker (``broker`` is the first), its endpoint and a control
        #: connection to each (their counters are summed).
        self.brokers: list[BrokerProcess] = []
        self.endpoints: list[wire.Endpoint] = []
        self.controls: list[wire.WireConnection] = []
        self.database: DatabaseWatch | None = None
        self._run_tag = ""
        self.watch = ResourceWatch(None)
        self.progress: Progress | None = None
        self.report = Report(config={}, machine={})

    # --- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Bench:
        options = self.options
        if options.db_dir is not None:
            options.db_dir.mkdir(parents=True, exist_ok=True)
        self._tempdir = Path(tempfile.mkdtemp(prefix="durable_tq_bench_", dir=options.db_dir))
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        options = self.options
        assert self._tempdir is not None
        pids: list[int] = []
        pid: int | None
        if options.db_url is not None:
            pid, synchronous = self._start_brokers(options.db_url)
            pids = [b.pid for b in self.brokers]
        elif options.url is None:
            # gRPC only when a scenario needs it (and the extra is there): the other figures
            # stay those of a broker without it.
            self.broker = BrokerProcess(
                self._tempdir / "bench.db",
                options.synchronous,
                grpc="grpc" in options.scenarios and grpc_installed(),
            )
            self.endpoint = self.broker.start()
            pid = self.broker.pid
            synchronous = options.synchronous
        else:
            self.endpoint = wire.parse_endpoint(options.url, options.token)
            local = self.endpoint.host in ("127.0.0.1", "localhost", "::1")
            pid = find_listening_pid(self.endpoint.port) if local else None
            synchronous = "as configured on that broker"
        assert self.endpoint is not None
        self.watch = ResourceWatch(pids or pid)
        self.watch.__enter__()
        self.endpoints = self.endpoints or [self.endpoint]
        self.controls = [wire.connect(endpoint) for endpoint in self.endpoints]
        self.control = self.controls[0]
        self.report = Report(
            config={
                "scenarios": list(options.scenarios),
                "tasks": options.tasks,
                "payload_bytes": options.payload_bytes,
                "synchronous": synchronous,
                "quick": options.quick,
                "rate": options.rate,
                "duration": options.duration,
                "external_broker": options.url is not None,
                "brokers": len(self.endpoints),
            },
            machine=machine_info(self._tempdir),
            broker={"url": self.endpoint.url, "pid": pid},
        )
        if self.database is not None:
            from durable_tq.backends.postgres.store import describe_url

            assert options.db_url is not None
            self.report.config["database"] = describe_url(options.db_url)
            self.report.machine["postgresql"] = self.database.version
            self.report.broker["urls"] = [e.url for e in self.endpoints]
            self.report.broker["pids"] = pids
        if pid is None:
            self.report.notes.append(
                "broker CPU and memory are not measured: its process is not visible from here"
            )
        if self.show_progress:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                refresh_per_second=4,  # the coordinator shares the machine with the load
            )
            self.progress.start()

    def _start_brokers(self, url: str) -> tuple[int, str]:
        """``brokers`` brokers on the PostgreSQL database ``url``, one after the other (the
        first migrates); the first one's pid, and what durability means there."""
        assert self._tempdir is not None
        self._run_tag = secrets.token_hex(3)  # the database outlives the run: fresh names
        self.database = DatabaseWatch(url)
        for number in range(self.options.brokers):
            workdir = self._tempdir / f"broker{number}"
            workdir.mkdir()
            broker = BrokerProcess(url, self.options.synchronous, workdir=workdir)
            self.brokers.append(broker)
            self.endpoints.append(broker.start())
        self.broker, self.endpoint = self.brokers[0], self.endpoints[0]
        return self.broker.pid, "on (PostgreSQL synchronous_commit)"

    def __exit__(self, *exc_info: object) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        for control in self.controls:
            control.close()
        self.controls = []
        self.control = None
        self.watch.__exit__(None, None, None)
        if self.watch.peak_rss:
            self.report.broker["rss_peak_mb"] = self.watch.peak_rss / MB
        self.report.machine["loadavg_end"] = list(os.getloadavg())
        if self.brokers:
            codes = [broker.stop() for broker in self.brokers]
            self.report.broker["exit_code"] = next((c for c in codes if c), codes[0])
            self.brokers = []
            self.broker = None
        if self.broker is not None:
            code = self.broker.stop()
            self.report.broker["exit_code"] = code
            self.broker = None
        if self.database is not None:
            self.database.close()
            self.database = None
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    @property
    def tempdir(self) -> Path:
        assert self._tempdir is not None
        return self._tempdir

    # --- helpers for scenarios ----------------------------------------------------------------

    def new_queue(self, slug: str) -> str:
        tag = f"{self._run_tag}-" if self._run_tag else ""
        return f"bench{tag}{next(self._queue_numbers)}-{re.sub(r'[^a-z0-9]+', '-', slug.lower())}"

    def spec(self, role: str, queue: str, tasks: int, **fields: Any) -> LoadSpec:
        assert self.endpoint is not None
        return LoadSpec(
            role=role,
            endpoint=self.endpoint,
            queue=queue,
            tasks=tasks,
            payload_bytes=self.options.payload_bytes,
            **fields,
        )

    @contextmanager
    def progress_task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar line; yields a function that sets how far it got."""
        progress = self.progress
        if progress is None:
            yield lambda done: None
            return
        task_id = progress.add_task(description, total=total)
        try:
            yield lambda done: progress.update(task_id, completed=done)
        finally:
            progress.stop_task(task_id)

    def snapshot(self) -> Snapshot:
        """Every broker's writer counters (summed) and CPU, and PostgreSQL's with ``--db``."""
        assert self.controls
        stores = [control.request("stats").get("store") or {} for control in self.controls]
        cpu = self.watch.cpu()

        def total(key: str) -> Any:
            values = [store.get(key) for store in stores]
            return None if None in values else sum(values)

        return Snapshot(
            commits=total("commits"),
            writes=total("writes"),
            cpu=None if cpu is None else cpu.cpu,
            at=time.monotonic() if cpu is None else cpu.at,
            busy_seconds=total("busy_seconds"),
            commit_seconds=total("commit_seconds"),
            database_cpu=None if self.database is None else self.database.cpu(),
        )

    def preload(self, queue: str, count: int) -> None:
        """Put ``count`` tasks on ``queue`` with enqueue_many (not timed)."""
        assert self.control is not None
        frames = wire.Frames(queue, self.options.payload_bytes)
        conn = self.control
        batches = [PRELOAD_BATCH] * (count // PRELOAD_BATCH)
        if count % PRELOAD_BATCH:
            batches.append(count % PRELOAD_BATCH)
        in_flight = 0
        with self.progress_task(f"[dim]preloading {queue}", count) as advance:
            done = 0
            for size in batches:
                conn.send(frames.enqueue_many(conn.next_id(), size))
                in_flight += 1
                while in_flight >= PRELOAD_WINDOW:
                    answered = wire.check_all(conn.receive_lines())
                    in_flight -= answered
                    done += answered * PRELOAD_BATCH
                    advance(min(done, count))
            while in_flight:
                in_flight -= wire.check_all(conn.receive_lines())
            advance(count)

    def purge(self, queue: str) -> None:
        assert self.control is not None
        self.control.request("purge", queue=queue)

    # --- measuring ----------------------------------------------------------------------------

    def measure(self, variant: Variant) -> Measurement:
        if len(self.endpoints) > 1:  # one broker after the other: spec i on broker i mod N
            specs = [
                replace(spec, endpoint=self.endpoints[i % len(self.endpoints)])
                for i, spec in enumerate(variant.specs)
            ]
            variant = replace(variant, specs=specs)
        queue = variant.specs[0].queue
        if variant.preload:
            self.preload(queue, variant.preload)
        measured = variant.measured_roles or frozenset(s.role for s in variant.specs)
        measured_index = [i for i, s in enumerate(variant.specs) if s.role in measured]
        before: list[Snapshot] = []

        def before_start() -> None:
            self.watch.start_window()
            before.append(self.snapshot())

        def measured_done(progress: list[int]) -> int:
            return sum(progress[i] for i in measured_index)

        description = f"{variant.scenario} · {variant.variant}"
        recording = self._start_profile(variant)
        with self.progress_task(description, variant.tasks) as advance, self._broker_blamed():
            results = Fleet(variant.specs).run(
                before_start=before_start,
                on_progress=lambda progress: advance(measured_done(progress)),
                should_stop=(
                    (lambda progress: measured_done(progress) >= variant.tasks)
                    if variant.open_ended
                    else None
                ),
            )
        after = self.snapshot()
        self.watch.sample_once()
        measurement = self._measurement(variant, results, measured, before[0], after)
        if recording is not None:
            raw = recording.stop()
            if raw is not None:
                measurement.extra["profile"] = {"file": str(raw), **profile.summarize(raw)}
        self.purge(queue)
        self.report.measurements.append(measurement)
        return measurement

    @contextmanager
    def _broker_blamed(self) -> Iterator[None]:
        """A load process failed because the broker died: say so, with the broker's log."""
        try:
            yield
        except LoadError as exc:
            brokers = self.brokers or ([self.broker] if self.broker is not None else [])
            ended = [b for b in brokers if b.proc is not None and b.proc.poll() is not None]
            broker = ended[0] if ended else None
            code = None if broker is None or broker.proc is None else broker.proc.poll()
            if broker is None or code is None:
                raise
            raise LoadError(
                f"the broker exited (code {code}) during the measurement; its log ends:\n"
                f"{broker.log_tail()}"
            ) from exc

    def _start_profile(self, variant: Variant) -> profile.Recording | None:
        folder = self.options.profile_dir
        pid = self.report.broker.get("pid")
        if folder is None or pid is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        number = len(self.report.measurements) + 1
        slug = re.sub(r"[^a-z0-9]+", "-", f"{variant.scenario} {variant.variant}".lower())
        return profile.Recording(int(pid), folder / f"{number:02d}-{slug.strip('-')}.txt")

    def _measurement(
        self,
        variant: Variant,
        results: Sequence[LoadResult],
        measured: frozenset[str],
        before: Snapshot,
        after: Snapshot,
    ) -> Measurement:
        main = [r for s, r in zip(variant.specs, results, strict=True) if s.role in measured]
        others = [r for s, r in zip(variant.specs, results, strict=True) if s.role not in measured]
        started = min(r.started for r in results)
        finished = max(r.finished for r in main)
        seconds = max(finished - started, 1e-9)
        tasks = sum(r.tasks for r in main)
        other_samples = [x for r in [*others, *main] for x in r.secondary] + [
            x for r in others for x in r.latencies
        ]
        loadgen_cpu = sum(r.cpu_seconds for r in results)
        m = Measurement(
            scenario=variant.scenario,
            variant=variant.variant,
            tasks=tasks,
            seconds=seconds,
            throughput=tasks / seconds,
            latency=Latency.of_seconds(variant.latency_of, [x for r in main for x in r.latencies]),
            other_latency=(
                Latency.of_seconds(variant.other_latency_of, other_samples)
                if variant.other_latency_of
                else None
            ),
            processes=len(results),
            connections=len(results),
            loadgen_cpu_percent=100 * loadgen_cpu / seconds,
            loadgen_cpu_us_per_task=1e6 * loadgen_cpu / tasks if tasks else None,
            load=variant.load,
            notes=list(variant.notes),
        )
        if before.commits is not None and after.commits is not None:
            m.commits = after.commits - before.commits
        if before.writes is not None and after.writes is not None:
            m.writes = after.writes - before.writes
        if before.busy_seconds is not None and after.busy_seconds is not None:
            m.db_busy_percent = 100 * (after.busy_seconds - before.busy_seconds) / seconds
        if before.commit_seconds is not None and after.commit_seconds is not None and m.commits:
            m.commit_ms = 1000 * (after.commit_seconds - before.commit_seconds) / m.commits
        if before.cpu is not None and after.cpu is not None:
            m.broker_cpu_percent = 100 * (after.cpu - before.cpu) / max(after.at - before.at, 1e-9)
        if before.database_cpu is not None and after.database_cpu is not None:
            spent = DatabaseWatch.spent(before.database_cpu, after.database_cpu)
            m.database_cpu_percent = 100 * spent / max(after.at - before.at, 1e-9)
        if self.watch.window_peak_rss:
            m.broker_rss_peak_mb = self.watch.window_peak_rss / MB
        limits = self.report.limits
        if limits.get("single_row_commits_per_second"):
            m.sqlite_fraction_1row = m.throughput / limits["single_row_commits_per_second"]
        if limits.get("batched_rows_per_second"):
            m.sqlite_fraction_100row = m.throughput / limits["batched_rows_per_second"]
        return m
