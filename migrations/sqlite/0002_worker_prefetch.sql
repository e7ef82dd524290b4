-- durable_tq schema, version 2: a worker may hold `prefetch` tasks beyond its concurrency
-- (the batching worker protocol; additive: a v1 worker registers with prefetch 0).
ALTER TABLE workers ADD COLUMN prefetch INTEGER NOT NULL DEFAULT 0;
