"""The broker's network faces other than the NDJSON/TCP one in ``durable_tq.servers.tcp``."""
