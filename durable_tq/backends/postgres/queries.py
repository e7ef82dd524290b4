"""Every SQL statement the broker runs on PostgreSQL, by the same names as
``backends.sqlite.queries`` (the broker reads them from ``store.queries``).

Placeholders are psycopg's (``%s``, ``%(name)s``); parameters come as tuples and dicts exactly
as for SQLite. Where the two differ:

- claims read ready rows ``FOR UPDATE SKIP LOCKED`` through ``tasks_ready``, so brokers that
  claim at once take different tasks instead of waiting on each other;
- ``INSERT_TASK`` returns the new id (the store's cursor gives it as ``lastrowid``) and skips
  a row whose unique key another broker took meanwhile (``lastrowid`` is then None);
- queue counts are per-broker delta rows (``slot``), summed when read: no row is written by
  every broker (``backends.postgres.store``);
- ``json_each`` becomes ``json_array_elements_text``; ``INSERT OR IGNORE`` becomes
  ``ON CONFLICT DO NOTHING``; a requeue skips rows whose unique key a live task holds.
"""

PARAM = "%s"

TASK_COLUMNS = (
    "id, queue, state, payload, priority, attempts, max_attempts, run_at, created_at,"
    " updated_at, lease_expires_at, worker_id, last_error, result, unique_key, finished_at,"
    " progress, progress_message, cancel_requested, result_ttl, expires_at, concurrency_key"
)

_LIVE = "('waiting', 'scheduled', 'queued', 'leased')"
_IDS = "(SELECT value::bigint FROM json_array_elements_text(%(ids)s::json))"

# --- enqueue ----------------------------------------------------------------------------------

FIND_LIVE_UNIQUE = f"""
SELECT id FROM tasks WHERE queue = %s AND unique_key = %s AND state IN {_LIVE}
"""

QUEUE_DEPTH = """
SELECT coalesce(sum(n), 0)::bigint FROM queue_counts
WHERE queue = %s AND state IN ('scheduled', 'queued')
"""

INSERT_TASK = f"""
INSERT INTO tasks (queue, state, payload, priority, max_attempts, lease_seconds, run_at,
                   created_at, updated_at, unique_key, concurrency_key)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL AND state IN {_LIVE} DO NOTHING
RETURNING id
"""

SET_TASK_OPTIONS = "UPDATE tasks SET result_ttl = %s, on_parent_failure = %s WHERE id = %s"

# --- dependencies (task_deps) -------------------------------------------------------------------

# FOR SHARE: a parent finishing on another broker at the same moment either commits first
# (this read waits for it, then sees it finished: the child is not held) or waits for this
# enqueue to commit (its CHILDREN_OF, a later statement, then sees the new task_deps row).
# Without the lock both read before the other's commit and the child waited forever.
PARENT_STATE = "SELECT state FROM tasks WHERE id = %s FOR SHARE"
INSERT_DEP = "INSERT INTO task_deps (child, parent) VALUES (%s, %s) ON CONFLICT DO NOTHING"
HOLD_CHILD = "UPDATE tasks SET state = 'waiting', waiting_on = %s WHERE id = %s"
CANCEL_AT_BIRTH = """
UPDATE tasks SET state = 'cancelled', last_error = %s, finished_at = %s WHERE id = %s
"""

CHILDREN_OF = """
SELECT t.id, t.queue, t.on_parent_failure FROM task_deps d JOIN tasks t ON t.id = d.child
WHERE d.parent = %s AND t.state = 'waiting'
"""
PARENT_DONE = """
UPDATE tasks SET waiting_on = waiting_on - 1 WHERE id = %s AND state = 'waiting'
RETURNING waiting_on
"""
RELEASE_CHILD = """
UPDATE tasks SET state = CASE WHEN run_at > %(now)s THEN 'scheduled' ELSE 'queued' END,
                 updated_at = %(now)s
WHERE id = %(id)s AND state = 'waiting'
RETURNING state, run_at
"""
CANCEL_CHILD = """
UPDATE tasks SET state = 'cancelled', last_error = %(error)s, finished_at = %(now)s,
                 updated_at = %(now)s
WHERE id = %(id)s AND state = 'waiting'
"""
FORGET_DEPS_OF_CHILD = "DELETE FROM task_deps WHERE child = %s"

SET_EXPIRY = f"""
UPDATE tasks SET expires_at = finished_at + coalesce(
    result_ttl, (SELECT q.result_ttl FROM queues q WHERE q.name = tasks.queue),
    %(retention)s::double precision)
WHERE id IN {_IDS} AND finished_at IS NOT NULL
"""

INSERT_QUEUE = "INSERT INTO queues (name) VALUES (%s) ON CONFLICT DO NOTHING"

# One statement per batch: this broker's count deltas (queue_counts rows of its own slot).
ADD_TO_COUNTS = """
INSERT INTO queue_counts (queue, state, slot, n)
SELECT queue, state, %(slot)s, n
FROM unnest(%(queues)s::text[], %(states)s::text[], %(ns)s::bigint[]) AS d(queue, state, n)
ON CONFLICT (queue, state, slot) DO UPDATE SET n = queue_counts.n + excluded.n
"""

# Each broker holds the advisory lock (SLOT_LOCK, its slot) on a session of its own while it
# runs. The sweeping broker folds the rows of slots whose lock it can take (their broker is
# gone) into slot 0, so rows do not pile up per broker start, and never touches a live
# broker's rows (no lock waits between them).
SLOT_LOCK = 0x64747100
FOLD_COUNTS: str | None = f"""
WITH slots AS (SELECT DISTINCT slot FROM queue_counts WHERE slot <> 0),
     gone_slots AS (SELECT slot FROM slots
                    WHERE pg_try_advisory_xact_lock({SLOT_LOCK}, slot::integer)),
     gone AS (DELETE FROM queue_counts WHERE slot IN (SELECT slot FROM gone_slots)
              RETURNING queue, state, n),
     summed AS (SELECT queue, state, sum(n)::bigint AS n FROM gone GROUP BY queue, state)
INSERT INTO queue_counts (queue, state, slot, n) SELECT queue, state, 0, n FROM summed
ON CONFLICT (queue, state, slot) DO UPDATE SET n = queue_counts.n + excluded.n
"""

# Wakes claims (channel dtq_ready: [queue, count]), waits (dtq_done: task ids) and queue
# settings (dtq_queue: name) on the other brokers. Sent right after the COMMIT, outside the
# transaction: a transaction that notifies holds one database-wide lock through its commit's
# WAL flush, which would make every broker's commits wait for each other's fsync.
NOTIFY: str | None = """
SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS n(c, p)
"""

# --- claim ------------------------------------------------------------------------------------

WORKER_FOR_CLAIM = """
SELECT w.state, w.concurrency + w.prefetch,
       (SELECT count(*) FROM tasks t WHERE t.state = 'leased' AND t.worker_id = w.id)
FROM workers w WHERE w.id = %s
"""

READY_IN_QUEUE = """
SELECT id, priority FROM tasks
WHERE state = 'queued' AND queue = %s
ORDER BY priority DESC, id LIMIT %s
FOR UPDATE SKIP LOCKED
"""

_LEASE_SET = """
SET state = 'leased',
    attempts = attempts + 1,
    lease_token = replace(gen_random_uuid()::text, '-', ''),
    lease_expires_at = %(now)s + coalesce(%(lease)s::double precision, lease_seconds),
    worker_id = %(worker_id)s,
    updated_at = %(now)s,
    leased_at = %(now)s
"""
_LEASE_RETURNING = """
RETURNING id, queue, payload, priority, attempts, lease_token, lease_expires_at, run_at
"""

LEASE_BEST_OF_QUEUE = (
    "UPDATE tasks"
    + _LEASE_SET
    + """WHERE id IN (SELECT id FROM tasks WHERE state = 'queued' AND queue = %(queue)s
                      ORDER BY priority DESC, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"""
    + _LEASE_RETURNING
)

LEASE_IDS = (
    "UPDATE tasks" + _LEASE_SET + f"WHERE id IN {_IDS} AND state = 'queued'" + _LEASE_RETURNING
)

# --- lease holders ------------------------------------------------------------------------------

LEASE_OF = """
SELECT state, lease_token, lease_expires_at, attempts, max_attempts, queue, cancel_requested
FROM tasks WHERE id = %s
"""

ACK = """
UPDATE tasks
SET state = 'succeeded', result = %s, finished_at = %s, updated_at = %s, lease_expires_at = NULL
WHERE id = %s AND state = 'leased' AND lease_token = %s AND lease_expires_at > %s
RETURNING queue, leased_at
"""

TASK_EXISTS = "SELECT 1 FROM tasks WHERE id = %s"

RETRY = """
UPDATE tasks
SET state = %s, run_at = %s, last_error = %s, updated_at = %s, lease_expires_at = NULL
WHERE id = %s
"""

BURY = """
UPDATE tasks
SET state = 'dead', last_error = %s, finished_at = %s, updated_at = %s, lease_expires_at = NULL
WHERE id = %s
"""

RELEASE = """
UPDATE tasks
SET state = %s, run_at = %s, attempts = attempts - 1, updated_at = %s, lease_expires_at = NULL
WHERE id = %s
"""

EXTEND = """
UPDATE tasks SET lease_expires_at = %s, updated_at = %s
WHERE id = %s AND state = 'leased' AND lease_token = %s AND lease_expires_at > %s
RETURNING cancel_requested
"""

PROGRESS = """
UPDATE tasks SET progress = %s, progress_message = %s, updated_at = %s
WHERE id = %s AND state = 'leased' AND lease_token = %s AND lease_expires_at > %s
RETURNING cancel_requested
"""

CANCEL_LEASED = """
UPDATE tasks
SET state = 'cancelled', last_error = %s, finished_at = %s, updated_at = %s,
    lease_expires_at = NULL
WHERE id = %s
"""

REQUEST_CANCEL = "UPDATE tasks SET cancel_requested = 1, updated_at = %s WHERE id = %s"

CANCELS_FOR_WORKER = """
SELECT id FROM tasks WHERE state = 'leased' AND worker_id = %s AND cancel_requested = 1
"""

# --- operator operations ----------------------------------------------------------------------

TASK_STATE = "SELECT state, queue FROM tasks WHERE id = %s"

CANCEL = """
UPDATE tasks SET state = 'cancelled', finished_at = %s, updated_at = %s
WHERE id = %s AND state IN ('waiting', 'scheduled', 'queued', 'dead')
"""

QUEUE_SETTINGS = "SELECT result_ttl FROM queues WHERE name = %s"
SET_QUEUE_RESULT_TTL = """
INSERT INTO queues (name, result_ttl) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET result_ttl = excluded.result_ttl
"""

# SQLite's UPDATE OR IGNORE: a row whose unique_key a live task holds (or an earlier row of
# the same requeue takes) stays where it is.
_REQUEUE_SET = """
UPDATE tasks
SET state = 'queued', attempts = 0, run_at = %(now)s, updated_at = %(now)s, finished_at = NULL,
    lease_expires_at = NULL, lease_token = NULL, worker_id = NULL, cancel_requested = 0,
    expires_at = NULL
"""
_REQUEUE_FREE_KEY = f"""
  AND id IN (SELECT DISTINCT ON (c.queue, coalesce(c.unique_key, c.id::text)) c.id
             FROM tasks c {{where}}
             ORDER BY c.queue, coalesce(c.unique_key, c.id::text), c.id)
  AND (unique_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM tasks l WHERE l.queue = tasks.queue AND l.unique_key = tasks.unique_key
          AND l.state IN {_LIVE}))
"""

REQUEUE_IDS = (
    _REQUEUE_SET
    + f"WHERE id IN {_IDS} AND state = %(state)s"
    + _REQUEUE_FREE_KEY.format(where=f"WHERE c.id IN {_IDS} AND c.state = %(state)s")
    + "RETURNING queue, id"
)

REQUEUE_QUEUE = (
    _REQUEUE_SET
    + "WHERE queue = %(queue)s AND state = %(state)s"
    + _REQUEUE_FREE_KEY.format(where="WHERE c.queue = %(queue)s AND c.state = %(state)s")
    + "RETURNING queue, id"
)

REQUEUE_SKIPPED_TASK = "SELECT queue, state, unique_key FROM tasks WHERE id = %s"

REQUEUE_SKIPPED_LISTED = 1000

REQUEUE_LEFT_IN_QUEUE = f"""
SELECT id FROM tasks WHERE queue = %s AND state = %s ORDER BY id LIMIT {REQUEUE_SKIPPED_LISTED}
"""

SET_PAUSED = """
INSERT INTO queues (name, paused) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused
"""

PURGE_QUEUE = "DELETE FROM tasks WHERE queue = %s AND state != 'leased' RETURNING state, id"
PURGE_QUEUE_STATE = "DELETE FROM tasks WHERE queue = %s AND state = %s RETURNING state, id"

# --- workers ----------------------------------------------------------------------------------

REGISTER_WORKER = """
INSERT INTO workers (id, queues, concurrency, prefetch, meta, connected, registered_at,
                     last_heartbeat)
VALUES (%(id)s, %(queues)s, %(concurrency)s, %(prefetch)s, %(meta)s, 1, %(now)s, %(now)s)
ON CONFLICT (id) DO UPDATE SET
    queues = excluded.queues, concurrency = excluded.concurrency,
    prefetch = excluded.prefetch, meta = excluded.meta,
    connected = 1, last_heartbeat = excluded.last_heartbeat,
    state = CASE WHEN workers.state = 'terminate' THEN 'running' ELSE workers.state END
"""

HEARTBEAT = """
UPDATE workers SET last_heartbeat = %s, connected = 1 WHERE id = %s RETURNING state
"""

SET_WORKER_STATE = "UPDATE workers SET state = %s WHERE id = %s"

WORKER_GONE = "UPDATE workers SET connected = 0 WHERE id = %s"

RELEASE_WORKER_LEASES = """
UPDATE tasks
SET state = CASE WHEN cancel_requested <> 0 THEN 'cancelled'
                 WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested <> 0 OR attempts >= max_attempts
                       THEN %(now)s END,
    last_error = CASE WHEN cancel_requested <> 0 THEN 'cancelled; its worker disconnected'
                      ELSE 'worker disconnected' END,
    run_at = %(now)s, updated_at = %(now)s, lease_expires_at = NULL
WHERE state = 'leased' AND worker_id = %(worker_id)s
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

LIVE_WORKERS = "SELECT count(*) FROM workers WHERE connected = 1 AND last_heartbeat > %s"

# --- reads ------------------------------------------------------------------------------------

GET_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = %s"

QUEUE_COUNTS = """
SELECT queue, state, sum(n)::bigint FROM queue_counts GROUP BY queue, state HAVING sum(n) > 0
"""
QUEUES = "SELECT name, paused FROM queues"

OLDEST_QUEUED = "SELECT min(run_at) FROM tasks WHERE queue = %s AND state = 'queued'"

# --- sweeps -----------------------------------------------------------------------------------

SWEEP_EXPIRED_LEASES = """
UPDATE tasks
SET state = CASE WHEN cancel_requested <> 0 THEN 'cancelled'
                 WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested <> 0 OR attempts >= max_attempts
                       THEN %(now)s END,
    last_error = CASE WHEN cancel_requested <> 0 THEN 'cancelled; its lease ran out'
                      WHEN lease_expires_at <= %(now)s THEN 'lease expired'
                      ELSE 'worker timed out' END,
    run_at = %(now)s, updated_at = %(now)s, lease_expires_at = NULL
WHERE state = 'leased'
  AND (lease_expires_at <= %(now)s
       OR worker_id IN (SELECT id FROM workers WHERE last_heartbeat <= %(worker_deadline)s))
RETURNING queue, state, id
"""

SWEEP_DUE = """
UPDATE tasks SET state = 'queued', updated_at = %(now)s
WHERE state = 'scheduled' AND run_at <= %(now)s
RETURNING queue
"""

SWEEP_RETENTION = """
DELETE FROM tasks WHERE id IN (
    SELECT id FROM tasks
    WHERE state IN ('succeeded', 'dead', 'cancelled') AND finished_at <= %(cutoff)s
      AND expires_at IS NULL
    LIMIT %(limit)s)
RETURNING queue, state, id
"""

SWEEP_EXPIRED_RESULTS = """
DELETE FROM tasks WHERE id IN (
    SELECT id FROM tasks WHERE expires_at <= %(now)s
      AND state IN ('succeeded', 'dead', 'cancelled') LIMIT %(limit)s)
RETURNING queue, state, id
"""

FORGET_DEPS_OF_DELETED = f"DELETE FROM task_deps WHERE child IN {_IDS}"

SWEEP_FORGOTTEN_WORKERS = """
DELETE FROM workers WHERE connected = 0 AND last_heartbeat <= %(cutoff)s
  AND id NOT IN (SELECT worker_id FROM tasks WHERE state = 'leased' AND worker_id IS NOT NULL)
"""

NEXT_DUE = "SELECT min(run_at) FROM tasks WHERE state = 'scheduled'"
NEXT_EXPIRY = "SELECT min(lease_expires_at) FROM tasks WHERE state = 'leased'"

# Statistics: claims plan well only when the tasks table's statistics are fresh (without them
# the partial indexes on state look tiny, and a claim by ids reads every ready task). A queue
# table changes fast, so the sweeping broker checks, and runs ANALYZE itself when this many
# rows changed since the last one (autovacuum's rule; it does the same when it is on).
TASKS_CHANGED_SINCE_ANALYZE = """
SELECT s.n_mod_since_analyze, greatest(c.reltuples, 0)
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.relid = 'tasks'::regclass
"""
ANALYZE_TASKS = "ANALYZE (SKIP_LOCKED) tasks"

# --- queue limits (durable_tq.core.limits) --------------------------------------------------------

QUEUE_STATE_COUNT = """
SELECT coalesce(sum(n), 0)::bigint FROM queue_counts WHERE queue = %s AND state = %s
"""

QUEUE_LIMITS = "SELECT name, rate, burst, max_leased, key_concurrency FROM queues"
QUEUE_LIMITS_OF = QUEUE_LIMITS + " WHERE name = %s"

# A claim on a limited queue first locks the queue's row: claims of several brokers on it
# take turns, so max_leased and key_concurrency count what the others leased.
LOCK_LIMITED_QUEUE: str | None = "SELECT 1 FROM queues WHERE name = %s FOR UPDATE"

# A new rate or burst starts a full bucket (tokens NULL), as a broker's memory bucket does.
SET_QUEUE_LIMITS = """
INSERT INTO queues (name, rate, burst, max_leased, key_concurrency)
VALUES (%(queue)s, %(rate)s, %(burst)s, %(max_leased)s, %(key_concurrency)s)
ON CONFLICT (name) DO UPDATE SET rate = excluded.rate, burst = excluded.burst,
    max_leased = excluded.max_leased, key_concurrency = excluded.key_concurrency,
    tokens = CASE WHEN (queues.rate, queues.burst) IS NOT DISTINCT FROM
                       (excluded.rate, excluded.burst) THEN queues.tokens END
"""

# Rate limits across brokers: a rate-limited queue's token bucket is its row's tokens and
# tokens_at (the database's clock). A claim locks the rows of the rate-limited queues it
# claims from (in name order, so two claims never wait on each other crosswise), spends
# tokens and writes them back in its own transaction: brokers take turns on one bucket.
# SQLite keeps its buckets in the broker's memory (None there).
LOCK_BUCKETS: str | None = """
SELECT name, rate, burst, tokens, tokens_at,
       extract(epoch FROM statement_timestamp())::double precision
FROM queues WHERE name = ANY(%s) AND rate IS NOT NULL ORDER BY name FOR UPDATE
"""
SAVE_BUCKET: str | None = "UPDATE queues SET tokens = %s, tokens_at = %s WHERE name = %s"
# A queue's bucket as it stands (queue_info), without a lock.
BUCKET_OF: str | None = """
SELECT name, rate, burst, tokens, tokens_at,
       extract(epoch FROM statement_timestamp())::double precision
FROM queues WHERE name = %s AND rate IS NOT NULL
"""

QUEUE_COUNTS_OF = """
SELECT state, sum(n)::bigint FROM queue_counts WHERE queue = %s GROUP BY state
"""

LEASED_BY_KEY = """
SELECT concurrency_key, count(*) FROM tasks
WHERE state = 'leased' AND queue = %s AND concurrency_key IS NOT NULL
GROUP BY concurrency_key
"""

READY_KEYS = """
WITH RECURSIVE keys(k) AS (
    SELECT (SELECT concurrency_key FROM tasks
            WHERE state = 'queued' AND queue = %(queue)s AND concurrency_key IS NOT NULL
            ORDER BY concurrency_key LIMIT 1)
    UNION ALL
    SELECT (SELECT concurrency_key FROM tasks
            WHERE state = 'queued' AND queue = %(queue)s AND concurrency_key > keys.k
            ORDER BY concurrency_key LIMIT 1)
    FROM keys WHERE keys.k IS NOT NULL
)
SELECT k FROM keys WHERE k IS NOT NULL
"""

READY_OF_KEY = """
SELECT id, priority FROM tasks
WHERE state = 'queued' AND queue = %s AND concurrency_key = %s
ORDER BY priority DESC, id LIMIT %s
FOR UPDATE SKIP LOCKED
"""

READY_UNKEYED = """
SELECT id, priority FROM tasks
WHERE state = 'queued' AND queue = %s AND concurrency_key IS NULL
ORDER BY priority DESC, id LIMIT %s
FOR UPDATE SKIP LOCKED
"""

# --- schedules (durable_tq.core.scheduler) --------------------------------------------------------

SCHEDULE_COLUMNS = (
    "name, queue, cron, tz, every, anchor, payload, priority, missed, paused, next_run_at,"
    " last_slot, created_at, updated_at"
)

GET_SCHEDULE = f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = %s"
LIST_SCHEDULES = f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"

UPSERT_SCHEDULE = """
INSERT INTO schedules (name, queue, cron, tz, every, anchor, payload, priority, missed,
                       next_run_at, created_at, updated_at)
VALUES (%(name)s, %(queue)s, %(cron)s, %(tz)s, %(every)s, %(anchor)s, %(payload)s,
        %(priority)s, %(missed)s, %(next_run_at)s, %(now)s, %(now)s)
ON CONFLICT (name) DO UPDATE SET
    queue = excluded.queue, cron = excluded.cron, tz = excluded.tz, every = excluded.every,
    anchor = excluded.anchor, payload = excluded.payload, priority = excluded.priority,
    missed = excluded.missed, next_run_at = excluded.next_run_at, updated_at = excluded.updated_at
"""

DELETE_SCHEDULE = "DELETE FROM schedules WHERE name = %s"

SET_SCHEDULE_PAUSED = """
UPDATE schedules SET paused = %(paused)s,
    next_run_at = coalesce(%(next_run_at)s::double precision, next_run_at),
    updated_at = %(now)s
WHERE name = %(name)s
"""

# FOR UPDATE SKIP LOCKED: only the sweeping broker fires, but a firing is also safe while a
# broker taking over the sweep fires at the same moment (each row once).
DUE_SCHEDULES = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE paused = 0 AND next_run_at <= %s
ORDER BY next_run_at LIMIT %s
FOR UPDATE SKIP LOCKED
"""

ADVANCE_SCHEDULE = """
UPDATE schedules SET next_run_at = %(next_run_at)s,
    last_slot = coalesce(%(slot)s::double precision, last_slot), updated_at = %(now)s
WHERE name = %(name)s AND next_run_at = %(due_at)s
"""

NEXT_SCHEDULE = "SELECT min(next_run_at) FROM schedules WHERE paused = 0"
