"""The crash test on PostgreSQL, short: two brokers on one database, one SIGKILLed at a time.

The full run is ``durable-tq torture --db postgresql://... --brokers 3`` (docs/postgres.md);
this one runs the same code for a few seconds. The fleet's own checks are tested on made-up
timelines too: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from durable_tq.tools.torture import fleet
from durable_tq.tools.torture.harness import _Tally
from tests.conftest import empty_postgres


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_short_torture_run_on_two_brokers_passes_every_check(
    tmp_path: Path, postgres_database: str
) -> None:
    empty_postgres(postgres_database)
    seed = int(os.environ.get("DURABLE_TQ_TORTURE_SEED") or random.randrange(1 << 31))
    command = [
        sys.executable, "-m", "durable_tq", "torture", "--json",
        "--db", postgres_database, "--brokers", "2",
        "--duration", "10", "--kills", "3", "--consumer-kills", "1",
        "--producers", "1", "--consumers", "2", "--rate", "60", "--lease", "1",
        "--seed", str(seed), "--workdir", str(tmp_path / "torture"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=190, env=env)
    report = json.loads(result.stdout)

    failed = [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["passed"]]
    assert not failed, f"seed {seed} (DURABLE_TQ_TORTURE_SEED={seed} to repeat): {failed}"
    assert result.returncode == 0, result.stderr[-2000:]
    counts = report["counts"]
    assert counts["brokers"] == 2
    assert counts["broker kills (SIGKILL)"] == 3
    assert counts["kills of the sweeping broker"] >= 1  # the first kill hits the sweeper
    assert counts["enqueues ok"] >= 20
    assert counts["acks ok"] >= 20
    # The producer moved to the other broker when its own was killed: its lanes began again.
    history = (tmp_path / "torture" / "producer0.history").read_text()
    assert "producer0.0m1-" in history

    # A second run on the same database is refused: its old tasks would confuse the checks.
    again = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 2
    assert "already holds tasks" in again.stderr


def test_several_brokers_need_a_postgresql_database(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "durable_tq", "torture", "--brokers", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "give --db postgresql://" in result.stderr


def test_sweep_takeover_check_fails_when_nobody_takes_over() -> None:
    kill = fleet._Kill(at=10.0, pid=100, member=0, serving=True)
    taken = fleet._FleetTally(sweepers=[(1.0, 100), (10.1, None), (10.4, 200)], kills=[kill])
    assert fleet._takeovers(taken) == (1, [pytest.approx(0.4)], [])
    # The sweeper died and the lock stayed free (or went back to the dead pid).
    lost = fleet._FleetTally(sweepers=[(1.0, 100), (10.1, None)], kills=[kill])
    verdicts = {c.name: c for c in fleet._fleet_checks(_Tally(drained=True), lost, 2)}
    check = verdicts["the sweeps were taken over when the sweeping broker was killed"]
    assert not check.passed and "never taken over" in check.detail
    # A kill of a broker that was not sweeping is no takeover to wait for.
    other = fleet._Kill(at=10.0, pid=300, member=1, serving=True)
    assert fleet._takeovers(fleet._FleetTally(sweepers=[(1.0, 100)], kills=[other]))[0] == 0


def test_the_sweep_holder_is_read_from_its_application_name() -> None:
    assert fleet._holder_pid("durable_tq sweep pid=4242") == 4242
    assert fleet._holder_pid("psql") is None
    assert fleet._holder_pid(None) is None
