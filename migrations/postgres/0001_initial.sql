-- durable_tq schema on PostgreSQL, version 1: what SQLite's versions 1-4 built, in one step.
-- Column types follow SQLite's so the broker's SQL reads the same: times are Unix seconds
-- (double precision), flags are integers (0/1), payloads and results JSON text as sent.

CREATE TABLE tasks (
    id               bigserial PRIMARY KEY,     -- never reused, even after deletes
    queue            text    NOT NULL,
    state            text    NOT NULL CHECK (state IN
                         ('waiting', 'scheduled', 'queued', 'leased', 'succeeded', 'dead',
                          'cancelled')),
    payload          text    NOT NULL,
    priority         integer NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    lease_seconds    double precision NOT NULL,
    run_at           double precision NOT NULL,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL,
    finished_at      double precision,
    lease_token      text,
    lease_expires_at double precision,
    worker_id        text,
    last_error       text,
    result           text,
    unique_key       text,
    cancel_requested integer NOT NULL DEFAULT 0,
    progress         double precision,
    progress_message text,
    result_ttl       double precision,
    expires_at       double precision,
    waiting_on       integer NOT NULL DEFAULT 0,
    on_parent_failure text   NOT NULL DEFAULT 'cancel'
                         CHECK (on_parent_failure IN ('cancel', 'run')),
    concurrency_key  text,
    leased_at        double precision  -- when the current lease began (claim -> ack histogram)
);

-- Claims: the best ready task of a queue is the first row of this index; FOR UPDATE SKIP
-- LOCKED walks on past rows another broker is leasing.
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, id) WHERE state = 'queued';
CREATE INDEX tasks_due ON tasks (run_at) WHERE state = 'scheduled';
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE state = 'leased';
CREATE INDEX tasks_worker_leases ON tasks (worker_id) WHERE state = 'leased';
CREATE INDEX tasks_finished ON tasks (finished_at)
    WHERE state IN ('succeeded', 'dead', 'cancelled');
CREATE INDEX tasks_queue_state ON tasks (queue, state, id);
CREATE UNIQUE INDEX tasks_unique_live ON tasks (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('waiting', 'scheduled', 'queued', 'leased');
CREATE INDEX tasks_expiry ON tasks (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX tasks_ready_by_key ON tasks (queue, concurrency_key, priority DESC, id)
    WHERE state = 'queued';
CREATE INDEX tasks_leased_by_key ON tasks (queue, concurrency_key)
    WHERE state = 'leased' AND concurrency_key IS NOT NULL;

CREATE TABLE task_deps (
    child  bigint NOT NULL,
    parent bigint NOT NULL,
    PRIMARY KEY (child, parent)
);
CREATE INDEX task_deps_parent ON task_deps (parent);

CREATE TABLE queues (
    name            text PRIMARY KEY,
    paused          integer NOT NULL DEFAULT 0,
    result_ttl      double precision,
    rate            double precision,
    burst           integer,
    max_leased      integer,
    key_concurrency integer
);

-- Tasks per queue and state, as deltas: each broker adds its batches' changes to rows of its
-- own slot (no row that every broker updates), the sweeping broker folds them into slot 0,
-- and a count is the sum over slots.
CREATE TABLE queue_counts (
    queue text   NOT NULL,
    state text   NOT NULL,
    slot  bigint NOT NULL,
    n     bigint NOT NULL,
    PRIMARY KEY (queue, state, slot)
);

CREATE TABLE workers (
    id             text PRIMARY KEY,
    queues         text,
    concurrency    integer NOT NULL,
    state          text    NOT NULL DEFAULT 'running'
                       CHECK (state IN ('running', 'quiet', 'terminate')),
    meta           text    NOT NULL DEFAULT '{}',
    connected      integer NOT NULL DEFAULT 1,
    registered_at  double precision NOT NULL,
    last_heartbeat double precision NOT NULL,
    prefetch       integer NOT NULL DEFAULT 0
);

CREATE TABLE schedules (
    name        text    PRIMARY KEY,
    cron        text,
    tz          text,
    every       double precision,
    anchor      double precision NOT NULL DEFAULT 0,
    queue       text    NOT NULL,
    payload     text    NOT NULL DEFAULT 'null',
    priority    integer NOT NULL DEFAULT 0,
    missed      text    NOT NULL DEFAULT 'latest' CHECK (missed IN ('latest', 'none')),
    paused      integer NOT NULL DEFAULT 0,
    next_run_at double precision NOT NULL,
    last_slot   double precision,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    CHECK ((cron IS NULL) != (every IS NULL))
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE paused = 0;
