"""Parked long-poll claims, per queue, woken after a commit makes work ready there."""

from __future__ import annotations

from collections.abc import Iterable

import anyio


class Waiter:
    """One parked claim. ``woken_by`` names the queue whose new work woke it."""

    __slots__ = ("event", "queues", "woken_by")

    def __init__(self, queues: tuple[str, ...]) -> None:
        self.queues = queues
        self.event = anyio.Event()
        self.woken_by: str | None = None

    def rearm(self) -> None:
        """Forget an earlier wake-up before claiming again."""
        if self.event.is_set():
            self.event = anyio.Event()
        self.woken_by = None


class Waiters:
    """Claims waiting for work, in arrival order per queue.

    ``notify(queue, n)`` wakes at most ``n`` of them: one per task that became ready. A waiter
    that was woken but leaves without claiming again hands its wake-up on (``leave``), so a
    ready task is never left behind while another claim sleeps (at worst a spare wake-up).
    """

    def __init__(self) -> None:
        self._by_queue: dict[str, dict[Waiter, None]] = {}

    def join(self, queues: Iterable[str]) -> Waiter:
        waiter = Waiter(tuple(dict.fromkeys(queues)))
        for queue in waiter.queues:
            self._by_queue.setdefault(queue, {})[waiter] = None
        return waiter

    def leave(self, waiter: Waiter) -> None:
        for queue in waiter.queues:
            parked = self._by_queue.get(queue)
            if parked is not None:
                parked.pop(waiter, None)
                if not parked:
                    del self._by_queue[queue]
        if waiter.woken_by is not None:
            # Woken after its last claim began: that claim may have missed the new task.
            self.notify(waiter.woken_by, 1)

    def notify(self, queue: str, count: int = 1) -> int:
        """Wake up to ``count`` claims parked on ``queue``; returns how many were woken."""
        parked = self._by_queue.get(queue)
        if not parked or count <= 0:
            return 0
        woken = 0
        for waiter in parked:
            if waiter.woken_by is None:
                waiter.woken_by = queue
                waiter.event.set()
                woken += 1
                if woken >= count:
                    break
        return woken

    def notify_all(self, queue: str) -> int:
        return self.notify(queue, len(self._by_queue.get(queue, ())))

    def waiting(self, queue: str | None = None) -> int:
        if queue is not None:
            return len(self._by_queue.get(queue, ()))
        return len({w for parked in self._by_queue.values() for w in parked})
