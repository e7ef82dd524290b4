"""Enqueue a few tasks for the example worker (tasks.py) and wait for their results."""

from __future__ import annotations

import time

from tasks import make_thumbnail, send_email

from durable_tq.client import Client

FINISHED = ("succeeded", "dead", "cancelled")


def main() -> None:
    task_ids = [
        # Through the decorated function: queue and defaults come from @worker.task.
        send_email.enqueue_sync({"to": "ada@example.com"}).task_id,
        send_email.enqueue_sync({"to": "ops@example.com"}).task_id,  # retried once
        send_email.enqueue_sync({"to": "nobody"}).task_id,  # fails for good
        make_thumbnail.enqueue_sync({"image": "cat.jpg"}).task_id,
    ]
    with Client.from_env() as client:  # the broker durable-tq would reach from here
        # Or through a client, naming the queue.
        task_ids.append(client.enqueue("thumbnails", {"image": "dog.jpg"}).task_id)
        for task_id in task_ids:
            task = client.get(task_id)
            while task.state not in FINISHED:
                time.sleep(0.1)
                task = client.get(task_id)
            outcome = task.result if task.state == "succeeded" else task.last_error
            print(
                f"task {task_id} ({task.queue}): {task.state} after {task.attempts} "
                f"attempt(s): {outcome}"
            )


if __name__ == "__main__":
    main()
