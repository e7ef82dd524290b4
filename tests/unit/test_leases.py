"""Lease bookkeeping (durable_tq.worker.leases) against a stand-in for the client's
``extend_reply``."""

from __future__ import annotations

import time
from typing import Any, cast

import anyio
import pytest

from durable_tq import errors
from durable_tq.client import AsyncClient, ClaimedTask, ExtendReply
from durable_tq.worker.leases import MIN_LEASE, LeaseKeeper

pytestmark = pytest.mark.anyio


class Extends:
    """Answers ``extend_reply`` calls from a script: a new expiry (or a whole reply), or an
    exception to raise."""

    def __init__(self, *answers: float | ExtendReply | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[int, str, float, float | None]] = []

    # The signature of AsyncClient.extend_reply, timeout included.
    async def extend_reply(
        self,
        task_id: int,
        lease_token: str,
        lease: float,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ExtendReply:
        self.calls.append((task_id, lease_token, lease, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, ExtendReply):
            return answer
        return ExtendReply(lease_expires_at=answer)


def keeper(client: Extends, **options: Any) -> LeaseKeeper:
    return LeaseKeeper(cast(AsyncClient, client), **options)


def task(task_id: int = 1, expires_in: float = 30.0) -> ClaimedTask:
    return ClaimedTask(
        task_id=task_id,
        queue="q",
        payload=None,
        priority=0,
        attempt=1,
        lease_token=f"token-{task_id}",
        lease_expires_at=time.time() + expires_in,
    )


@pytest.mark.parametrize("fraction", [0, 1, -0.5, 2])
async def test_renew_fraction_must_be_inside_zero_and_one(fraction: float) -> None:
    with pytest.raises(errors.ConfigError):
        keeper(Extends(), renew_fraction=fraction)


async def test_a_given_lease_length_sets_when_to_renew() -> None:
    leases = keeper(Extends(), lease=10.0, renew_fraction=0.25)
    before = anyio.current_time()
    lease = leases.hold(task(expires_in=99))
    assert lease.length == 10.0
    assert before + 2.5 <= lease.renew_at <= anyio.current_time() + 2.5
    assert len(leases) == 1 and lease.about == "task 1 (queue q, attempt 1)"


async def test_without_a_length_it_is_read_off_the_expiry_with_a_floor() -> None:
    leases = keeper(Extends())
    assert 29.0 < leases.hold(task(1, expires_in=30)).length <= 30.0
    assert leases.hold(task(2, expires_in=-5)).length == MIN_LEASE


async def test_drop_forgets_only_that_lease() -> None:
    leases = keeper(Extends(), lease=5.0)
    old = leases.hold(task(1))
    new = leases.hold(task(1))  # the same task claimed again: the new lease replaces it
    leases.drop(old)
    assert old.dropped and len(leases) == 1
    leases.drop(new)
    assert len(leases) == 0


async def test_extend_records_what_the_broker_agreed_to() -> None:
    client = Extends(12345.0)
    leases = keeper(client, lease=5.0, request_timeout=30.0)
    lease = leases.hold(task(7))
    assert await leases.extend(lease, 60.0)
    assert client.calls == [(7, "token-7", 60.0, 30.0)]
    assert (lease.expires_at, lease.length, lease.lost) == (12345.0, 60.0, False)
    assert lease.renew_at > anyio.current_time() + 29.0


async def test_extend_asks_with_a_timeout_of_half_the_extension_at_least_one_second() -> None:
    client = Extends(1.0, 1.0)
    leases = keeper(client, lease=5.0, request_timeout=30.0)
    lease = leases.hold(task())
    await leases.extend(lease, 4.0)
    await leases.extend(lease, 0.5)
    assert [call[3] for call in client.calls] == [2.0, 1.0]


@pytest.mark.parametrize("refusal", [errors.LeaseLost("gone"), errors.NotFound("no task")])
async def test_a_refused_extension_marks_the_lease_lost(refusal: Exception) -> None:
    leases = keeper(Extends(refusal), lease=5.0)
    lease = leases.hold(task())
    assert not await leases.extend(lease, 5.0)
    assert lease.lost
    assert not await leases.extend(lease, 5.0)  # not asked again: the script has no answer


@pytest.mark.parametrize("trouble", [errors.ConnectionLost("down"), errors.RequestTimeout("slow")])
async def test_an_unreachable_broker_is_not_a_lost_lease(trouble: Exception) -> None:
    client = Extends(trouble, 99.0)
    leases = keeper(client, lease=5.0)
    lease = leases.hold(task())
    assert not await leases.extend(lease, 5.0)
    assert not lease.lost
    assert await leases.extend(lease, 5.0) and lease.expires_at == 99.0


async def test_a_dropped_lease_is_not_extended() -> None:
    client = Extends()
    leases = keeper(client, lease=5.0)
    lease = leases.hold(task())
    leases.drop(lease)
    assert not await leases.extend(lease, 5.0)
    assert client.calls == []


async def test_a_cancel_in_the_reply_is_passed_on_once() -> None:
    heard: list[int] = []

    def on_cancel(lease: Any) -> None:
        heard.append(lease.task.task_id)
        lease.cancel_requested = True  # as the worker's runtime does

    cancelled = ExtendReply(lease_expires_at=50.0, cancel=True)
    leases = keeper(Extends(60.0, cancelled, cancelled), lease=5.0, on_cancel=on_cancel)
    lease = leases.hold(task(3))
    assert await leases.extend(lease, 5.0) and heard == []
    assert await leases.extend(lease, 5.0) and lease.expires_at == 50.0
    assert heard == [3] and lease.cancel_requested
    assert await leases.extend(lease, 5.0)
    assert heard == [3]  # told once


async def test_without_a_listener_a_cancel_marks_the_lease() -> None:
    leases = keeper(Extends(ExtendReply(lease_expires_at=1.0, cancel=True)), lease=5.0)
    lease = leases.hold(task())
    assert await leases.extend(lease, 5.0)
    assert lease.cancel_requested
