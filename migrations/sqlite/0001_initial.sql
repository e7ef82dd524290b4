-- durable_tq schema, version 1: tasks, queues, workers and per-queue state counters.

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after deletes
    queue            TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN
                         ('scheduled', 'queued', 'leased', 'succeeded', 'dead', 'cancelled')),
    payload          TEXT    NOT NULL,          -- JSON text, exactly as stored from the wire
    priority         INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_seconds    REAL    NOT NULL,          -- default lease of this task's claims
    run_at           REAL    NOT NULL,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    finished_at      REAL,                      -- set on succeeded / dead / cancelled
    lease_token      TEXT,
    lease_expires_at REAL,
    worker_id        TEXT,
    last_error       TEXT,
    result           TEXT,                      -- JSON text of the ack's result
    unique_key       TEXT
);

-- Claims: the best ready task of a queue is the first row of this index.
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, id) WHERE state = 'queued';
-- Sweeps: due scheduled tasks, expired leases, leases of a worker, finished past retention.
CREATE INDEX tasks_due ON tasks (run_at) WHERE state = 'scheduled';
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE state = 'leased';
CREATE INDEX tasks_worker_leases ON tasks (worker_id) WHERE state = 'leased';
CREATE INDEX tasks_finished ON tasks (finished_at)
    WHERE state IN ('succeeded', 'dead', 'cancelled');
-- Listing, requeue and purge by queue and state.
CREATE INDEX tasks_queue_state ON tasks (queue, state, id);
-- unique_key is unique among the live tasks of one queue.
CREATE UNIQUE INDEX tasks_unique_live ON tasks (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'queued', 'leased');

CREATE TABLE queues (
    name   TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- How many tasks each queue has in each state, so that stats and max_queue_depth never count
-- rows. The broker's writer keeps it exact: every write reports the state changes it made,
-- and the batch adds them up here once per queue and state, in the same transaction, just
-- before COMMIT (a trigger per row cost 8-35 us per write: docs/benchmarks.md).
CREATE TABLE queue_counts (
    queue TEXT    NOT NULL,
    state TEXT    NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;

CREATE TABLE workers (
    id             TEXT PRIMARY KEY,
    queues         TEXT,                -- JSON list, NULL for every queue
    concurrency    INTEGER NOT NULL,
    state          TEXT    NOT NULL DEFAULT 'running'
                       CHECK (state IN ('running', 'quiet', 'terminate')),
    meta           TEXT    NOT NULL DEFAULT '{}',
    connected      INTEGER NOT NULL DEFAULT 1,
    registered_at  REAL    NOT NULL,
    last_heartbeat REAL    NOT NULL
) WITHOUT ROWID;
