"""The torture checks of dependencies, ``wait`` and schedules, held against the histories, the
database and the broker's lives (when it was known to serve).

What "handed out too soon", "a wait that lied" and "a lost slot" mean here, exactly:

* **Dependencies.** A dependent task (``after``) must not be claimed while any parent is not
  ``succeeded``. Across processes the checkable form is: every claim of a dependent was
  received after the ack that made each parent succeed was *sent* (the stored lease token
  names that ack; the consumer recorded when it sent it). A parent that did not succeed
  (doomed: failed for good, or cancelled through its own parent) leaves its dependents
  ``cancelled``, with a ``last_error`` naming a failed parent, and never claimed.
* **Waits.** A ``wait`` that returned said the task was finished; the database must agree:
  the same final state, and for ``succeeded`` the same result.
* **Schedules** (interval schedules, ``missed = latest``). A slot is fired at most once
  (one task per ``schedule:NAME:SLOT``); each firing is for the latest slot due at the
  moment it fired, never one that is not due yet (``slot <= created_at < slot + every``,
  both on the broker's clock); the schedule's ``last_slot`` is its latest task (the enqueue
  and the advance share a transaction). A slot is **lost** when the broker was seen serving
  for the whole of it — from the slot's start until the next slot — and still no task was
  fired for it. *Seen serving* means: the harness had seen this broker process answer and had
  not yet killed or stopped it, **and** its prober (a durable ``enqueue`` every
  ``PROBE_INTERVAL`` s, one at a time) got answers at most ``PROMPT`` s apart throughout.
  The second half matters on a loaded machine: a broker starved of CPU or of fsyncs for a
  second does not run its sweeper either, and a slot it could not fire is, to the broker,
  the same as one missed while down. A slot that overlaps a time the broker was down,
  starting or stalled may be skipped: with ``latest`` the broker fires only the most recent
  missed slot when it gets to run again.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from durable_tq.tools.torture.checker import (
    Check,
    History,
    StoredTask,
    examples,
    expected_ends,
)
from durable_tq.tools.torture.children import TICKS

FINISHED = ("succeeded", "dead", "cancelled")
#: The prober sends its next durable write this long after the last answer.
PROBE_INTERVAL = 0.1
#: Answers of the prober at most this far apart: the broker is working (the sweeper's own
#: two writes per sweep then fit well inside a 1 s slot).
PROMPT = 0.3


@dataclass
class BrokerLife:
    """One broker process, in ``time.time()`` seconds: started, first seen answering (None:
    never), and ended (killed or stopped; None: still running or died on its own, when the
    end is not known)."""

    started: float
    ready: float | None = None
    ended: float | None = None
    #: "killed", "stopped", "died" (exited by itself) or "" while it runs.
    how: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    def known_serving(self) -> tuple[float, float] | None:
        """From when until when it surely served (answered, not yet killed or stopped)."""
        if self.ready is None or self.ended is None or self.how == "died":
            return None
        return (self.ready, self.ended)


def read_lives(path: Path) -> list[BrokerLife]:
    if not path.exists():
        return []
    lives = []
    for line in path.read_text().splitlines():
        if line.strip():
            lives.append(BrokerLife(**json.loads(line)))
    return lives


def kill_times(lives: list[BrokerLife]) -> list[float]:
    return [life.ended for life in lives if life.how == "killed" and life.ended is not None]


@dataclass(frozen=True)
class Probe:
    """One write of the prober: when it was sent, when its ok came (None: it never did)."""

    sent: float
    answered: float | None


def read_probes(path: Path) -> list[Probe]:
    if not path.exists():
        return []
    probes = []
    for line in path.read_text().splitlines():
        sent, answered = line.split()
        probes.append(Probe(float(sent), None if answered == "-" else float(answered)))
    return probes


def responsive(probes: list[Probe], prompt: float = PROMPT) -> list[tuple[float, float]]:
    """The stretches in which the prober's answers came at most ``prompt`` apart, with no
    probe left unanswered in between."""
    stretches: list[tuple[float, float]] = []
    start = last = None
    for probe in sorted(probes, key=lambda p: p.sent):
        answered = probe.answered
        if (
            start is not None
            and last is not None
            and (answered is None or answered - last > prompt)
        ):
            stretches.append((start, last))
            start = last = None
        if answered is not None:
            start = answered if start is None else start
            last = answered
    if start is not None and last is not None:
        stretches.append((start, last))
    return [(a, b) for a, b in stretches if b > a]


# --- dependencies and waits -------------------------------------------------------------------


def _parent_success_bound(history: History, parent: StoredTask) -> float | None:
    """The earliest moment the parent can have succeeded: when the ack of its stored lease
    was sent (or, lacking that record, when that lease's claim was received)."""
    token = parent.lease_token
    if token is None:
        return None
    if token in history.ack_sent:
        return history.ack_sent[token]
    received = [r for leases in history.leases.values() for r, _, t in leases if t == token]
    return min(received) if received else None


def check_dependencies(history: History, stored: dict[int, StoredTask]) -> list[Check]:
    ends = expected_ends(stored)
    by_uid = {task.uid: task_id for task_id, task in stored.items() if task.uid is not None}
    early: list[str] = []
    wrong_end: list[str] = []
    missing: list[str] = []
    dependents = claims_checked = cancelled = doomed = 0
    for task_id, task in stored.items():
        if task.doomed:
            doomed += 1
            if task.state != "dead":
                wrong_end.append(f"{task_id} doomed but {task.state}")
        if not task.parents:
            continue
        dependents += 1
        parents = []
        for uid in task.parents:
            if uid not in by_uid:
                missing.append(f"{task_id} (parent {uid})")
            else:
                parents.append((by_uid[uid], stored[by_uid[uid]]))
        for received, _, _ in history.leases.get(task_id, ()):
            claims_checked += 1
            for parent_id, parent in parents:
                if parent.state != "succeeded":
                    early.append(f"{task_id} claimed, parent {parent_id} ended {parent.state}")
                    continue
                bound = _parent_success_bound(history, parent)
                if bound is None:
                    missing.append(f"{task_id} (no ack of parent {parent_id} recorded)")
                elif received <= bound:
                    early.append(
                        f"{task_id} claimed {bound - received:.3f} s before parent "
                        f"{parent_id}'s ack was sent"
                    )
        if ends.get(task_id) == "cancelled":
            cancelled += 1
            failed = [pid for pid, p in parents if p.state in ("dead", "cancelled")]
            named = any(f"parent task {pid} " in (task.last_error or "") for pid in failed)
            if task.state != "cancelled" or not named:
                wrong_end.append(f"{task_id} {task.state} ({task.last_error})")
    return [
        Check(
            "no dependent handed out before its parents succeeded",
            not early and not missing,
            f"{dependents} dependents, {claims_checked} of their claims checked, "
            f"{len(early)} too soon"
            + (f": {examples(early)}" if early else "")
            + (f"; not checkable: {examples(missing)}" if missing else ""),
        ),
        Check(
            "a failed parent's dependents ended cancelled, naming it",
            not wrong_end,
            f"{doomed} doomed tasks, {cancelled} dependents of a failed parent"
            + (f"; wrong: {examples(wrong_end)}" if wrong_end else ""),
        ),
    ]


def _same_result(returned: str, stored: str | None) -> bool:
    try:
        return bool(json.loads(returned) == json.loads(stored if stored is not None else "null"))
    except ValueError:
        return False


def check_waits(
    history: History, stored: dict[int, StoredTask], kills: list[float]
) -> tuple[Check, dict[str, Any]]:
    returned = [w for w in history.waits if w.outcome == "ok"]
    wrong = []
    for wait in returned:
        task = stored.get(wait.task_id)
        if task is None:
            wrong.append(f"{wait.task_id} returned {wait.state}, not stored")
        elif wait.state not in FINISHED or wait.state != task.state:
            wrong.append(f"{wait.task_id} returned {wait.state}, stored {task.state}")
        elif task.state == "succeeded" and not _same_result(wait.result, task.result):
            wrong.append(f"{wait.task_id} returned {wait.result}, stored {task.result}")
    across = sum(1 for w in returned if any(w.sent_at < k < w.returned_at for k in kills))
    states = Counter(w.state for w in returned)
    check = Check(
        "every wait that returned agrees with the database",
        not wrong,
        f"{len(returned)} waits returned ({across} across a broker kill), "
        f"{len(wrong)} disagree" + (f": {examples(wrong)}" if wrong else ""),
    )
    counts = {
        "waits returned": len(returned),
        "waits returned across a broker kill": across,
        "waits returned succeeded / dead / cancelled": "/".join(
            str(states[s]) for s in ("succeeded", "dead", "cancelled")
        ),
        "waits timed out": history.outcomes["wait timeout"],
    }
    return check, counts


# --- schedules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Firing:
    """A task a schedule fired: its slot, and when the broker fired it (its clock)."""

    name: str
    slot: float
    created_at: float
    task_id: int


@dataclass(frozen=True)
class StoredSchedule:
    name: str
    every: float
    last_slot: float | None
    next_run_at: float


def read_schedules(
    db_path: Path, queue: str = TICKS
) -> tuple[dict[str, StoredSchedule], list[Firing]]:
    """The interval schedules and every task fired into ``queue``, read-only."""
    conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    try:
        schedules = {
            row[0]: StoredSchedule(*row)
            for row in conn.execute(
                "SELECT name, every, last_slot, next_run_at FROM schedules WHERE every IS NOT NULL"
            )
        }
        rows = conn.execute(
            "SELECT id, unique_key, created_at FROM tasks WHERE queue = ?", (queue,)
        ).fetchall()
    finally:
        conn.close()
    firings = []
    for task_id, key, created_at in rows:
        _, name, slot = str(key).rsplit(":", 2)  # schedule:NAME:SLOT
        firings.append(Firing(name, float(slot), created_at, task_id))
    return schedules, firings


def _grid(slot: float, every: float) -> int:
    return round(slot / every)


def _seen_serving(lives: list[BrokerLife], probes: list[Probe]) -> list[tuple[float, float]]:
    """Where a life's known-serving interval and a responsive stretch overlap."""
    seen = []
    for life in lives:
        known = life.known_serving()
        if known is None:
            continue
        for start, end in responsive(probes):
            if max(start, known[0]) < min(end, known[1]):
                seen.append((max(start, known[0]), min(end, known[1])))
    return seen


def check_schedules(
    schedules: dict[str, StoredSchedule],
    firings: list[Firing],
    lives: list[BrokerLife],
    probes: list[Probe],
) -> tuple[list[Check], dict[str, Any]]:
    """Once per slot, for the latest due slot, none lost while the broker served (module
    docstring)."""
    per_slot = Counter((f.name, f.slot) for f in firings)
    twice = [f"{name} {slot:.3f} x{n}" for (name, slot), n in per_slot.items() if n > 1]
    off_policy = []
    for f in firings:
        every = schedules[f.name].every if f.name in schedules else math.nan
        on_grid = abs(f.slot / every - _grid(f.slot, every)) < 1e-6
        # The slot key is rounded to the millisecond.
        if not (on_grid and f.slot - 0.0005 <= f.created_at < f.slot + every):
            off_policy.append(f"{f.name} slot {f.slot:.3f} fired at {f.created_at:.3f}")
    serving = _seen_serving(lives, probes)
    lost: list[str] = []
    owed = skipped = 0
    disagree = []
    for name, schedule in schedules.items():
        fired = {_grid(f.slot, schedule.every) for f in firings if f.name == name}
        if not fired:
            continue
        latest = max(f.slot for f in firings if f.name == name)
        if schedule.last_slot is None or abs(schedule.last_slot - latest) > 0.0005:
            disagree.append(f"{name}: last_slot {schedule.last_slot}, latest task {latest:.3f}")
        if schedule.next_run_at <= latest:
            disagree.append(f"{name}: next_run_at {schedule.next_run_at} not after {latest:.3f}")
        end = max((e for _, e in serving), default=0.0)
        for k in range(min(fired), math.floor(end / schedule.every) + 1):
            slot = k * schedule.every
            whole = any(r <= slot and slot + schedule.every <= e for r, e in serving)
            owed += whole
            if k in fired:
                continue
            if whole:
                lost.append(f"{name} {slot:.3f}")
            elif k < max(fired):
                skipped += 1
    checks = [
        Check(
            "no schedule slot fired twice",
            not twice,
            f"{len(firings)} firings of {len(schedules)} schedules, {len(twice)} slots twice"
            + (f": {examples(twice)}" if twice else ""),
        ),
        Check(
            "each firing is the latest due slot, never early (missed = latest)",
            not off_policy,
            f"{len(off_policy)} off" + (f": {examples(off_policy)}" if off_policy else ""),
        ),
        Check(
            "no slot lost while the broker served",
            not lost and bool(firings),
            f"{owed} slots owed (broker seen serving throughout), {len(lost)} lost"
            + (f": {examples(lost)}" if lost else "")
            + f"; {skipped} skipped across downtime or a stall (allowed: missed = latest)"
            + ("" if firings else "; nothing fired"),
        ),
        Check(
            "each schedule's last_slot is its latest task (enqueue and advance atomic)",
            not disagree,
            f"{len(disagree)} disagree" + (f": {examples(disagree)}" if disagree else ""),
        ),
    ]
    counts = {
        "schedule firings": len(firings),
        "schedule slots owed while serving": owed,
        "schedule slots skipped across downtime or a stall": skipped,
    }
    return checks, counts
