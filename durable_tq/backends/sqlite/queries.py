"""Every SQL statement the broker runs, by name. sqlite3 prepares each once per connection.

``backends.postgres.queries`` has the same names (the broker reads them from
``store.queries``); a name that only one backend needs is None in the other.
"""

#: The placeholder of a positional parameter (SQL built in code: ``reads.read_task_page``).
PARAM = "?"

# Columns of the wire task object, in the order rows come back.
TASK_COLUMNS = (
    "id, queue, state, payload, priority, attempts, max_attempts, run_at, created_at,"
    " updated_at, lease_expires_at, worker_id, last_error, result, unique_key, finished_at,"
    " progress, progress_message, cancel_requested, result_ttl, expires_at, concurrency_key"
)

# --- enqueue ----------------------------------------------------------------------------------

FIND_LIVE_UNIQUE = """
SELECT id FROM tasks
WHERE queue = ? AND unique_key = ? AND state IN ('waiting', 'scheduled', 'queued', 'leased')
"""

QUEUE_DEPTH = """
SELECT coalesce(sum(n), 0) FROM queue_counts
WHERE queue = ? AND state IN ('scheduled', 'queued')
"""

INSERT_TASK = """
INSERT INTO tasks (queue, state, payload, priority, max_attempts, lease_seconds, run_at,
                   created_at, updated_at, unique_key, concurrency_key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# Only for a task that has them: a plain enqueue stays one INSERT.
SET_TASK_OPTIONS = "UPDATE tasks SET result_ttl = ?, on_parent_failure = ? WHERE id = ?"

# --- dependencies (task_deps) -------------------------------------------------------------------

PARENT_STATE = "SELECT state FROM tasks WHERE id = ?"
INSERT_DEP = "INSERT OR IGNORE INTO task_deps (child, parent) VALUES (?, ?)"
HOLD_CHILD = "UPDATE tasks SET state = 'waiting', waiting_on = ? WHERE id = ?"
# Born cancelled: a parent had already ended dead or cancelled.
CANCEL_AT_BIRTH = """
UPDATE tasks SET state = 'cancelled', last_error = ?, finished_at = ? WHERE id = ?
"""

# The waiting children of a parent that just finished, and what each does on a failure.
CHILDREN_OF = """
SELECT t.id, t.queue, t.on_parent_failure FROM task_deps d JOIN tasks t ON t.id = d.child
WHERE d.parent = ? AND t.state = 'waiting'
"""
PARENT_DONE = """
UPDATE tasks SET waiting_on = waiting_on - 1 WHERE id = ? AND state = 'waiting'
RETURNING waiting_on
"""
RELEASE_CHILD = """
UPDATE tasks SET state = CASE WHEN run_at > :now THEN 'scheduled' ELSE 'queued' END,
                 updated_at = :now
WHERE id = :id AND state = 'waiting'
RETURNING state, run_at
"""
CANCEL_CHILD = """
UPDATE tasks SET state = 'cancelled', last_error = :error, finished_at = :now, updated_at = :now
WHERE id = :id AND state = 'waiting'
"""
FORGET_DEPS_OF_CHILD = "DELETE FROM task_deps WHERE child = ?"

# Result expiry: when a task finishes, it is kept for its own result_ttl, else its queue's,
# else the broker's retention (NULL: kept for ever).
SET_EXPIRY = """
UPDATE tasks SET expires_at = finished_at + coalesce(
    result_ttl, (SELECT q.result_ttl FROM queues q WHERE q.name = tasks.queue), :retention)
WHERE id IN (SELECT value FROM json_each(:ids)) AND finished_at IS NOT NULL
"""

INSERT_QUEUE = "INSERT OR IGNORE INTO queues (name) VALUES (?)"

# PostgreSQL only: per-broker count rows folded by the sweep, notifications to other brokers.
FOLD_COUNTS: str | None = None
NOTIFY: str | None = None

# The writer adds up a batch's state changes and applies them here, once per queue and state,
# just before COMMIT (Store.moved): cheaper than a trigger per row.
ADD_TO_COUNTS = """
INSERT INTO queue_counts (queue, state, n) VALUES (?, ?, ?)
ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n
"""

# --- claim ------------------------------------------------------------------------------------

WORKER_FOR_CLAIM = """
SELECT w.state, w.concurrency + w.prefetch,
       (SELECT count(*) FROM tasks t WHERE t.state = 'leased' AND t.worker_id = w.id)
FROM workers w WHERE w.id = ?
"""

READY_IN_QUEUE = """
SELECT id, priority FROM tasks
WHERE state = 'queued' AND queue = ?
ORDER BY priority DESC, id LIMIT ?
"""

# ?1 token salt is not needed: randomblob gives every row its own fresh token.
_LEASE_SET = """
SET state = 'leased',
    attempts = attempts + 1,
    lease_token = lower(hex(randomblob(12))),
    lease_expires_at = :now + coalesce(:lease, lease_seconds),
    worker_id = :worker_id,
    updated_at = :now,
    leased_at = :now
"""
# run_at: for the enqueue -> claim histogram (durable_tq.core.latency), read from the row
# being updated anyway.
_LEASE_RETURNING = """
RETURNING id, queue, payload, priority, attempts, lease_token, lease_expires_at, run_at
"""

LEASE_BEST_OF_QUEUE = (
    "UPDATE tasks"
    + _LEASE_SET
    + """WHERE id IN (SELECT id FROM tasks WHERE state = 'queued' AND queue = :queue
                      ORDER BY priority DESC, id LIMIT :limit)"""
    + _LEASE_RETURNING
)

LEASE_IDS = (
    "UPDATE tasks"
    + _LEASE_SET
    + "WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'queued'"
    + _LEASE_RETURNING
)

# --- lease holders ------------------------------------------------------------------------------

LEASE_OF = """
SELECT state, lease_token, lease_expires_at, attempts, max_attempts, queue, cancel_requested
FROM tasks WHERE id = ?
"""

ACK = """
UPDATE tasks
SET state = 'succeeded', result = ?, finished_at = ?, updated_at = ?, lease_expires_at = NULL
WHERE id = ? AND state = 'leased' AND lease_token = ? AND lease_expires_at > ?
RETURNING queue, leased_at
"""

TASK_EXISTS = "SELECT 1 FROM tasks WHERE id = ?"

RETRY = """
UPDATE tasks
SET state = ?, run_at = ?, last_error = ?, updated_at = ?, lease_expires_at = NULL
WHERE id = ?
"""

BURY = """
UPDATE tasks
SET state = 'dead', last_error = ?, finished_at = ?, updated_at = ?, lease_expires_at = NULL
WHERE id = ?
"""

RELEASE = """
UPDATE tasks
SET state = ?, run_at = ?, attempts = attempts - 1, updated_at = ?, lease_expires_at = NULL
WHERE id = ?
"""

EXTEND = """
UPDATE tasks SET lease_expires_at = ?, updated_at = ?
WHERE id = ? AND state = 'leased' AND lease_token = ? AND lease_expires_at > ?
RETURNING cancel_requested
"""

PROGRESS = """
UPDATE tasks SET progress = ?, progress_message = ?, updated_at = ?
WHERE id = ? AND state = 'leased' AND lease_token = ? AND lease_expires_at > ?
RETURNING cancel_requested
"""

# Ended by its worker because a cancel was requested (settle outcome ``cancel``), or a
# release/retry of a task whose cancel was requested.
CANCEL_LEASED = """
UPDATE tasks
SET state = 'cancelled', last_error = ?, finished_at = ?, updated_at = ?, lease_expires_at = NULL
WHERE id = ?
"""

REQUEST_CANCEL = "UPDATE tasks SET cancel_requested = 1, updated_at = ? WHERE id = ?"

# The leases of a worker whose cancel was requested (through tasks_worker_leases).
CANCELS_FOR_WORKER = """
SELECT id FROM tasks WHERE state = 'leased' AND worker_id = ? AND cancel_requested = 1
"""

# --- operator operations ----------------------------------------------------------------------

TASK_STATE = "SELECT state, queue FROM tasks WHERE id = ?"

CANCEL = """
UPDATE tasks SET state = 'cancelled', finished_at = ?, updated_at = ?
WHERE id = ? AND state IN ('waiting', 'scheduled', 'queued', 'dead')
"""

QUEUE_SETTINGS = "SELECT result_ttl FROM queues WHERE name = ?"
SET_QUEUE_RESULT_TTL = """
INSERT INTO queues (name, result_ttl) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET result_ttl = excluded.result_ttl
"""

_REQUEUE_SET = """
UPDATE OR IGNORE tasks
SET state = 'queued', attempts = 0, run_at = :now, updated_at = :now, finished_at = NULL,
    lease_expires_at = NULL, lease_token = NULL, worker_id = NULL, cancel_requested = 0,
    expires_at = NULL
"""

REQUEUE_IDS = (
    _REQUEUE_SET
    + """WHERE id IN (SELECT value FROM json_each(:ids)) AND state = :state
RETURNING queue, id"""
)

REQUEUE_QUEUE = _REQUEUE_SET + "WHERE queue = :queue AND state = :state RETURNING queue, id"

# Why a task was not requeued (OR IGNORE skips a row whose unique_key a live task holds).
REQUEUE_SKIPPED_TASK = "SELECT queue, state, unique_key FROM tasks WHERE id = ?"

#: A requeue by queue lists at most this many of the tasks it had to leave.
REQUEUE_SKIPPED_LISTED = 1000

REQUEUE_LEFT_IN_QUEUE = f"""
SELECT id FROM tasks WHERE queue = ? AND state = ? ORDER BY id LIMIT {REQUEUE_SKIPPED_LISTED}
"""

SET_PAUSED = """
INSERT INTO queues (name, paused) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused
"""

PURGE_QUEUE = "DELETE FROM tasks WHERE queue = ? AND state != 'leased' RETURNING state, id"
PURGE_QUEUE_STATE = "DELETE FROM tasks WHERE queue = ? AND state = ? RETURNING state, id"

# --- workers ----------------------------------------------------------------------------------

REGISTER_WORKER = """
INSERT INTO workers (id, queues, concurrency, prefetch, meta, connected, registered_at,
                     last_heartbeat)
VALUES (:id, :queues, :concurrency, :prefetch, :meta, 1, :now, :now)
ON CONFLICT (id) DO UPDATE SET
    queues = excluded.queues, concurrency = excluded.concurrency,
    prefetch = excluded.prefetch, meta = excluded.meta,
    connected = 1, last_heartbeat = excluded.last_heartbeat,
    state = CASE WHEN state = 'terminate' THEN 'running' ELSE state END
"""

HEARTBEAT = "UPDATE workers SET last_heartbeat = ?, connected = 1 WHERE id = ? RETURNING state"

SET_WORKER_STATE = "UPDATE workers SET state = ? WHERE id = ?"

WORKER_GONE = "UPDATE workers SET connected = 0 WHERE id = ?"

RELEASE_WORKER_LEASES = """
UPDATE tasks
SET state = CASE WHEN cancel_requested THEN 'cancelled'
                 WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN :now END,
    last_error = CASE WHEN cancel_requested THEN 'cancelled; its worker disconnected'
                      ELSE 'worker disconnected' END,
    run_at = :now, updated_at = :now, lease_expires_at = NULL
WHERE state = 'leased' AND worker_id = :worker_id
RETURNING queue, state, id
"""

LIST_WORKERS = """
SELECT id, queues, concurrency, state, last_heartbeat, connected, meta, registered_at, prefetch
FROM workers ORDER BY id
"""

LEASES_BY_WORKER = """
SELECT worker_id, count(*) FROM tasks WHERE state = 'leased' AND worker_id IS NOT NULL
GROUP BY worker_id
"""

# Live: connected now (WORKER_GONE clears it when a worker's last connection closes, after
# a bye too) and heard from within worker_timeout (a crashed broker leaves connected = 1).
LIVE_WORKERS = "SELECT count(*) FROM workers WHERE connected = 1 AND last_heartbeat > ?"

# --- reads ------------------------------------------------------------------------------------

GET_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?"

QUEUE_COUNTS = "SELECT queue, state, n FROM queue_counts WHERE n > 0"
QUEUES = "SELECT name, paused FROM queues"

# Reads every ready row of the queue (through tasks_queue_state): stats only, off the writer.
OLDEST_QUEUED = "SELECT min(run_at) FROM tasks WHERE queue = ? AND state = 'queued'"

# --- sweeps -----------------------------------------------------------------------------------

SWEEP_EXPIRED_LEASES = """
UPDATE tasks
SET state = CASE WHEN cancel_requested THEN 'cancelled'
                 WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN :now END,
    last_error = CASE WHEN cancel_requested THEN 'cancelled; its lease ran out'
                      WHEN lease_expires_at <= :now THEN 'lease expired'
                      ELSE 'worker timed out' END,
    run_at = :now, updated_at = :now, lease_expires_at = NULL
WHERE state = 'leased'
  AND (lease_expires_at <= :now
       OR worker_id IN (SELECT id FROM workers WHERE last_heartbeat <= :worker_deadline))
RETURNING queue, state, id
"""

SWEEP_DUE = """
UPDATE tasks SET state = 'queued', updated_at = :now
WHERE state = 'scheduled' AND run_at <= :now
RETURNING queue
"""

# Tasks finished before expires_at existed (schema version 3) go by retention.
SWEEP_RETENTION = """
DELETE FROM tasks WHERE id IN (
    SELECT id FROM tasks
    WHERE state IN ('succeeded', 'dead', 'cancelled') AND finished_at <= :cutoff
      AND expires_at IS NULL
    LIMIT :limit)
RETURNING queue, state, id
"""

SWEEP_EXPIRED_RESULTS = """
DELETE FROM tasks WHERE id IN (
    SELECT id FROM tasks WHERE expires_at <= :now
      AND state IN ('succeeded', 'dead', 'cancelled') LIMIT :limit)
RETURNING queue, state, id
"""

FORGET_DEPS_OF_DELETED = """
DELETE FROM task_deps WHERE child IN (SELECT value FROM json_each(:ids))
"""

SWEEP_FORGOTTEN_WORKERS = """
DELETE FROM workers WHERE connected = 0 AND last_heartbeat <= :cutoff
  AND id NOT IN (SELECT worker_id FROM tasks WHERE state = 'leased' AND worker_id IS NOT NULL)
"""

NEXT_DUE = "SELECT min(run_at) FROM tasks WHERE state = 'scheduled'"
NEXT_EXPIRY = "SELECT min(lease_expires_at) FROM tasks WHERE state = 'leased'"

# --- queue limits (durable_tq.core.limits) --------------------------------------------------------

QUEUE_STATE_COUNT = "SELECT n FROM queue_counts WHERE queue = ? AND state = ?"

QUEUE_LIMITS = "SELECT name, rate, burst, max_leased, key_concurrency FROM queues"
QUEUE_LIMITS_OF = QUEUE_LIMITS + " WHERE name = ?"

# One writer: a limited queue's claims never race (PostgreSQL locks the queue's row).
LOCK_LIMITED_QUEUE: str | None = None
# Rate limits: the buckets are in the broker's memory (core.limits.TokenBucket); PostgreSQL
# keeps them in the queues rows, shared by its brokers.
LOCK_BUCKETS: str | None = None
SAVE_BUCKET: str | None = None
BUCKET_OF: str | None = None

SET_QUEUE_LIMITS = """
INSERT INTO queues (name, rate, burst, max_leased, key_concurrency)
VALUES (:queue, :rate, :burst, :max_leased, :key_concurrency)
ON CONFLICT (name) DO UPDATE SET rate = excluded.rate, burst = excluded.burst,
    max_leased = excluded.max_leased, key_concurrency = excluded.key_concurrency
"""

QUEUE_COUNTS_OF = "SELECT state, n FROM queue_counts WHERE queue = ?"

# Leased tasks per key of a queue, through tasks_leased_by_key (at most the limits' worth).
LEASED_BY_KEY = """
SELECT concurrency_key, count(*) FROM tasks
WHERE state = 'leased' AND queue = ? AND concurrency_key IS NOT NULL
GROUP BY concurrency_key
"""

# The distinct keys with ready tasks: one seek of tasks_ready_by_key per key, so however many
# tasks wait behind a key, it costs one step.
READY_KEYS = """
WITH RECURSIVE keys(k) AS (
    SELECT (SELECT concurrency_key FROM tasks
            WHERE state = 'queued' AND queue = :queue AND concurrency_key IS NOT NULL
            ORDER BY concurrency_key LIMIT 1)
    UNION ALL
    SELECT (SELECT concurrency_key FROM tasks
            WHERE state = 'queued' AND queue = :queue AND concurrency_key > keys.k
            ORDER BY concurrency_key LIMIT 1)
    FROM keys WHERE keys.k IS NOT NULL
)
SELECT k FROM keys WHERE k IS NOT NULL
"""

READY_OF_KEY = """
SELECT id, priority FROM tasks INDEXED BY tasks_ready_by_key
WHERE state = 'queued' AND queue = ? AND concurrency_key = ?
ORDER BY priority DESC, id LIMIT ?
"""

READY_UNKEYED = """
SELECT id, priority FROM tasks INDEXED BY tasks_ready_by_key
WHERE state = 'queued' AND queue = ? AND concurrency_key IS NULL
ORDER BY priority DESC, id LIMIT ?
"""

# --- schedules (durable_tq.core.scheduler) --------------------------------------------------------

SCHEDULE_COLUMNS = (
    "name, queue, cron, tz, every, anchor, payload, priority, missed, paused, next_run_at,"
    " last_slot, created_at, updated_at"
)

GET_SCHEDULE = f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?"
LIST_SCHEDULES = f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"

UPSERT_SCHEDULE = """
INSERT INTO schedules (name, queue, cron, tz, every, anchor, payload, priority, missed,
                       next_run_at, created_at, updated_at)
VALUES (:name, :queue, :cron, :tz, :every, :anchor, :payload, :priority, :missed,
        :next_run_at, :now, :now)
ON CONFLICT (name) DO UPDATE SET
    queue = excluded.queue, cron = excluded.cron, tz = excluded.tz, every = excluded.every,
    anchor = excluded.anchor, payload = excluded.payload, priority = excluded.priority,
    missed = excluded.missed, next_run_at = excluded.next_run_at, updated_at = excluded.updated_at
"""

DELETE_SCHEDULE = "DELETE FROM schedules WHERE name = ?"

SET_SCHEDULE_PAUSED = """
UPDATE schedules SET paused = :paused, next_run_at = coalesce(:next_run_at, next_run_at),
    updated_at = :now
WHERE name = :name
"""

DUE_SCHEDULES = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE paused = 0 AND next_run_at <= ?
ORDER BY next_run_at LIMIT ?
"""

ADVANCE_SCHEDULE = """
UPDATE schedules SET next_run_at = :next_run_at, last_slot = coalesce(:slot, last_slot),
    updated_at = :now
WHERE name = :name AND next_run_at = :due_at
"""

NEXT_SCHEDULE = "SELECT min(next_run_at) FROM schedules WHERE paused = 0"
