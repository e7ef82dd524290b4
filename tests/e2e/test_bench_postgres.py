"""``durable-tq bench --quick --db postgresql://... --brokers 2``: the tool drives several brokers
on one database. No timing thresholds: only the figures' presence and the task counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import empty_postgres

QUICK_RUN_LIMIT = 300.0


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(QUICK_RUN_LIMIT + 30)
def test_quick_run_on_two_brokers_counts_every_task(tmp_path: Path, postgres_database: str) -> None:
    empty_postgres(postgres_database)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    command = [
        sys.executable, "-m", "durable_tq", "bench", "--quick", "--json",
        "--db-dir", str(tmp_path), "--db", postgres_database, "--brokers", "2",
        "-s", "enqueue-seq", "-s", "drain", "-s", "e2e",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=env,
        timeout=QUICK_RUN_LIMIT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(done.stdout)

    assert report["config"]["brokers"] == 2
    assert report["config"]["database"].startswith("postgresql://")
    assert len(report["broker"]["pids"]) == len(set(report["broker"]["pids"])) == 2
    assert report["machine"]["postgresql"]
    assert set(report["scenarios"]) == {"enqueue-seq", "drain", "e2e"}
    config = report["config"]
    for name, variants in report["scenarios"].items():
        for variant in variants:
            where = f"{name} / {variant['variant']}"
            expected = config["tasks"]
            if "offered" in variant["variant"]:
                expected = round(config["rate"] * config["duration"])
            # Every task enqueued, drained or run once across both brokers.
            assert variant["tasks"] == expected, where
            assert variant["commits"] > 0, where  # summed over the brokers' counters
            assert variant["broker_cpu_percent"] is not None, where
            assert variant["database_cpu_percent"] is not None, where


def test_several_brokers_need_a_postgresql_database(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "durable_tq", "bench", "--quick", "--brokers", "2"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "give --db" in done.stderr
