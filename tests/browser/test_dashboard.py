"""The dashboard in a real headless Chromium against real brokers and workers (processes on
loopback ports), checked against the CLI: what the pages show is what ``durable-tq stats
--json`` says, changes made on the pages are seen by the CLI, changes made by the CLI appear
on the pages without a reload.

Waits are Playwright's ``expect`` (retrying up to PATIENCE_MS) or bounded loops on the CLI's
answers, never fixed sleeps. ``DURABLE_TQ_SCREENSHOTS=docs/images`` saves the screenshots
shown in docs/dashboard.md.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from browser_support import SCREENSHOTS, Cli, PageErrors, WorkerProcess, screenshot, until

from durable_tq import Client

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

STATES = ("waiting", "scheduled", "queued", "leased", "succeeded", "dead", "cancelled")
Open = Callable[..., tuple[Any, PageErrors]]
Start = Callable[..., tuple[Any, Cli]]


def queue_row(page: Any, queue: str) -> Any:
    link = page.get_by_role("link", name=queue, exact=True)
    return page.locator("main table tbody tr").filter(has=link)


def expect_counts(page: Any, stats: dict[str, Any]) -> None:
    for queue, counts in stats["queues"].items():
        row = queue_row(page, queue)
        for state in STATES:
            expect(row.locator(f'td[data-label="{state}"]')).to_have_text(f"{counts[state]:,}")
    for state in STATES:
        total = sum(counts[state] for counts in stats["queues"].values())
        expect(page.locator(f'[data-count="{state}"]')).to_have_text(f"{total:,}")


def fail_forever(url: str, queue: str, count: int) -> list[int]:
    """Claim ``count`` tasks of ``queue`` and fail them without retry: they end dead."""
    with Client.from_url(url) as client:
        claimed = client.claim([queue], max=count)
        for task in claimed:
            client.fail(task.task_id, task.lease_token, "550 no such mailbox", retry=False)
    return [task.task_id for task in claimed]


# --- what the pages show ------------------------------------------------------------------------


def test_overview_shows_the_counts_of_stats_json(dashboard_broker: Start, open_page: Open) -> None:
    broker, cli = dashboard_broker()
    lines = "".join(json.dumps({"to": f"user{n}@example.com"}) + "\n" for n in range(1234))
    (cli.workdir / "emails.jsonl").write_text(lines)
    cli.run("enqueue", "emails", "--from", str(cli.workdir / "emails.jsonl"))
    cli.enqueue("reports", {"month": 11}, "--delay", "3600")
    fail_forever(broker.url, "emails", 3)
    cancelled = cli.enqueue("emails", {"to": "nobody"})
    cli.run("cancel", str(cancelled))
    cli.run("pause", "reports")

    page, errors = open_page()
    page.goto(broker.http_url)
    stats = cli.stats()
    assert stats["queues"]["emails"]["queued"] == 1231  # four digits: a thousands separator
    expect_counts(page, stats)
    expect(queue_row(page, "reports").locator('td[data-label="Status"]')).to_have_text("paused")
    expect(queue_row(page, "emails").locator('td[data-label="Status"]')).to_have_text("active")
    expect(page.locator('[data-count="queues"]')).to_have_text("2")
    # The oldest waiting task's age, with the absolute time on hover.
    oldest = queue_row(page, "emails").locator('td[data-label="Oldest waiting"] span[title]')
    expect(oldest).to_have_attribute("title", re.compile(r"^waiting since \w+ \d+, \d{4}"))
    assert errors.messages == []


def test_a_task_enqueued_from_the_cli_appears_without_reload(
    dashboard_broker: Start, open_page: Open
) -> None:
    broker, cli = dashboard_broker()
    first = cli.enqueue("emails", {"to": "ada@example.com"})
    page, errors = open_page()
    page.goto(f"{broker.http_url}/#/queues/emails")
    expect(page.get_by_role("link", name=f"#{first}", exact=True)).to_be_visible()
    page.evaluate("window.stillTheSamePage = true")

    second = cli.enqueue("emails", {"to": "bob@example.com"})
    expect(page.get_by_role("link", name=f"#{second}", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="queued 2")).to_be_visible()
    page.get_by_role("link", name="Overview").click()
    expect(queue_row(page, "emails").locator('td[data-label="queued"]')).to_have_text("2")
    cli.enqueue("emails", {"to": "eve@example.com"})
    expect(queue_row(page, "emails").locator('td[data-label="queued"]')).to_have_text("3")
    assert page.evaluate("window.stillTheSamePage") is True  # no reload happened
    assert errors.messages == []


def test_banner_when_the_database_is_not_writable_or_the_broker_is_gone(
    dashboard_broker: Start, open_page: Open
) -> None:
    broker, cli = dashboard_broker(env={"DURABLE_TQ_FILE_CHECK_INTERVAL": "0.1"})
    cli.enqueue("emails", {"to": "ada@example.com"})
    page, _ = open_page()  # the 503s of this test are console errors: not checked here
    page.goto(broker.http_url)
    expect(queue_row(page, "emails").locator('td[data-label="queued"]')).to_have_text("1")
    banner = page.locator("#banner")
    expect(banner).to_be_hidden()

    broker.db_path.with_name(broker.db_path.name + "-wal").unlink()
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("The database is not writable")

    broker.terminate()
    expect(banner).to_have_text("Cannot reach the broker; retrying every 2 s.")
    expect(page.locator("#live")).to_contain_text("not updating")


# --- changes made on the pages ------------------------------------------------------------------


def test_pause_from_the_page_pauses_the_queue(dashboard_broker: Start, open_page: Open) -> None:
    broker, cli = dashboard_broker()
    cli.enqueue("emails", {"to": "ada@example.com"})
    page, errors = open_page()
    page.goto(f"{broker.http_url}/#/queues/emails")
    pause = page.get_by_role("button", name="Pause", exact=True)
    pause.focus()
    page.keyboard.press("Enter")  # by keyboard
    expect(page.get_by_role("status").filter(has_text="Queue emails paused.")).to_be_visible()
    expect(page.locator("h1 .badge")).to_have_text("paused")
    assert cli.stats()["queues"]["emails"]["paused"] is True

    page.get_by_role("button", name="Resume", exact=True).click()
    expect(page.locator("h1 .badge")).to_have_count(0)
    assert cli.stats()["queues"]["emails"]["paused"] is False
    assert errors.messages == []


def test_requeue_all_dead_and_purge_with_confirmation(
    dashboard_broker: Start, open_page: Open
) -> None:
    broker, cli = dashboard_broker()
    for n in range(5):
        cli.enqueue("emails", {"n": n})
    dead = fail_forever(broker.url, "emails", 2)
    page, errors = open_page()
    page.goto(f"{broker.http_url}/#/queues/emails")
    page.get_by_role("button", name="Requeue all dead (2)").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("2 dead tasks go back to queued")
    dialog.get_by_role("button", name="Requeue").click()
    expect(page.get_by_role("button", name="Requeue all dead (0)")).to_be_disabled()
    assert {cli.task(task_id)["state"] for task_id in dead} == {"queued"}

    page.get_by_role("button", name="Purge…").click()
    expect(dialog).to_be_visible()
    dialog.get_by_label("Tasks to delete").select_option("queued")
    confirm = dialog.get_by_role("button", name="Purge")
    expect(confirm).to_be_disabled()
    dialog.get_by_label("Type emails to confirm").fill("email")
    expect(confirm).to_be_disabled()
    dialog.get_by_role("button", name="Keep").click()  # changed my mind: nothing happens
    expect(dialog).to_be_hidden()
    assert cli.stats()["queues"]["emails"]["queued"] == 5

    page.get_by_role("button", name="Purge…").click()
    dialog.get_by_label("Tasks to delete").select_option("queued")
    dialog.get_by_label("Type emails to confirm").fill("emails")
    dialog.get_by_role("button", name="Purge").click()
    expect(
        page.get_by_role("status").filter(has_text="Purged 5 tasks from emails.")
    ).to_be_visible()
    assert cli.stats()["queues"]["emails"]["queued"] == 0
    assert errors.messages == []


def test_requeue_and_cancel_from_the_task_page(dashboard_broker: Start, open_page: Open) -> None:
    broker, cli = dashboard_broker()
    task_id = cli.enqueue("emails", {"to": "ada@example.com", "body": "x" * 5000})
    page, errors = open_page()
    page.goto(f"{broker.http_url}/#/tasks/{task_id}")
    expect(page.locator("h1")).to_contain_text("queued")
    # A large payload is folded; it opens on demand.
    fold = page.locator("details").filter(has_text="Show the payload")
    expect(fold).to_be_visible()
    expect(fold.locator("pre")).to_be_hidden()
    fold.locator("summary").click()
    expect(fold.locator("pre")).to_contain_text('"to": "ada@example.com"')
    expect(page.get_by_role("button", name="Requeue")).to_be_disabled()

    page.get_by_role("button", name="Cancel…").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel task").click()
    expect(page.locator("h1")).to_contain_text("cancelled")
    assert cli.task(task_id)["state"] == "cancelled"
    expect(fold.locator("pre")).to_be_visible()  # live updates left the open fold open

    page.get_by_role("button", name="Requeue").click()
    expect(page.locator("h1")).to_contain_text("queued")
    task = cli.task(task_id)
    assert task["state"] == "queued" and task["attempts"] == 0
    assert errors.messages == []


def test_quiet_button_makes_a_worker_stop_claiming(
    dashboard_broker: Start, open_page: Open, start_worker: Callable[..., WorkerProcess]
) -> None:
    broker, cli = dashboard_broker()
    worker = start_worker(broker.url)
    before = cli.enqueue("emails", {"to": "ada@example.com"})
    until(lambda: cli.task(before)["state"] == "succeeded", "the worker to run a task")

    page, errors = open_page()
    page.goto(f"{broker.http_url}/#/workers")
    row = page.locator("main table tbody tr").filter(has_text="mailer-1")
    expect(row.locator('td[data-label="State"]')).to_have_text("running")
    row.get_by_role("button", name="Quiet worker mailer-1").click()
    expect(row.locator('td[data-label="State"]')).to_have_text("quiet")
    assert cli.json("workers")["workers"][0]["state"] == "quiet"

    def heartbeats_after(moment: float, count: int) -> None:
        """Wait for ``count`` heartbeats sent after ``moment``: the first heartbeat's reply told
        the worker (an in-flight reply cannot race the next one: the worker sends them in turn)."""
        seen: list[float] = []

        def beat() -> bool:
            last = cli.json("workers")["workers"][0]["last_heartbeat"]
            if last > moment and last not in seen:
                seen.append(last)
            return len(seen) >= count

        until(beat, f"{count} heartbeats of the worker")

    heartbeats_after(time.time(), 2)
    held = cli.enqueue("emails", {"to": "bob@example.com"})
    heartbeats_after(time.time(), 3)
    assert cli.task(held)["state"] == "queued", worker.log_text()

    row.get_by_role("button", name="Resume worker mailer-1").click()
    expect(row.locator('td[data-label="State"]')).to_have_text("running")
    until(lambda: cli.task(held)["state"] == "succeeded", "the resumed worker to run the task")
    assert errors.messages == []


def test_terminate_button_stops_the_worker(
    dashboard_broker: Start, open_page: Open, start_worker: Callable[..., WorkerProcess]
) -> None:
    broker, cli = dashboard_broker()
    worker = start_worker(broker.url)
    until(lambda: cli.json("workers")["workers"], "the worker to register")
    page, errors = open_page()
    page.goto(f"{broker.http_url}/#/workers")
    page.get_by_role("button", name="Terminate worker mailer-1").click()
    page.get_by_role("dialog").get_by_role("button", name="Terminate").click()
    until(lambda: worker.proc.poll() is not None, "the worker process to exit")
    assert worker.proc.returncode == 0, worker.log_text()
    assert errors.messages == []


# --- login --------------------------------------------------------------------------------------

ADMIN = "admin-token-for-the-dashboard"
PRODUCER = "read-only-token"
TOKENS = [{"token": ADMIN, "role": "admin"}, {"token": PRODUCER, "role": "producer"}]


def test_login_with_a_wrong_then_the_right_token(dashboard_broker: Start, open_page: Open) -> None:
    broker, cli = dashboard_broker(tokens=TOKENS, admin=ADMIN)
    cli.enqueue("emails", {"to": "ada@example.com"})
    page, _ = open_page()
    page.goto(broker.http_url)
    expect(page).to_have_url(f"{broker.http_url}/login")
    page.get_by_label("Token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("That token is not one of this broker's tokens.")
    expect(page).to_have_url(f"{broker.http_url}/login")
    assert page.context.cookies() == []

    page.get_by_label("Token").fill(ADMIN)
    page.get_by_role("button", name="Log in").press("Enter")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(queue_row(page, "emails").locator('td[data-label="queued"]')).to_have_text("1")
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts
    expect(page.locator("footer")).to_contain_text("Logged in with an admin token")

    # The admin may change things from the page.
    page.goto(f"{broker.http_url}/#/queues/emails")
    page.get_by_role("button", name="Pause", exact=True).click()
    expect(page.locator("h1 .badge")).to_have_text("paused")
    assert cli.stats()["queues"]["emails"]["paused"] is True

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{broker.http_url}/login")
    page.goto(broker.http_url)
    expect(page).to_have_url(f"{broker.http_url}/login")


def test_a_read_only_token_sees_but_cannot_change(dashboard_broker: Start, open_page: Open) -> None:
    broker, cli = dashboard_broker(tokens=TOKENS, admin=ADMIN)
    cli.enqueue("emails", {"to": "ada@example.com"})
    page, errors = open_page()
    page.goto(f"{broker.http_url}/login")
    page.get_by_label("Token").fill(PRODUCER)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("footer")).to_contain_text("read only")
    page.goto(f"{broker.http_url}/#/queues/emails")
    for name in ("Pause", "Purge…"):
        button = page.get_by_role("button", name=name, exact=True)
        expect(button).to_be_disabled()
        expect(button).to_have_attribute("title", "Needs an admin token")
    assert errors.messages == []


# --- every page: no errors, both widths, screenshots -------------------------------------------


def test_every_page_at_1280_and_375_px(
    dashboard_broker: Start, open_page: Open, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A broker with some history: no console errors on any page, no horizontal scroll at
    375 px; at 1280 px the screenshots of docs/dashboard.md."""
    broker, cli = dashboard_broker()
    with Client.from_url(broker.url) as client:
        client.set_queue_limits("emails", rate=50, burst=20, max_leased=8)
        client.schedule_upsert(
            "nightly-digest", queue="emails", cron="0 3 * * *", payload={"digest": True}
        )
        start_worker(broker.url)
        warm_up(client, rounds=18 if SCREENSHOTS else 2)
        for n in range(3):
            client.enqueue(
                "emails", {"to": f"bounce{n}@example.com", "bounce": True}, max_attempts=1
            )
        report = client.enqueue("reports", {"month": "2025-11", "format": "pdf"}).task_id
        client.enqueue("invoices", {"customer": 42}, delay=3600)
        until(lambda: cli.task(report)["progress"], "the report to show progress")
        until(lambda: cli.stats()["queues"]["emails"]["dead"] >= 3, "the bounces to die")
        dead_task = client.list_tasks(queue="emails", state="dead", limit=1).tasks[0].task_id

    pages = {
        "overview": ("/#/", "Overview"),
        "queue": ("/#/queues/emails?state=dead", "Queue emails"),
        "queue-all": ("/#/queues/emails", "Queue emails"),
        "task": (f"/#/tasks/{report}", f"Task #{report}"),
        "task-dead": (f"/#/tasks/{dead_task}", f"Task #{dead_task}"),
        "workers": ("/#/workers", "Workers"),
    }
    for width in (1280, 375):
        page, errors = open_page(width=width)
        for name, (path, heading) in pages.items():
            page.goto(broker.http_url + path)
            expect(page.locator("h1")).to_contain_text(heading)
            expect(page.locator("#live")).to_have_text("live · every 2 s")
            if name == "overview":
                expect(page.locator(".chart").first).to_be_visible()
            if name == "workers":
                expect(page.get_by_text("mailer-1")).to_be_visible()
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{name} at {width} px scrolls sideways by {overflow} px"
            if name == "task":
                expect(page.locator("progress")).to_be_visible()
            if width == 1280 and name != "queue-all":
                screenshot(page, name)
        assert errors.messages == [], f"at {width} px"


def warm_up(client: Client, rounds: int) -> None:
    """Some traffic for the throughput charts: bursts of emails, one every 5 s sample."""
    for round_number in range(rounds):
        size = 20 + (round_number * 37) % 80
        client.enqueue_many([{"queue": "emails", "payload": {"n": n}} for n in range(size)])
        if round_number % 4 == 3:
            client.enqueue("emails", {"bounce": True}, max_attempts=1)
        if round_number + 1 < rounds:
            time.sleep(5)
