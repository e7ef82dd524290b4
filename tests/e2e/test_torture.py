"""The crash test, short: SIGKILL a real broker and its consumers under load, then check.

The full run is ``durable-tq torture --kills 30`` (docs/guarantees.md); this one runs the
same code for a few seconds. The checker itself is tested too: a checker that cannot fail
proves nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from durable_tq.tools import torture
from durable_tq.tools.torture import History, StoredTask, flows
from durable_tq.tools.torture.flows import BrokerLife, Firing, Probe, StoredSchedule


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_short_torture_run_passes_every_check(tmp_path: Path) -> None:
    """``durable-tq torture`` itself, as a user runs it, only shorter."""
    seed = int(os.environ.get("DURABLE_TQ_TORTURE_SEED") or random.randrange(1 << 31))
    workdir = tmp_path / "torture"
    command = [
        sys.executable, "-m", "durable_tq", "torture", "--json",
        "--duration", "10", "--kills", "3", "--consumer-kills", "2",
        "--producers", "1", "--consumers", "2", "--rate", "60", "--lease", "1",
        "--seed", str(seed), "--workdir", str(workdir),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=140, env=env)
    report = json.loads(result.stdout)

    failed = [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["passed"]]
    assert not failed, f"seed {seed} (DURABLE_TQ_TORTURE_SEED={seed} to repeat): {failed}"
    assert result.returncode == 0, result.stderr[-2000:]
    assert report["passed"] is True and report["workdir_kept"] is True
    counts = report["counts"]
    assert counts["broker kills (SIGKILL)"] == 3
    assert counts["consumer kills (SIGKILL)"] == 2
    assert counts["enqueues ok"] >= 20
    assert counts["acks ok"] >= 20
    assert counts["acks ok via settle"] >= 1  # one of the two consumers settles in batches
    assert counts["dependents stored (after)"] >= 1
    assert counts["waits returned"] >= 1
    assert counts["schedule firings"] >= 1

    # The same histories against a database that lost one ok'd enqueue and one ok'd ack
    # must fail: the checks can see a loss.
    history = torture.read_history(workdir)
    stored = torture.read_database(workdir / "torture.db")
    lost_task = next(iter(history.enqueued))
    acked_task = next(t for t in history.acked if t != lost_task)
    del stored[lost_task]
    stored[acked_task] = StoredTask("queued", stored[acked_task].uid, None)
    verdicts = {c.name: c.passed for c in torture.check_history(history, stored)}
    assert not verdicts["every ok'd enqueue is stored (no lost writes)"]
    assert not verdicts["every ok'd ack is the stored one (acks durable)"]
    assert not verdicts["every ok'd enqueue reached succeeded (at-least-once)"]

    _the_flow_checks_fail_on_a_doctored_copy_of_the_run(workdir)


def _the_flow_checks_fail_on_a_doctored_copy_of_the_run(workdir: Path) -> None:
    """Dependencies, waits and schedules of the real run pass, and fail once doctored: a
    dependent claimed before its parent's ack went out, a wait whose result is not the one
    stored, a slot fired twice, an owed slot lost."""
    history = torture.read_history(workdir)
    stored = torture.read_database(workdir / "torture.db")
    lives = flows.read_lives(workdir / "broker.lives")
    assert sum(life.how == "killed" for life in lives) == 3
    assert all(c.passed for c in flows.check_dependencies(history, stored))
    check, _ = flows.check_waits(history, stored, flows.kill_times(lives))
    assert check.passed

    by_uid = {task.uid: task_id for task_id, task in stored.items()}
    child = next(t for t, task in stored.items() if task.parents and history.leases.get(t))
    parent = stored[by_uid[stored[child].parents[0]]]
    assert parent.lease_token is not None
    first_claim = min(received for received, _, _ in history.leases[child])
    history.ack_sent[parent.lease_token] = first_claim + 0.001
    (early, _) = flows.check_dependencies(history, stored)
    assert not early.passed and "before parent" in early.detail

    waited = next(w for w in history.waits if w.outcome == "ok" and w.state == "succeeded")
    stored[waited.task_id] = dataclasses.replace(stored[waited.task_id], result='{"other":1}')
    check, _ = flows.check_waits(history, stored, [])
    assert not check.passed

    schedules, firings = flows.read_schedules(workdir / "torture.db")
    probes = flows.read_probes(workdir / "broker.probes")
    assert all(c.passed for c in flows.check_schedules(schedules, firings, lives, probes)[0])
    fired = firings[-1]
    every = schedules[fired.name].every
    doubled = flows.check_schedules(schedules, [*firings, fired], lives, probes)[0]
    assert not {c.name: c.passed for c in doubled}["no schedule slot fired twice"]
    # A broker seen serving through that slot, and the slot's task gone: lost.
    serving = BrokerLife(fired.slot - 2, fired.slot - 1, fired.slot + every + 1, "killed")
    answers = _probes(fired.slot - 1, fired.slot + every + 1)
    others = [f for f in firings if f != fired]
    lost = flows.check_schedules(schedules, others, [serving], answers)[0]
    assert not {c.name: c.passed for c in lost}["no slot lost while the broker served"]


def _probes(start: float, end: float, every: float = 0.1, took: float = 0.01) -> list[Probe]:
    """The prober's writes from ``start`` to ``end``, each answered after ``took`` s."""
    count = round((end - start) / every)
    return [Probe(start + i * every, start + i * every + took) for i in range(count + 1)]


def _write(path: Path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_checker_accepts_a_clean_history(tmp_path: Path) -> None:
    _write(
        tmp_path / "producer0.history",
        "enqueue ok 1 p-1",
        "enqueue unknown - p-2 -",  # no reply: may be stored or not
        "enqueue ok 3 p-3 -",
        "enqueue unknown - p-4 p-4",  # an enqueue_many without reply: none of it stored
        "enqueue unknown - p-5 p-4",
    )
    _write(
        tmp_path / "consumer0-g0.history",
        "claim 1 1 tokA 110.000000 100.000000",
        "ack unknown 1 tokA",  # no reply: redelivered after the lease, acked again
        "claim 1 2 tokB 121.000000 111.000000",
        "ack ok 1 tokB",
        "claim 3 1 tokC 110.000000 100.000000",
        "release sent 3 tokC",
        "release ok 3 tokC",
        "claim 3 1 tokD 111.000000 101.000000",  # released: may come back at once
        "late_ack lease_lost 3 tokD",
        "claim 3 2 tokE 125.000000 115.000000",
        "fail sent 3 tokE",  # killed before the reply: the fail may have been committed
        "claim 3 3 tokF 135.000000 116.000000",
        "ack ok 3 tokF",
    )
    history = torture.read_history(tmp_path)
    stored = {
        1: StoredTask("succeeded", "p-1", "tokB"),
        3: StoredTask("succeeded", "p-3", "tokF"),
    }
    checks = torture.check_history(history, stored)
    assert all(c.passed for c in checks), checks
    assert history.redeliveries == 3
    assert history.outcomes["release ok"] == 1 and "fail sent" not in history.outcomes
    assert history.malformed == 0


def test_checker_finds_every_kind_of_violation(tmp_path: Path) -> None:
    _write(
        tmp_path / "producer0.history",
        "enqueue ok 1 p-1",
        "enqueue ok 2 p-2",  # lost
        "enqueue ok 3 p-3",
        "enqueue ok 4 p-4",  # stored, never ran
        "enqueue ok 3 p-5",  # an id told twice
        "enqueue unknown - p-6 p-6",  # an enqueue_many of p-6, p-7: only p-7 is stored
        "enqueue unknown - p-7 p-6",
    )
    _write(
        tmp_path / "consumer0-g0.history",
        "claim 1 1 tokA 110.000000 100.000000",
        "claim 1 2 tokB 120.000000 105.000000",  # handed out while tokA was held
        "ack ok 1 tokA",
        "ack ok 1 tokB",  # two ok'd acks
        "claim 3 1 tokA 110.000000 100.000000",  # a token reused
        "late_ack ok 3 tokA",  # an ack after the lease ended, accepted
        "garbage",
    )
    history = torture.read_history(tmp_path)
    stored = {
        1: StoredTask("succeeded", "p-1", "tokB"),
        3: StoredTask("succeeded", "p-3", "tokX"),
        4: StoredTask("queued", "p-4", None),
        5: StoredTask("succeeded", "p-1", None),  # one enqueue stored twice
        7: StoredTask("succeeded", "p-7", None),
    }
    verdicts = {c.name: c.passed for c in torture.check_history(history, stored)}
    assert verdicts == {
        "every ok'd enqueue is stored (no lost writes)": False,
        "every ok'd enqueue reached succeeded (at-least-once)": False,
        "at most one ok'd ack per task (fencing)": False,
        "every ok'd ack is the stored one (acks durable)": True,
        "acks after the lease ended are refused (fencing)": False,
        "every claim got a fresh token and a lease of its own": False,
        "enqueue_many stored all or nothing": False,
        "no enqueue stored twice": False,
    }
    assert history.malformed == 1


def test_claims_are_ordered_by_the_broker_not_by_when_a_starved_consumer_got_them(
    tmp_path: Path,
) -> None:
    """Attempt 4 reached its (starved) consumer after its 1 s lease had run out, and after
    attempt 5 had been handed to another consumer: no overlap (seen in a run on a machine
    with a load of 15 on 2 cores)."""
    _write(tmp_path / "producer0.history", "enqueue ok 1 p-1")
    _write(
        tmp_path / "consumer0-g0.history",
        "claim 1 4 tokD 256.136310 257.786422",
        "ack lease_lost 1 tokD",
    )
    _write(
        tmp_path / "consumer1-g0.history",
        "claim 1 5 tokE 258.734438 257.739261",
        "ack sent 1 tokE 257.740996",
        "ack ok 1 tokE",
    )
    history = torture.read_history(tmp_path)
    checks = torture.check_history(history, {1: StoredTask("succeeded", "p-1", "tokE")})
    assert all(c.passed for c in checks), checks


def test_integrity_check_reports_a_damaged_file(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "x.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    conn.execute("CREATE INDEX t_b ON t (b)")
    conn.executemany("INSERT INTO t (b) VALUES (?)", [(f"v{i}" * 50,) for i in range(2000)])
    conn.commit()
    conn.close()
    assert torture.integrity_check(db) == "ok"
    assert torture.integrity_check(tmp_path / "missing.db") == "ok"
    data = bytearray(db.read_bytes())
    for offset in range(4096 * 3, len(data), 4096 * 2):  # scribble over every other page
        data[offset + 100 : offset + 400] = os.urandom(300)
    db.write_bytes(bytes(data))
    assert torture.integrity_check(db) != "ok"


def test_history_lines_survive_reading_a_partial_file(tmp_path: Path) -> None:
    history_file = torture.HistoryFile(tmp_path / "p.history")
    history_file.record("enqueue", "ok", 7, "p-7")
    history_file.close()
    (tmp_path / "q.history").write_text("enqueue ok 8")  # cut short
    history: History = torture.read_history(tmp_path)
    assert history.enqueued == {7: "p-7"}
    assert history.malformed == 1


def test_checker_reads_per_task_settle_results(tmp_path: Path) -> None:
    """A settle's items are recorded one line each: ok counts as an ok'd ack, lease_lost as
    a refused one; a fail sent in a settle may end its lease early."""
    _write(tmp_path / "producer0.history", "enqueue ok 1 p-1", "enqueue ok 2 p-2")
    _write(
        tmp_path / "consumer0s-g0.history",
        "settle ok 0 2",
        "claim 1 1 tokA 110.000000 100.000000",
        "claim 2 1 tokB 110.000000 100.000000",
        "fail sent 2 tokB",
        "settle ok 3 1",
        "ack ok 1 tokA settle",
        "ack lease_lost 1 tokA settle",  # the same ack twice in one settle
        "fail ok 2 tokB settle",
        "claim 2 2 tokC 112.000000 102.000000",  # failed: may come back before tokB's expiry
        "settle unknown 1 0",
        "ack unknown 2 tokC settle",
        "claim 2 3 tokD 125.000000 115.000000",
        "settle ok 2 0",
        "ack ok 2 tokD settle",
        "late_ack lease_lost 2 tokC settle",
    )
    history = torture.read_history(tmp_path)
    stored = {1: StoredTask("succeeded", "p-1", "tokA"), 2: StoredTask("succeeded", "p-2", "tokD")}
    checks = torture.check_history(history, stored)
    assert all(c.passed for c in checks), checks
    assert history.acked == {1: ["tokA"], 2: ["tokD"]}
    assert history.via_settle["ack ok"] == 2 and history.via_settle["ack lease_lost"] == 1
    assert history.outcomes["late_ack lease_lost"] == 1
    assert history.settle_items == 6 and history.malformed == 0

    # An item answered ok for a second ack of the same task, or a late ack answered ok,
    # must fail the fencing checks.
    _write(
        tmp_path / "consumer1s-g0.history",
        "claim 1 2 tokE 140.000000 130.000000",
        "ack ok 1 tokE settle",
        "late_ack ok 2 tokC settle",
    )
    history = torture.read_history(tmp_path)
    verdicts = {c.name: c.passed for c in torture.check_history(history, stored)}
    assert not verdicts["at most one ok'd ack per task (fencing)"]
    assert not verdicts["acks after the lease ended are refused (fencing)"]


# --- dependencies, waits and schedules -----------------------------------------------------------


def _flow_history(tmp_path: Path, *consumer_lines: str) -> History:
    _write(
        tmp_path / "producer0.history",
        "enqueue ok 1 p-1 p-1",  # an enqueue_many: a chain p-1 -> p-2
        "enqueue ok 2 p-2 p-1",
        "enqueue ok 3 p-3 -",  # doomed
        "enqueue ok 4 p-4 -",  # after p-3
        'wait ok 2 succeeded 99.000000 102.000000 {"attempt":1}',
        "wait ok 4 cancelled 99.000000 101.000000 null",
        "wait timeout 1 - 99.000000 199.000000 -",
    )
    _write(
        tmp_path / "consumer0-g0.history",
        "claim 1 1 tokA 110.000000 100.000000",
        "ack sent 1 tokA 100.500000",
        "ack ok 1 tokA",
        "claim 3 1 tokC 110.000000 100.000000",
        "fail sent 3 tokC",
        "fail ok 3 tokC",
        *consumer_lines,
    )
    return torture.read_history(tmp_path)


def _flow_stored() -> dict[int, StoredTask]:
    return {
        1: StoredTask("succeeded", "p-1", "tokA", result='{"attempt":1}'),
        2: StoredTask("succeeded", "p-2", "tokB", parents=("p-1",), result='{"attempt":1}'),
        3: StoredTask("dead", "p-3", "tokC", doomed=True),
        4: StoredTask("cancelled", "p-4", None, parents=("p-3",),
                      last_error="parent task 3 ended dead"),
    }  # fmt: skip


def _flow_verdicts(history: History, stored: dict[int, StoredTask]) -> dict[str, bool]:
    checks = [*torture.check_history(history, stored), *flows.check_dependencies(history, stored)]
    checks.append(flows.check_waits(history, stored, [100.0])[0])
    return {c.name: c.passed for c in checks}


def test_dependency_and_wait_checks_accept_a_clean_history(tmp_path: Path) -> None:
    history = _flow_history(
        tmp_path,
        "claim 2 1 tokB 111.000000 100.600000",  # after p-1's ack went out
        "ack sent 2 tokB 100.700000",
        "ack ok 2 tokB",
    )
    assert all(_flow_verdicts(history, _flow_stored()).values())
    assert history.ack_sent == {"tokA": 100.5, "tokB": 100.7}
    _, counts = flows.check_waits(history, _flow_stored(), [100.0])
    assert counts["waits returned"] == 2 and counts["waits returned across a broker kill"] == 2
    assert counts["waits timed out"] == 1


EARLY = "no dependent handed out before its parents succeeded"
CANCELLED = "a failed parent's dependents ended cancelled, naming it"
WAITS = "every wait that returned agrees with the database"


@pytest.mark.parametrize(
    ("consumer_lines", "doctor", "failing"),
    [
        # p-2 handed out before the ack of its parent p-1 was even sent.
        (["claim 2 1 tokB 111.000000 100.400000", "ack sent 2 tokB 100.700000"], {}, {EARLY}),
        # p-4 handed out although its parent p-3 died.
        (["claim 4 1 tokD 111.000000 100.600000"], {}, {EARLY}),
        # p-4, a dependent of a dead parent, ran and succeeded (its wait said cancelled).
        ([], {4: {"state": "succeeded", "last_error": None}}, {CANCELLED, WAITS}),
        # ...or was cancelled without naming the parent.
        ([], {4: {"last_error": "cancelled by hand"}}, {CANCELLED}),
        # the doomed task succeeded.
        ([], {3: {"state": "succeeded"}}, {CANCELLED}),
        # p-2's wait returned a result that is not the stored one.
        ([], {2: {"result": '{"attempt":2}'}}, {WAITS}),
    ],
)
def test_dependency_and_wait_checks_find_violations(
    tmp_path: Path,
    consumer_lines: list[str],
    doctor: dict[int, dict[str, object]],
    failing: set[str],
) -> None:
    history = _flow_history(tmp_path, *consumer_lines)
    stored = _flow_stored()
    for task_id, changes in doctor.items():
        stored[task_id] = dataclasses.replace(stored[task_id], **changes)  # type: ignore[arg-type]
    verdicts = _flow_verdicts(history, stored)
    assert {name for name, passed in verdicts.items() if not passed} == failing


ScheduleCase = tuple[dict[str, StoredSchedule], list[Firing], list[BrokerLife], list[Probe]]


def _schedule_case() -> ScheduleCase:
    """Every 1 s: served 99.5-101.7, down until 103.4 (slot 102 missed), served to 107.5
    but stalled from 105.9 to 107.3 (the prober waited: slot 106 missed)."""
    lives = [BrokerLife(99.0, 99.5, 101.7, "killed"), BrokerLife(101.8, 103.4, 107.5, "stopped")]
    probes = [*_probes(99.5, 101.6), Probe(101.7, None), Probe(102.5, None)]
    probes += [*_probes(103.4, 105.8), Probe(105.9, 107.3), *_probes(107.4, 107.5)]
    fired_at = {100: 100.01, 101: 101.02, 103: 103.3, 104: 104.01, 105: 105.02, 107: 107.3}
    firings = [Firing("s", float(slot), at, slot) for slot, at in fired_at.items()]
    return {"s": StoredSchedule("s", 1.0, 107.0, 108.0)}, firings, lives, probes


def test_schedule_checks_accept_once_per_slot_and_skips_across_downtime_or_a_stall() -> None:
    schedules, firings, lives, probes = _schedule_case()
    checks, counts = flows.check_schedules(schedules, firings, lives, probes)
    assert all(c.passed for c in checks), checks
    # Owed: 100 (first life), 104 (second); 101, 103 and 105 overlap downtime or the stall.
    assert counts["schedule slots owed while serving"] == 2
    assert counts["schedule slots skipped across downtime or a stall"] == 2  # 102, 106


def test_responsive_stretches_end_at_a_slow_or_missing_answer() -> None:
    probes = [*_probes(0.0, 1.0), Probe(1.1, 1.5), *_probes(1.6, 2.0), Probe(2.1, None)]
    probes += _probes(2.2, 3.0)
    assert flows.responsive(probes) == [
        (pytest.approx(0.01), pytest.approx(1.01)),
        (pytest.approx(1.5), pytest.approx(2.01)),
        (pytest.approx(2.21), pytest.approx(3.01)),
    ]


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ("twice", "no schedule slot fired twice"),
        ("early", "each firing is the latest due slot, never early (missed = latest)"),
        ("stale", "each firing is the latest due slot, never early (missed = latest)"),
        ("lost", "no slot lost while the broker served"),
        ("not advanced",
         "each schedule's last_slot is its latest task (enqueue and advance atomic)"),
    ],
)  # fmt: skip
def test_schedule_checks_find_violations(change: str, failing: str) -> None:
    schedules, firings, lives, probes = _schedule_case()
    if change == "twice":
        firings.append(Firing("s", 104.0, 104.2, 99))
    elif change == "early":  # slot 104 fired before it was due
        firings[3] = Firing("s", 104.0, 103.95, 104)
    elif change == "stale":  # slot 104 fired when 105 was the latest due
        firings[3] = Firing("s", 104.0, 105.01, 104)
    elif change == "lost":  # the broker served through slot 104 and did not fire it
        del firings[3]
    else:  # a task for slot 107, but the schedule still says 105
        schedules["s"] = StoredSchedule("s", 1.0, 105.0, 106.0)
    verdicts = flows.check_schedules(schedules, firings, lives, probes)[0]
    checks = {c.name: c.passed for c in verdicts}
    assert not checks.pop(failing)
    assert all(checks.values()), checks
