-- durable_tq schema, version 3: results and control (issue 14).
--   * the state `waiting` (a task held until its parents succeed): SQLite cannot alter a
--     CHECK constraint, so the tasks table is rebuilt with its rows and indexes;
--   * cancel_requested (revoking a leased task), progress and progress_message,
--     result_ttl and expires_at (result expiry), waiting_on and on_parent_failure
--     (dependencies), the task_deps table, and a per-queue default result_ttl.

CREATE TABLE tasks_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after deletes
    queue            TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN
                         ('waiting', 'scheduled', 'queued', 'leased', 'succeeded', 'dead',
                          'cancelled')),
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
    unique_key       TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0, -- a cancel came while it was leased
    progress         REAL,                      -- 0..1, reported by the running handler
    progress_message TEXT,
    result_ttl       REAL,                      -- seconds a finished task is kept (this task)
    expires_at       REAL,                      -- finished_at + the result ttl that applies
    waiting_on       INTEGER NOT NULL DEFAULT 0, -- parents not finished yet (state waiting)
    on_parent_failure TEXT NOT NULL DEFAULT 'cancel'
                         CHECK (on_parent_failure IN ('cancel', 'run'))
);

INSERT INTO tasks_new (id, queue, state, payload, priority, attempts, max_attempts,
                       lease_seconds, run_at, created_at, updated_at, finished_at, lease_token,
                       lease_expires_at, worker_id, last_error, result, unique_key)
SELECT id, queue, state, payload, priority, attempts, max_attempts, lease_seconds, run_at,
       created_at, updated_at, finished_at, lease_token, lease_expires_at, worker_id,
       last_error, result, unique_key
FROM tasks;

-- Ids are never reused: carry the old sequence over (the highest ids may have been deleted).
DELETE FROM sqlite_sequence WHERE name = 'tasks_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'tasks_new', seq FROM sqlite_sequence
    WHERE name = 'tasks';

DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;

CREATE INDEX tasks_ready ON tasks (queue, priority DESC, id) WHERE state = 'queued';
CREATE INDEX tasks_due ON tasks (run_at) WHERE state = 'scheduled';
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE state = 'leased';
CREATE INDEX tasks_worker_leases ON tasks (worker_id) WHERE state = 'leased';
CREATE INDEX tasks_finished ON tasks (finished_at)
    WHERE state IN ('succeeded', 'dead', 'cancelled');
CREATE INDEX tasks_queue_state ON tasks (queue, state, id);
CREATE UNIQUE INDEX tasks_unique_live ON tasks (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('waiting', 'scheduled', 'queued', 'leased');
-- Result expiry: the sweeper deletes finished tasks whose expires_at has passed.
CREATE INDEX tasks_expiry ON tasks (expires_at) WHERE expires_at IS NOT NULL;

-- Dependencies: child waits for parent. Found by parent when a parent finishes.
CREATE TABLE task_deps (
    child  INTEGER NOT NULL,
    parent INTEGER NOT NULL,
    PRIMARY KEY (child, parent)
) WITHOUT ROWID;
CREATE INDEX task_deps_parent ON task_deps (parent);

-- Per-queue default result_ttl (issue 15 adds more queue settings beside it).
ALTER TABLE queues ADD COLUMN result_ttl REAL;
