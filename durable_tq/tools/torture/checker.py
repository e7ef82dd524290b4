"""Reading the histories and the database back, and the checks held against them."""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from durable_tq.tools.torture.children import QUEUE, TICKS

log = logging.getLogger("durable_tq.tools.torture")


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


# --- reading the histories back -----------------------------------------------------------------


@dataclass(frozen=True)
class WaitRecord:
    """A ``wait`` a producer sent and what came back (``outcome`` "ok" when it returned)."""

    task_id: int
    outcome: str
    state: str
    sent_at: float
    returned_at: float
    #: The result it returned, as JSON text ("-" when it returned nothing).
    result: str


@dataclass
class History:
    """What the clients were told, from every history file of a run."""

    #: task_id -> uid, for every enqueue that got ok.
    enqueued: dict[int, str] = field(default_factory=dict)
    #: task_ids that two different ok'd enqueues were told.
    reused_ids: list[int] = field(default_factory=list)
    #: task_id -> lease tokens of the acks that got ok.
    acked: defaultdict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: First uid of an enqueue_many -> every uid it carried (whatever its outcome).
    batches: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: (task_id, token) of acks sent after their lease ended that got ok.
    late_acks_ok: list[tuple[int, str]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    #: task_id -> (received at, lease expires at, token) of every claim that came back.
    leases: defaultdict[int, list[tuple[float, float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    #: Tokens a fail or release was sent for (recorded before sending, whatever came back):
    #: their lease may have ended before it expired.
    handed_back: set[str] = field(default_factory=set)
    #: Lease token -> when an ack with it was first sent (``time.time()`` of the consumer).
    ack_sent: dict[str, float] = field(default_factory=dict)
    waits: list[WaitRecord] = field(default_factory=list)
    #: "op outcome" -> how many of them were items of a settle (also in ``outcomes``).
    via_settle: Counter[str] = field(default_factory=Counter)
    #: Items sent in settle requests (whatever came back).
    settle_items: int = 0
    claims: int = 0
    redeliveries: int = 0
    malformed: int = 0


def _history_lines(workdir: Path) -> Iterator[list[str]]:
    for path in sorted(workdir.glob("*.history")):
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                yield line.split()


def read_history(workdir: Path) -> History:
    history = History()
    for fields in _history_lines(workdir):
        try:
            _read_line(history, fields)
        except (IndexError, ValueError):
            history.malformed += 1
    return history


def _read_line(history: History, fields: list[str]) -> None:
    op = fields[0]
    if op == "claim":
        history.claims += 1
        if int(fields[2]) > 1:
            history.redeliveries += 1
        history.leases[int(fields[1])].append((float(fields[5]), float(fields[4]), fields[3]))
        return
    outcome = fields[1]
    if _read_ack_sent_or_wait(history, op, outcome, fields):
        return
    if op == "settle":  # settle <outcome> <items sent> <tasks claimed>
        history.outcomes[f"settle {outcome}"] += 1
        history.settle_items += int(fields[2])
        return
    if fields[-1] == "settle":  # one item's own result inside a settle
        history.via_settle[f"{op} {outcome}"] += 1
    if op in ("fail", "release"):
        history.handed_back.add(fields[3])
        if outcome == "sent":
            return
    if op == "enqueue" and len(fields) > 4 and fields[4] != "-":
        history.batches[fields[4]].append(fields[3])
    history.outcomes[f"{op} {outcome}"] += 1
    if outcome != "ok":
        return
    task_id = int(fields[2])
    if op == "enqueue":
        if task_id in history.enqueued:
            history.reused_ids.append(task_id)
        history.enqueued[task_id] = fields[3]
    elif op == "ack":
        history.acked[task_id].append(fields[3])
    elif op == "late_ack":
        history.late_acks_ok.append((task_id, fields[3]))


def _read_ack_sent_or_wait(history: History, op: str, outcome: str, fields: list[str]) -> bool:
    if op == "ack" and outcome == "sent":  # ack sent <task> <token> <time>
        sent = float(fields[4])
        history.ack_sent[fields[3]] = min(sent, history.ack_sent.get(fields[3], sent))
        return True
    if op == "wait":  # wait <outcome> <task> <state> <sent> <returned> <result>
        record = WaitRecord(
            int(fields[2]), outcome, fields[3], float(fields[4]), float(fields[5]), fields[6]
        )
        history.waits.append(record)
        history.outcomes[f"wait {outcome}"] += 1
        return True
    return False


@dataclass(frozen=True)
class StoredTask:
    state: str
    uid: str | None
    lease_token: str | None
    #: The uids of its parents (``after``), from its payload.
    parents: tuple[str, ...] = ()
    #: Its consumers fail it for good: it must end dead, and its dependents cancelled.
    doomed: bool = False
    last_error: str | None = None
    #: The ack's result as stored (JSON text), None when there is none.
    result: str | None = None
    queue: str = QUEUE


def read_database(db_path: Path) -> dict[int, StoredTask]:
    """Every task of the torture queue and of the schedules' queue, read through a
    read-only connection."""
    conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT id, state, payload, lease_token, last_error, result, queue FROM tasks "
            "WHERE queue IN (?, ?)",
            (QUEUE, TICKS),
        ).fetchall()
    finally:
        conn.close()
    return stored_tasks(rows)


def stored_tasks(rows: Iterable[tuple[Any, ...]]) -> dict[int, StoredTask]:
    """Rows of (id, state, payload, lease_token, last_error, result, queue), as either
    backend returns them, by task id."""
    stored = {}
    for task_id, state, payload, token, last_error, result, queue in rows:
        decoded = json.loads(payload)
        fields = decoded if isinstance(decoded, dict) else {}
        stored[task_id] = StoredTask(
            state,
            fields.get("uid"),
            token,
            parents=tuple(fields.get("after", ())),
            doomed=fields.get("doom") is True,
            last_error=last_error,
            result=result,
            queue=queue,
        )
    return stored


def expected_ends(stored: dict[int, StoredTask]) -> dict[int, str]:
    """How each task of the torture queue must end: a doomed task ``dead``, a task with a
    dead or cancelled parent ``cancelled``, every other one ``succeeded``. A parent is always
    older than its child (it must exist when the child is enqueued), so one pass in id
    order sees every parent before its children."""
    by_uid = {task.uid: task_id for task_id, task in stored.items() if task.uid is not None}
    ends: dict[int, str] = {}
    for task_id in sorted(stored):
        task = stored[task_id]
        if task.queue != QUEUE:
            continue
        parent_ends = [ends.get(by_uid.get(uid, -1), "missing") for uid in task.parents]
        if task.doomed:
            ends[task_id] = "dead"
        elif any(end in ("dead", "cancelled") for end in parent_ends):
            ends[task_id] = "cancelled"
        else:
            ends[task_id] = "succeeded"
    return ends


def examples(items: list[Any], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _lease_overlaps(history: History) -> list[str]:
    """Claims handed out while an earlier lease on the same task was still held.

    A later claim received before the earlier lease's expiry was made by the broker before
    it, too (same clock). Allowed only when the earlier holder sent a fail or release.
    Claims are taken in the order the broker made them — by their expiry on the broker's
    clock, since every claim of a run asks for the same lease — not in the order they were
    received: a starved consumer may record its claim after the next holder did.
    """
    overlaps = []
    for task_id, leases in history.leases.items():
        leases.sort(key=lambda lease: (lease[1], lease[0]))
        for (_, expires, token), (received, _, _) in itertools.pairwise(leases):
            if received < expires - 0.001 and token not in history.handed_back:
                overlaps.append(f"{task_id} ({expires - received:.3f} s early)")
    return overlaps


def check_history(history: History, stored: dict[int, StoredTask]) -> list[Check]:
    """Hold what the clients were told against what the database holds."""
    lost = [
        task_id
        for task_id, uid in history.enqueued.items()
        if task_id not in stored or stored[task_id].uid != uid
    ]
    # Doomed tasks and their dependents must not succeed: flows.check_dependencies holds them.
    ends = expected_ends(stored)
    to_succeed = [t for t in history.enqueued if ends.get(t, "succeeded") == "succeeded"]
    unfinished = [
        f"{task_id} ({stored[task_id].state})"
        for task_id in to_succeed
        if task_id in stored and stored[task_id].state != "succeeded"
    ]
    succeeded = sum(
        1 for task_id in to_succeed if task_id in stored and stored[task_id].state == "succeeded"
    )
    double_acked = [
        f"{task_id} {tokens}" for task_id, tokens in history.acked.items() if len(tokens) > 1
    ]
    undone_acks = [
        task_id
        for task_id, tokens in history.acked.items()
        if task_id not in stored
        or stored[task_id].state != "succeeded"
        or stored[task_id].lease_token not in tokens
    ]
    tokens = Counter(token for leases in history.leases.values() for _, _, token in leases)
    reused_tokens = [token for token, n in tokens.items() if n > 1]
    overlaps = _lease_overlaps(history)
    uids = Counter(task.uid for task in stored.values() if task.uid is not None)
    duplicated = [uid for uid, n in uids.items() if n > 1]
    torn = [
        f"{first} ({sum(uid in uids for uid in batch)} of {len(batch)} stored)"
        for first, batch in history.batches.items()
        if 0 < sum(uid in uids for uid in batch) < len(batch)
    ]
    ok_enqueues = len(history.enqueued)
    return [
        Check(
            "every ok'd enqueue is stored (no lost writes)",
            not lost and not history.reused_ids,
            f"{ok_enqueues} ok'd, {len(lost)} missing"
            + (f": {examples(lost)}" if lost else "")
            + (f"; ids told twice: {examples(history.reused_ids)}" if history.reused_ids else ""),
        ),
        Check(
            "every ok'd enqueue reached succeeded (at-least-once)",
            succeeded == len(to_succeed),
            f"{succeeded} of {len(to_succeed)} succeeded"
            + (
                f" ({ok_enqueues - len(to_succeed)} doomed or dependent on a doomed task "
                "are held by the dependency checks)"
                if len(to_succeed) < ok_enqueues
                else ""
            )
            + (f"; not: {examples(unfinished)}" if unfinished else ""),
        ),
        Check(
            "at most one ok'd ack per task (fencing)",
            not double_acked,
            f"{sum(len(t) for t in history.acked.values())} ok'd acks on "
            f"{len(history.acked)} tasks"
            + (f"; twice: {examples(double_acked)}" if double_acked else ""),
        ),
        Check(
            "every ok'd ack is the stored one (acks durable)",
            not undone_acks,
            f"{len(undone_acks)} not stored"
            + (f": {examples(undone_acks)}" if undone_acks else ""),
        ),
        Check(
            "acks after the lease ended are refused (fencing)",
            not history.late_acks_ok,
            f"{history.outcomes['late_ack lease_lost']} refused with lease_lost, "
            f"{len(history.late_acks_ok)} accepted"
            + (f": {examples(history.late_acks_ok)}" if history.late_acks_ok else ""),
        ),
        Check(
            "every claim got a fresh token and a lease of its own",
            not reused_tokens and not overlaps,
            f"{history.claims} claims, {len(reused_tokens)} tokens reused, "
            f"{len(overlaps)} handed out while leased"
            + (f": {examples(overlaps)}" if overlaps else ""),
        ),
        Check(
            "enqueue_many stored all or nothing",
            not torn,
            f"{len(history.batches)} enqueue_many requests, {len(torn)} torn"
            + (f": {examples(torn)}" if torn else ""),
        ),
        Check(
            "no enqueue stored twice",
            not duplicated,
            f"{sum(uids.values())} tasks stored"
            + (f"; twice: {examples(duplicated)}" if duplicated else ""),
        ),
    ]
