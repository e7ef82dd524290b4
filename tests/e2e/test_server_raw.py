import pytest
pytestmark = pytest.mark.anyio

async def test_smoke(server, raw_connect):
    async with raw_connect(server.url) as conn:
        r = await conn.request("enqueue", queue="q", payload={"a": 1})
        assert r["ok"], r
        r = await conn.request("stats")
        assert r["queues"]["q"]["queued"] == 1
        assert r["connections"] == 1
