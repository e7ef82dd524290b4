-- Rate limits across brokers: each rate-limited queue's token bucket lives in its queues row,
-- read and written by claims under the row lock they take (docs/schedules-and-limits.md).
-- tokens NULL: a full bucket. tokens_at: when tokens was right, on the database's clock
-- (Unix seconds), so brokers on several hosts share one clock.
ALTER TABLE queues ADD COLUMN tokens double precision;
ALTER TABLE queues ADD COLUMN tokens_at double precision;
