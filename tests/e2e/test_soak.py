"""benchmarks/soak.py --quick: normal clients beside hostile peers for 20 s; the broker lives,
stops on SIGTERM, and its memory comes back down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.mark.timeout(180)
def test_soak_quick() -> None:
    done = subprocess.run(
        [sys.executable, str(SOAK), "--quick"], capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["broker_alive_at_end"]
    assert report["sigterm_exit"] == 0
    assert report["rss_mb"]["peak"] < report["rss_mb"]["start"] + 300, report
    assert report["normal_latency"]["after"]["n"] > 0, report
