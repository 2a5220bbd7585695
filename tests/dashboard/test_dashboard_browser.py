"""The dashboard in a real headless Chromium (Debian's ``chromium``), driven by Playwright.

The pages are saved as PNGs: in docs/_static (the README and docs show them) when
FLOWD_UPDATE_SCREENSHOTS=1, else in a scratch folder.
Without /usr/bin/chromium these tests fail under CI=true (.ci/run installs
it) and are skipped elsewhere, naming the package to install.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from flowd._redis.keys import dead_letter_stream
from flowd.dashboard import Dashboard
from flowd.flow.limits import publish
from tests.dashboard.dashboard_server import add_dead_letter, serving
from tests.helpers import Email, Numbered, numbered_queue, wait_until

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "_static"
SCRATCH_SHOTS = Path(tempfile.gettempdir()) / "flowd-dashboard-shots"
XSS = "<img src=x onerror=window.__pwned=1>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 560})
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    # Every request must stay on the dashboard: no CDN, no external resource.
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    try:
        yield page
    finally:
        context.close()


def shot(page: Any, name: str, height: int | None = None) -> None:
    """Screenshot a page: into docs/_static with FLOWD_UPDATE_SCREENSHOTS=1 (README's
    pictures), else into a scratch folder, so a test run leaves the work tree unchanged."""
    folder = SHOTS if os.environ.get("FLOWD_UPDATE_SCREENSHOTS") == "1" else SCRATCH_SHOTS
    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / f"dashboard-{name}.png")
    if height is None:
        page.screenshot(path=path, full_page=True)
    else:
        page.screenshot(path=path, clip={"x": 0, "y": 0, "width": 1280, "height": height})


def print_n(task: flowd.Task[Numbered]) -> None:
    assert task.job.n >= 0


def fail_twice(task: flowd.Task[Email]) -> None:
    raise ValueError(f"card declined for {task.job.to}")


def test_open_overview_click_stream_see_reason_and_requeue(
    client: redis.Redis, stream: str, page: Any
) -> None:
    # Given a queue that processed 40 jobs
    suffix = stream[-8:]
    reports = f"reports-{suffix}"
    flowd.Producer(client, reports).enqueue_bulk([Numbered(n=n) for n in range(40)])
    done = numbered_queue(client, reports, print_n, group="builders")
    assert done.drain(timeout=30) == 40
    # And jobs dead-lettered by a real queue (its worker always fails)
    stream = f"emails-{suffix}"
    producer = flowd.Producer(client, stream)
    producer.enqueue_bulk([Email(to=f"user{n}@example.com", subject="Hello") for n in range(3)])
    queue = numbered_queue(
        client,
        stream,
        fail_twice,
        group="mailers",
        job=Email,
        claimer=flowd.Claimer(min_idle_time=0.2, max_retries=1, interval=0.1),
        block=0.2,
    )
    handle = queue.run()
    try:
        wait_until(lambda: client.xlen(dead_letter_stream(stream)) == 3, timeout=30)
    finally:
        assert handle.stop(timeout=10)
    producer.enqueue(Email(to="later@example.com", subject="Queued"))
    length = client.xlen(stream)

    with serving(Dashboard(client, [stream, reports])) as base:
        # When the overview is opened
        page.goto(base + "/")
        row = page.locator("tr", has=page.locator(f"a:text-is('{stream}')"))
        # Then the stream is listed with its length and dead letters
        assert row.locator("td.length").inner_text() == str(length)
        assert row.locator("td.dead").inner_text() == "3"
        assert page.locator("figure.chart svg").count() == 1
        shot(page, "overview")

        # When its name is clicked
        page.locator(f"a.stream-link:text-is('{stream}')").click()
        # Then the stream page shows the counts and each dead letter's reason
        assert page.locator("h1.stream-name").inner_text() == stream
        assert page.locator("dd.dead-count").inner_text() == "3"
        reasons = page.locator("tr.letter td.reason").all_inner_texts()
        assert len(reasons) == 3
        assert all(r.startswith("ValueError: card declined for user") for r in reasons)
        shot(page, "stream")

        # When "Requeue" is clicked on the newest dead letter
        newest = page.locator("tr.letter").first
        dlq_id = newest.get_attribute("id").removeprefix("dead-")
        original = client.xrange(dead_letter_stream(stream), dlq_id, dlq_id)[0][1]
        newest.locator("button:text-is('Requeue')").click()

        # Then the page says so, and the entry is back in the stream with its fields
        assert page.locator("p.done").inner_text() == "Requeued 1 dead letter(s)."
        assert page.locator("dd.dead-count").inner_text() == "2"
        assert client.xlen(dead_letter_stream(stream)) == 2
        assert client.xlen(stream) == length + 1
        back = client.xrevrange(stream, count=1)[0][1]
        assert back == {k: v for k, v in original.items() if not k.startswith(b"flowd:")}

        # When "Purge" is clicked, a confirmation page asks first
        page.locator("button:text-is('Purge')").click()
        assert "Delete all 2 dead letters" in page.locator("p.question").inner_text()
        assert client.xlen(dead_letter_stream(stream)) == 2
        shot(page, "confirm", height=220)
        page.locator("button:text-is('Yes, delete 2 dead letters')").click()
        assert page.locator("p.done").inner_text() == "Purged 2 dead letter(s)."
        assert client.xlen(dead_letter_stream(stream)) == 0

    # And nothing was loaded from anywhere else, and no dialog popped up
    assert all(url.startswith(base) for url in page.requests), page.requests
    assert page.dialogs == []


def test_markup_in_a_dead_letter_is_shown_as_text_and_runs_nothing(
    client: redis.Redis, stream: str, page: Any
) -> None:
    # Given a dead letter whose field, field name and reason hold script
    client.xadd(stream, {"n": "1"})
    client.xgroup_create(stream, "g", "0")
    add_dead_letter(client, stream, {"html": XSS, XSS: "name"}, f"ValueError: {XSS}")
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text))

    with serving(Dashboard(client, [stream])) as base:
        # When its stream page is opened in the browser
        page.goto(f"{base}/stream?name={stream}")
        page.wait_for_load_state("load")

        # Then the text is shown literally, no element was made from it, nothing ran
        letter = page.locator("tr.letter")
        assert letter.locator("td.reason").inner_text() == f"ValueError: {XSS}"
        assert XSS in letter.locator("dl.fields").inner_text()
        assert page.locator("tr.letter img").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert page.dialogs == []
        assert page.locator("script").count() == 0


def test_search_a_job_id_and_see_its_status_and_value(
    client: redis.Redis, stream: str, page: Any
) -> None:
    # Given a queue that keeps results, and a job it ran that returned markup
    queue = flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=Numbered,
        worker=lambda task: {"total": task.job.n * 6, "note": XSS},
        result_ttl=600,
    )
    job_id = flowd.Producer(client, stream).enqueue(Numbered(n=7))
    handle = queue.run()
    try:
        results = flowd.Results(client, stream)
        assert results.wait(job_id, timeout=10).status is flowd.JobStatus.SUCCEEDED
    finally:
        assert handle.stop(timeout=10)

    with serving(Dashboard(client, [stream])) as base:
        # When its id is typed into the stream page's search box and submitted
        page.goto(f"{base}/stream?name={stream}")
        page.locator("form.job-search input[name=id]").fill(f"  {job_id} ")
        page.locator("form.job-search button:text-is('Find job')").click()
        page.wait_for_load_state("load")

        # Then the job's page shows its status and its value, as text
        assert page.url.startswith(f"{base}/job?stream=")
        assert page.locator("h1.job-id").inner_text() == f"Job {job_id}"
        assert page.locator("dd.status").inner_text() == "succeeded"
        value = page.locator("pre.value").inner_text()
        assert '"total": 42' in value and XSS in value
        assert page.locator("pre.value img").count() == 0
        assert page.evaluate("window.__pwned") is None
        shot(page, "job", height=420)

        # And an id no job has gets the page that says so (HTTP 404)
        page.locator("form.job-search input[name=id]").fill("1-1")
        with page.expect_response(lambda r: "/job?" in r.url) as answer:
            page.locator("form.job-search button").click()
        assert answer.value.status == 404
        assert page.locator("h1").inner_text() == "No job with this id"

    assert all(url.startswith(base) for url in page.requests), page.requests
    assert page.dialogs == []


def test_pause_a_running_group_and_resume_it(client: redis.Redis, stream: str, page: Any) -> None:
    # Given a running queue
    ran: list[int] = []
    queue = numbered_queue(client, stream, lambda task: ran.append(task.job.n), group="workers")
    producer = flowd.Producer(client, stream)
    handle = queue.run()
    try:
        producer.enqueue(Numbered(n=0))
        wait_until(lambda: ran == [0], timeout=10)
        with serving(Dashboard(client, [stream])) as base:
            page.goto(f"{base}/stream?name={stream}")
            row = page.locator("#groups tr", has=page.locator("a:text-is('workers')"))
            assert row.locator("td.state").inner_text().startswith("active")
            # When its group's "Pause" is clicked
            row.locator("button:text-is('Pause')").click()
            # Then the page says so, the group shows paused, and a job enqueued now waits
            assert page.locator("p.done").inner_text().startswith("Paused")
            assert row.locator("td.state").inner_text().startswith("paused")
            assert flowd.is_paused(client, stream, "workers")
            time.sleep(1.0)
            producer.enqueue(Numbered(n=1))
            time.sleep(1.0)
            assert ran == [0]
            # When "Resume" is clicked, Then the group reads again and runs the job
            row.locator("button:text-is('Resume')").click()
            assert page.locator("p.done").inner_text().startswith("Resumed")
            assert row.locator("td.state").inner_text().startswith("active")
            wait_until(lambda: ran == [0, 1], timeout=10)
    finally:
        assert handle.stop(timeout=10)
    assert all(url.startswith(base) for url in page.requests), page.requests
    assert page.dialogs == []


def test_consumers_table_shows_each_active_limit(
    client: redis.Redis, stream: str, page: Any
) -> None:
    # Given a group with two consumers, one of them adaptive at 3 of its 8 threads
    for n in range(2):
        client.xadd(stream, {"n": str(n)})
    client.xgroup_create(stream, "workers", id="0")
    for consumer in ("adaptive", "fixed"):
        client.xreadgroup("workers", consumer, {stream: ">"}, count=1)
    publish(client, stream, "workers", "adaptive", 3, 8, int(time.time() * 1000))
    with serving(Dashboard(client, [stream])) as base:
        # When its stream page is opened
        page.goto(f"{base}/stream?name={stream}")
        # Then the consumers table shows the adaptive one's limit, and a dash for the other
        header = page.locator("#consumers th").all_inner_texts()
        assert header[-1] == "Active limit"
        for consumer, shown in (("adaptive", "3 of 8"), ("fixed", "—")):
            row = page.locator("#consumers tr", has=page.locator(f"td:text-is('{consumer}')"))
            assert row.locator("td.limit").inner_text() == shown
    assert all(url.startswith(base) for url in page.requests), page.requests
    assert page.dialogs == []
