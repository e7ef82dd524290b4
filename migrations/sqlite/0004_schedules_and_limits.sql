-- durable_tq schema, version 4: durable schedules, per-queue rate and concurrency limits,
-- concurrency keys (issue 15; additive: older brokers' rows need nothing new).

-- One row per schedule. next_run_at is the slot the schedule waits for; firing it enqueues
-- the task and moves next_run_at in one transaction (the task's unique_key,
-- schedule:NAME:SLOT, makes a retried or crashed firing harmless).
CREATE TABLE schedules (
    name        TEXT    PRIMARY KEY,
    cron        TEXT,                       -- 5-field cron expression, or NULL with every
    tz          TEXT,                       -- IANA zone of cron; NULL is UTC
    every       REAL,                       -- interval in seconds, or NULL with cron
    anchor      REAL    NOT NULL DEFAULT 0, -- slots of every are anchor + k * every
    queue       TEXT    NOT NULL,
    payload     TEXT    NOT NULL DEFAULT 'null',
    priority    INTEGER NOT NULL DEFAULT 0,
    missed      TEXT    NOT NULL DEFAULT 'latest' CHECK (missed IN ('latest', 'none')),
    paused      INTEGER NOT NULL DEFAULT 0,
    next_run_at REAL    NOT NULL,
    last_slot   REAL,                       -- the last slot that fired
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL,
    CHECK ((cron IS NULL) != (every IS NULL))
) WITHOUT ROWID;
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE paused = 0;

-- Per-queue limits; NULL is no limit. rate is tasks per second, burst the bucket's size.
ALTER TABLE queues ADD COLUMN rate REAL;
ALTER TABLE queues ADD COLUMN burst INTEGER;
ALTER TABLE queues ADD COLUMN max_leased INTEGER;
ALTER TABLE queues ADD COLUMN key_concurrency INTEGER;

-- At most key_concurrency tasks with the same key are leased at once.
ALTER TABLE tasks ADD COLUMN concurrency_key TEXT;
-- A key-limited claim walks the distinct keys that have ready tasks (one seek each) and takes
-- the best tasks of each key with room, so a saturated key's ready tasks are skipped, not read.
-- NULL keys sort first: a queue's unkeyed ready tasks are the start of its range.
CREATE INDEX tasks_ready_by_key ON tasks (queue, concurrency_key, priority DESC, id)
    WHERE state = 'queued';
-- Leased tasks per key: the count a key-limited claim checks (bounded by the limits).
CREATE INDEX tasks_leased_by_key ON tasks (queue, concurrency_key)
    WHERE state = 'leased' AND concurrency_key IS NOT NULL;
