"""``durable-tq bench --quick``: the tool still works end to end. No timing thresholds, ever:
the figures depend on the machine; only their presence and the task counts are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from durable_tq.cli import app
from durable_tq.tools.bench import DEFAULT_SCENARIOS

QUICK_RUN_LIMIT = 300.0


def _run_bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    command = [sys.executable, "-m", "durable_tq", "bench", "--quick", "--json",
               "--db-dir", str(tmp_path), *args]  # fmt: skip
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=QUICK_RUN_LIMIT,
        check=False,
    )


@pytest.mark.timeout(QUICK_RUN_LIMIT + 30)
def test_quick_run_reports_every_scenario(tmp_path: Path) -> None:
    done = _run_bench(tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(done.stdout)

    assert set(report["scenarios"]) == set(DEFAULT_SCENARIOS)
    config = report["config"]
    for name, variants in report["scenarios"].items():
        assert variants, name
        for variant in variants:
            where = f"{name} / {variant['variant']}"
            assert variant["throughput"] > 0, where
            assert variant["tasks"] > 0, where
            assert variant["seconds"] > 0, where
            if name != "limits":
                # Every task enqueued, drained or run, exactly: a correctness check, not timing.
                expected = config["tasks"]
                if "offered" in variant["variant"] or name == "latency":
                    expected = round(config["rate"] * config["duration"])
                assert variant["tasks"] == expected, where
                assert variant["latency"]["samples"] > 0, where
                assert variant["commits"] > 0, where  # the broker's stats carry its counters
                assert variant["broker_rss_peak_mb"] > 0, where

    # gRPC beside TCP: Enqueue one at a time and 64 in flight, the Work stream twice.
    assert len(report["scenarios"]["grpc"]) == 4
    assert report["limits"]["single_row_commits_per_second"] > 0
    assert report["broker"]["rss_peak_mb"] > 0
    assert report["broker"]["exit_code"] == 0  # the broker it started stopped cleanly
    assert report["machine"]["nproc"] >= 1
    assert not list(tmp_path.glob("durable_tq_bench_*")), "the temporary database was left"


@pytest.mark.timeout(QUICK_RUN_LIMIT + 30)
def test_scenarios_are_selectable_by_name(tmp_path: Path) -> None:
    done = _run_bench(tmp_path, "--scenario", "enqueue-many", "--scenario", "limits")
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert set(report["scenarios"]) == {"enqueue-many", "limits"}


def test_unknown_scenario_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["bench", "--scenario", "no-such-thing", "--quick"])
    assert result.exit_code == 2
    assert "no-such-thing" in result.output


def test_bad_synchronous_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["bench", "--synchronous", "OFF", "--quick"])
    assert result.exit_code == 2


@pytest.mark.timeout(QUICK_RUN_LIMIT + 30)
def test_claim_scaling_compares_the_key_index(tmp_path: Path) -> None:
    """benchmarks/claim_scaling.py (through the claim-scaling scenario, tiny with --quick):
    the empty and the big table, and the big one again without tasks_ready_by_key; a
    key-limited claim phase on each; no statement scans the tasks table."""
    done = _run_bench(tmp_path, "--scenario", "claim-scaling")
    assert done.returncode == 0, done.stderr[-4000:]
    scaling = json.loads(done.stdout)["claim_scaling"]
    assert list(scaling["scenarios"]) == ["empty", "5,000 rows", "5,000 rows, no key index"]
    for label, scenario in scaling["scenarios"].items():
        phases = {m["name"]: m for m in scenario["measurements"]}
        keyed = next(m for name, m in phases.items() if "key-limited" in name)
        assert keyed["tasks"] == 200 and keyed["sql_calls"] > 0, label
    assert scaling["full_scans"] == []
    assert set(scaling["plans_no_key_index"]) == {
        "READY_KEYS", "READY_OF_KEY", "READY_UNKEYED", "LEASED_BY_KEY"
    }  # fmt: skip
    assert "tasks_ready_by_key" in "".join(scaling["plans"]["READY_KEYS"])
    assert "tasks_ready_by_key" not in "".join(scaling["plans_no_key_index"]["READY_KEYS"])
