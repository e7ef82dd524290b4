"""``benchmarks/peers.py --quick --only durable_tq``: the peer benchmark still runs end to end
against a real broker subprocess. No timing thresholds: only that every durable_tq pattern
produced a positive rate and moved every task it was asked to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"
QUICK_RUN_LIMIT = 120.0
DURABLE_TQ_PATTERNS = {
    "durable_tq": {"enqueue_1", "enqueue_4", "drain_1", "drain_4"},
    "durable_tq_batched": {"enqueue_pipelined", "drain_batched"},
}

pytestmark = pytest.mark.slow


@pytest.mark.timeout(QUICK_RUN_LIMIT + 30)
def test_quick_durable_tq_run_reports_every_pattern(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "durable_tq", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=QUICK_RUN_LIMIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(out.read_text())

    assert report["failures"] == {}
    assert set(report["results"]) == set(DURABLE_TQ_PATTERNS)  # no peer was started
    asked = report["config"]["tasks"]
    for row, patterns in DURABLE_TQ_PATTERNS.items():
        assert set(report["results"][row]) == patterns, row
        for pattern, result in report["results"][row].items():
            where = f"{row} / {pattern}"
            assert result["errors"] == [], where
            assert not result["timed_out"], where
            assert result["rate"] > 0, where
            assert result["seconds"] > 0, where
            assert result["tasks"] == asked, where  # every task enqueued or drained, exactly
            assert result["latency_samples"] > 0, where
    assert report["machine"]["nproc"] >= 1
    assert report["machine"]["durable_tq_exit_code"] == 0  # the broker stopped cleanly
    assert "durable_tq_settle_op" in report["machine"]
    # Targets are listed even when their peer was not run; they cannot be judged then.
    assert {t["status"] for t in report["targets"]} == {"n/a"}
    assert "tasks/s" in done.stdout
