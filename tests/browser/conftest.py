"""Fixtures for driving the dashboard in a real headless Chromium (the system's, Debian's
``chromium`` package) through Playwright's sync API: one browser per module, a fresh context
(cookies, locale, viewport) per page, brokers and workers as real processes.

Without Chromium (``/usr/bin/chromium``, or ``$DURABLE_TQ_CHROMIUM``) these tests are skipped,
except under CI (``CI`` set), where that is a failure: ``.ci/run`` installs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM, PATIENCE_MS, Cli, PageErrors, WorkerProcess, chromium_present

playwright_api = pytest.importorskip("playwright.sync_api")

#: Broker settings for these tests: quick sweeps and heartbeats, so what the page shows
#: follows soon after what happens.
BROKER_ENV = {"DURABLE_TQ_SWEEP_INTERVAL": "0.2", "DURABLE_TQ_HEARTBEAT_INTERVAL": "0.3"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not chromium_present():
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: .ci/run installs the chromium package")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., tuple[Any, PageErrors]]]:
    """``page, errors = open_page(width=1280)``: a page in a fresh context (en-US, so numbers
    read 1,234), with its console errors collected; every wait allows PATIENCE_MS."""
    playwright_api.expect.set_options(timeout=PATIENCE_MS)
    contexts: list[Any] = []

    def open_one(width: int = 1280, height: int = 900) -> tuple[Any, PageErrors]:
        context = browser.new_context(
            viewport={"width": width, "height": height}, locale="en-US", timezone_id="UTC"
        )
        context.set_default_timeout(PATIENCE_MS)
        contexts.append(context)
        page = context.new_page()
        return page, PageErrors(page)

    yield open_one
    for context in contexts:
        context.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(url)``: a WorkerProcess (worker ``mailer-1``), stopped after the test."""
    started: list[WorkerProcess] = []

    def start(url: str, token: str | None = None) -> WorkerProcess:
        process = WorkerProcess(url, tmp_path / f"worker-{len(started) + 1}", token)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def dashboard_broker(
    serve_subprocess: Callable[..., Any], tmp_path: Path
) -> Callable[..., tuple[Any, Cli]]:
    """``broker, cli = dashboard_broker(tokens=None, admin=None, env=None)``: ``durable-tq
    serve`` on loopback ports (HTTP on a free one too; ``broker.http_url`` is the dashboard),
    with more DURABLE_TQ_* settings in ``env``, and a :class:`Cli` on it (with the token
    ``admin``)."""

    def start(
        tokens: list[dict[str, str]] | None = None,
        admin: str | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[Any, Cli]:
        env = {**BROKER_ENV, **(env or {})}
        if tokens:
            env["DURABLE_TQ_AUTH_TOKENS"] = json.dumps(tokens)
        process = serve_subprocess(args=["--http", "127.0.0.1:0"], env=env)
        return process, Cli(process.url, tmp_path, token=admin)

    return start
