"""The job page (``/job?stream=S&id=ID``) and the stream page's id search, over real HTTP."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator
from typing import Any

import markupsafe
import pytest
import redis

import flowd
from flowd._redis.keys import dead_letter_stream
from flowd.dashboard import Dashboard
from tests.dashboard.dashboard_server import call, http, serving
from tests.helpers import GROUP, Numbered, QueueFactory, wait_until

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def base(client: redis.Redis, stream: str) -> Iterator[str]:
    """The base URL of a dashboard that shows the test's stream."""
    with serving(Dashboard(client, [stream])) as url:
        yield url


def esc(text: str) -> str:
    """``text`` as the pages' templates escape it."""
    return str(markupsafe.escape(text))


def job_url(base: str, stream: str, job_id: str) -> str:
    return f"{base}/job?stream={stream}&id={job_id}"


def wait_for(client: redis.Redis, stream: str, job_id: str, status: flowd.JobStatus) -> None:
    def reached() -> bool:
        result = flowd.Results(client, stream).get(job_id)
        return result is not None and result.status is status

    wait_until(reached, message=f"{job_id} {status}")


def test_a_succeeded_jobs_value_is_shown_as_text(
    client: redis.Redis, stream: str, make_queue: QueueFactory, base: str
) -> None:
    make_queue.run(make_queue(lambda task: {"html": SCRIPT, "n": task.job.n}, result_ttl=600))
    job_id = flowd.Producer(client, stream).enqueue(Numbered(3))
    wait_for(client, stream, job_id, flowd.JobStatus.SUCCEEDED)

    status, _, body = http(job_url(base, stream, job_id))
    assert status == 200
    assert '<dd class="status status-succeeded">succeeded</dd>' in body
    assert f'<span class="mono">{job_id}</span>' in body
    # The value is JSON, escaped: no element is made from it
    assert esc('"html": "<script>alert(1)</script>"') in body
    assert SCRIPT not in body and "<script" not in body
    assert '<dd class="deliveries">1</dd>' in body


def test_a_running_job_shows_its_consumer_and_no_value(
    client: redis.Redis, stream: str, make_queue: QueueFactory, base: str
) -> None:
    release = threading.Event()
    queue = make_queue(lambda task: release.wait(30), result_ttl=600)
    make_queue.run(queue)
    job_id = flowd.Producer(client, stream).enqueue(Numbered(1))
    try:
        wait_for(client, stream, job_id, flowd.JobStatus.RUNNING)
        status, _, body = http(job_url(base, stream, job_id))
    finally:
        release.set()
    assert status == 200 and "status-running" in body
    assert f'<dd class="consumer">{queue.consumer}</dd>' in body
    assert "<th>Value</th>" not in body and "<th>Error</th>" not in body


def test_a_dead_job_links_to_its_dead_letter(
    client: redis.Redis, stream: str, make_queue: QueueFactory, base: str
) -> None:
    def fail(task: flowd.Task[Numbered]) -> None:
        raise ValueError(f"bad {SCRIPT}")

    make_queue.run(make_queue(fail, claimer=flowd.Claimer(min_idle_time=0.1, max_retries=0)))
    job_id = flowd.Producer(client, stream).enqueue(Numbered(1))
    wait_for(client, stream, job_id, flowd.JobStatus.DEAD)
    (dead_id, _), *_ = client.xrange(dead_letter_stream(stream))
    dead = dead_id.decode()

    status, _, body = http(job_url(base, stream, job_id))
    assert status == 200 and "status-dead" in body
    assert f'<td class="reason">ValueError: bad {esc(SCRIPT)}</td>' in body
    assert esc(f"ValueError: bad {SCRIPT}") in body.split('class="traceback">')[1]
    link = re.search(r'<a class="dead-letter" href="([^"]+)">([^<]+)</a>', body)
    assert link is not None and link[2] == dead
    # The link opens the stream page at the dead letter (first row of its list)
    status, _, stream_page = http(base + html.unescape(link[1]).split("#")[0])
    assert status == 200
    assert link[1].endswith(f"#dead-{dead}")
    rows = re.findall(r'<tr class="letter" id="dead-([^"]+)">', stream_page)
    assert rows[0] == dead


def test_an_unknown_id_gets_a_404_page_saying_so(
    client: redis.Redis, stream: str, base: str
) -> None:
    client.xgroup_create(stream, GROUP, "$", mkstream=True)
    flowd.Producer(client, stream).enqueue(Numbered(1))
    for job_id in ("1-1", "s-0-nope", SCRIPT):
        status, headers, body = http(job_url(base, stream, job_id.replace("<", "%3C")))
        assert status == 404
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert "<h1>No job with this id</h1>" in body
        assert "<script" not in body
    # The search box is there again, holding what was looked for
    assert f'value="{esc(SCRIPT)}"' in body
    status, _, body = http(f"{base}/job?stream={stream}&id=")
    assert status == 404 and "Enter a job id to look it up." in body
    status, _, body = http(f"{base}/job?stream=other-{stream}&id=1-1")
    assert status == 404 and f"no stream &#39;other-{stream}&#39; here" in body


def test_each_stream_page_has_an_id_search_that_goes_to_the_job_page(
    client: redis.Redis, stream: str
) -> None:
    client.xgroup_create(stream, GROUP, "$", mkstream=True)
    app = Dashboard(client, [stream])
    # Mounted under a prefix, the form goes to the prefixed job page
    env = {"QUERY_STRING": f"name={stream}", "SCRIPT_NAME": "/ops/flowd", "HTTP_HOST": "x"}
    status, _, body = call(app, "GET", "/stream", env)
    assert status.startswith("200")
    form = re.search(
        r'<form method="get" action="([^"]+)" class="job-search"[^>]*>(.*?)</form>', body, re.S
    )
    assert form is not None and form[1] == "/ops/flowd/job"
    assert f'<input type="hidden" name="stream" value="{stream}">' in form[2]
    assert 'name="id"' in form[2] and "csrf" not in form[2]  # a GET: no token to leak


def test_job_page_reads_the_same_with_a_decoding_client(
    redis_url: str, stream: str, make_queue: QueueFactory
) -> None:
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        make_queue.run(make_queue(lambda task: [1, "two"], result_ttl=600))
        job_id = flowd.Producer(decoding, stream).enqueue(Numbered(1))
        wait_for(decoding, stream, job_id, flowd.JobStatus.SUCCEEDED)
        env: dict[str, Any] = {"QUERY_STRING": f"stream={stream}&id={job_id}", "HTTP_HOST": "x"}
        status, _, body = call(Dashboard(decoding, [stream]), "GET", "/job", env)
        assert status.startswith("200") and "status-succeeded" in body
        assert esc('[\n  1,\n  "two"\n]') in body
    finally:
        decoding.close()
