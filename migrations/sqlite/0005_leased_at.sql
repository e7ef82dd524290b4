-- durable_tq schema, version 5: when the current lease began (issue 16: the claim -> ack
-- latency histogram of /metrics). Set by every claim in the same UPDATE, returned by the ack's
-- UPDATE: no read is added to either. Additive: NULL on rows leased before this version.
ALTER TABLE tasks ADD COLUMN leased_at REAL;
