"""The wire: the op table, the request and reply types, NDJSON framing. No I/O."""
