"""The dashboard over real HTTP (waitress on loopback) against the test Redis."""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

import flowd
from flowd._redis import throughput as _throughput
from flowd._redis.keys import dead_letter_stream, derived_key
from flowd.dashboard import Dashboard
from flowd.dashboard.security import CONTENT_SECURITY_POLICY
from tests.dashboard.dashboard_server import add_dead_letter, call, http, serving
from tests.helpers import numbered_queue
from tests.redis_cluster import RedisCluster

XSS = "<img src=x onerror=alert(1)>"


@dataclass
class Site:
    """A served dashboard, its base URL, and a browser-like session (cookie + token)."""

    base: str
    app: Dashboard

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
        return http(self.base + path, headers=headers)

    def session(self) -> tuple[str, str]:
        """(cookie header, csrf token) as a browser holds them after a first GET."""
        status, headers, body = self.get("/")
        assert status == 200, body
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        token = re.search(r'name="csrf" value="([^"]+)"', self.get("/", Cookie=cookie)[2])
        return cookie, cookie.split("=", 1)[1] if token is None else token[1]

    def post(
        self, path: str, data: dict[str, str], *, same_site: bool = True, **headers: str
    ) -> tuple[int, dict[str, str], str]:
        if same_site:
            headers.setdefault("Origin", self.base)
        return http(self.base + path, data=data, headers=headers)


@pytest.fixture
def site_for(client: redis.Redis) -> Iterator[Any]:
    servers: list[Any] = []

    def make(streams: list[str] | None, **kwargs: Any) -> Site:
        app = Dashboard(client, streams, **kwargs)
        context = serving(app)
        base = context.__enter__()
        servers.append(context)
        return Site(base, app)

    yield make
    for context in servers:
        context.__exit__(None, None, None)


def with_group(client: redis.Redis, stream: str, entries: int = 3, pending: int = 1) -> None:
    for n in range(entries):
        client.xadd(stream, {"n": str(n)})
    client.xgroup_create(stream, "g", "0")
    if pending:
        client.xreadgroup("g", "c1", {stream: ">"}, count=pending)


def test_overview_finds_streams_with_groups_and_shows_their_counts(
    private_redis: Any, stream: str
) -> None:
    # Given a server of this test's own (discovery sees every stream on it)
    client = redis.Redis.from_url(private_redis.url)
    # And a stream with a group, pending entries, two dead letters and a scheduled job
    with_group(client, stream, entries=5, pending=2)
    add_dead_letter(client, stream, {"n": "7"}, "ValueError: no")
    add_dead_letter(client, stream, {"n": "8"}, "ValueError: no")
    client.zadd(derived_key(stream, "scheduled"), {"job-1": 1})
    # And a stream without groups (not a queue)
    client.xadd(f"{stream}-plain", {"n": "1"})
    app = Dashboard(client)

    # When the overview is opened
    with serving(app) as base:
        status, headers, body = Site(base, app).get("/")
    client.close()

    # Then the queue is listed with its counts, and the plain stream is not
    assert status == 200
    row = body[body.index(f">{stream}</a>") :].split("</tr>", 1)[0]
    cells = re.findall(r'<td class="num[^"]*">([^<]*)</td>', row)
    # length, groups, lag, pending, consumers, dead letters, scheduled, processed, failed
    assert cells[:7] == ["5", "1", "3", "2", "1", "2", "1"], cells
    assert f">{stream}-plain<" not in body
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "<svg" in body and "<script" not in body


def test_an_evicting_server_is_called_out_on_the_overview(private_redis: Any, stream: str) -> None:
    # Given a server whose maxmemory-policy can evict streams, and a queue on it
    client = redis.Redis.from_url(private_redis.url)
    with_group(client, stream)
    app = Dashboard(client, [stream])
    try:
        with serving(app) as base:
            quiet = Site(base, app).get("/")[2]
            client.config_set("maxmemory-policy", "allkeys-lru")
            # When the overview is opened
            status, _, body = Site(base, app).get("/")
    finally:
        client.close()
    # Then it says so, naming the policy; with noeviction it said nothing
    assert status == 200
    assert 'id="eviction"' in body and "maxmemory-policy allkeys-lru" in body
    assert 'id="eviction"' not in quiet


def test_a_real_queue_writes_the_history_the_chart_shows(
    client: redis.Redis, stream: str, site_for: Any
) -> None:
    # Given a queue whose worker fails on odd numbers, drained once
    def worker(task: flowd.Task[Any]) -> None:
        if task.job.n % 2:
            raise ValueError("odd")

    producer = flowd.Producer(client, stream)
    from tests.helpers import Numbered

    producer.enqueue_bulk([Numbered(n=n) for n in range(7)])
    queue = numbered_queue(client, stream, worker)
    assert queue.drain(timeout=30) == 4

    # Then this minute's counters are in Redis, expiring within two hours
    minute = _throughput.history(client, [stream], minutes=2)
    assert sum(m.processed for m in minute) == 4
    assert sum(m.failed for m in minute) == 3
    for what in ("processed", "failed"):
        key = _throughput.minute_key(stream, minute[-1].start // 60, what)
        if not client.exists(key):  # the minute turned during the drain
            key = _throughput.minute_key(stream, minute[0].start // 60, what)
        assert 0 < client.ttl(key) <= _throughput.MINUTE_TTL

    # And a dashboard started afterwards shows them (history lives in Redis, not in memory)
    status, _, body = site_for([stream]).get("/")
    assert status == 200
    assert '<strong class="total-processed">4</strong>' in body
    assert '<strong class="total-failed">3</strong>' in body
    assert "processed, 3 failed</title>" in body or "processed, 2 failed</title>" in body


def test_stream_page_shows_groups_consumers_pending_and_dead_letters(
    client: redis.Redis, stream: str, site_for: Any
) -> None:
    # Given a pending message with a recorded failure, and a dead letter
    with_group(client, stream, entries=2, pending=1)
    pending_id = client.xpending_range(stream, "g", "-", "+", 1)[0]["message_id"].decode()
    client.hset(derived_key(stream, "errors:g"), pending_id, "TimeoutError: slow API")
    tb = 'Traceback (most recent call last):\n  File "jobs.py", line 3\nValueError: card declined'
    add_dead_letter(
        client, stream, {"to": "a@example.com", "flowd:traceback": tb}, "ValueError: card declined"
    )
    site = site_for([stream])

    # When the stream's page is opened
    status, _, body = site.get(f"/stream?name={stream}")

    # Then it shows the group, its consumer, the pending message with its last error,
    # and the dead letter with its reason and fields, with a Requeue button
    assert status == 200
    assert '<td><a href="/stream?name=' in body and ">g</a>" in body
    assert "<td>c1</td>" in body
    assert pending_id in body and "TimeoutError: slow API" in body
    assert "ValueError: card declined" in body
    assert "<dt>to</dt><dd>a@example.com</dd>" in body
    assert "<summary>Traceback</summary><pre>Traceback (most recent call last):" in body
    assert "flowd:traceback" not in body  # flowd's own fields are not job fields
    assert ">Requeue</button>" in body and ">Purge</button>" in body


def test_a_django_tasks_dead_letter_shows_its_task_not_raw_fields(
    client: redis.Redis, stream: str, site_for: Any
) -> None:
    # Given the dead letter of a Django task's message (flowd.contrib.django.tasks)
    with_group(client, stream, entries=1, pending=0)
    fields = {
        "task": "shop.tasks.charge",
        "result_id": "ab" * 16,
        "args": "[7]",
        "kwargs": '{"amount":3}',
        "queue": "default",
    }
    add_dead_letter(client, stream, fields, "ValueError: card declined")

    # When the stream's page is opened
    _, _, body = site_for([stream]).get(f"/stream?name={stream}")

    # Then it names the task, called with its arguments, and its result id
    assert "<dt>task</dt><dd>shop.tasks.charge(7, **{&#34;amount&#34;:3})</dd>" in body, body
    assert f"<dt>result id</dt><dd>{'ab' * 16}</dd>" in body
    assert "<dt>args</dt>" not in body and "<dt>kwargs</dt>" not in body


def test_fields_and_reasons_are_text_never_markup(
    client: redis.Redis, stream: str, site_for: Any
) -> None:
    # Given a dead letter whose field, name and reason hold markup
    with_group(client, stream)
    add_dead_letter(client, stream, {XSS: XSS, "note": "</dd><script>x()</script>"}, XSS)

    # When the stream page is rendered
    status, headers, body = site_for([stream]).get(f"/stream?name={stream}")

    # Then every one is escaped, and the policy forbids scripts anyway
    assert status == 200
    assert "<img" not in body and "<script>" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none' applies
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_requeue_replayed_from_another_origin_without_cookies_is_refused(
    client: redis.Redis, stream: str, site_for: Any
) -> None:
    # Given a dead letter, and the form a logged-in browser got (cookie + token)
    with_group(client, stream)
    dlq_id = add_dead_letter(client, stream, {"n": "9"}, "ValueError: no")
    site = site_for([stream])
    cookie, token = site.session()
    form = {"csrf": token, "stream": stream, "id": dlq_id}
    before = client.xlen(stream)

    # When the POST is replayed from another origin, without the browser's cookies
    evil = site.post("/requeue", form, same_site=False, Origin="http://evil.example")
    # Or with no Origin or Referer at all, or with the cookie but a forged token
    bare = site.post("/requeue", form, same_site=False)
    forged = site.post("/requeue", {**form, "csrf": "guess"}, Cookie=cookie)
    # Or with the right cookie and token but from another origin
    cross = site.post(
        "/requeue", form, same_site=False, Cookie=cookie, Origin="http://evil.example"
    )

    # Then each is refused with 403 and nothing changes
    for status, _, body in (evil, bare, forged, cross):
        assert status == 403, body
    assert client.xlen(dead_letter_stream(stream)) == 1
    assert client.xlen(stream) == before

    # When the same POST comes from the dashboard's own page (cookie, token, origin)
    status, headers, _ = site.post("/requeue", form, Cookie=cookie)

    # Then it is done, and the browser is sent back to the stream page
    assert status == 303
    assert headers["Location"] == f"/stream?name={stream}&done=requeued&n=1"
    assert client.xlen(dead_letter_stream(stream)) == 0
    assert client.xrevrange(stream, count=1)[0][1] == {b"n": b"9"}


def test_the_csrf_cookie_is_strict_and_http_only(stream: str, site_for: Any) -> None:
    _, headers, _ = site_for([stream]).get("/")
    cookie = headers["Set-Cookie"]
    assert "SameSite=Strict" in cookie and "HttpOnly" in cookie and "Path=/" in cookie


def test_basic_auth_is_required_when_given(stream: str, site_for: Any) -> None:
    site = site_for([stream], auth="ops:s3cret-pw")

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    # Without credentials, or with wrong ones: 401 and a challenge
    for headers in ({}, {"Authorization": basic("ops", "wrong")}, {"Authorization": "Bearer x"}):
        status, response_headers, body = site.get("/", **headers)
        assert status == 401
        assert response_headers["WWW-Authenticate"].startswith("Basic realm=")
        assert "s3cret" not in body
    # With them: 200, on every page
    good = {"Authorization": basic("ops", "s3cret-pw")}
    assert site.get("/", **good)[0] == 200
    assert site.get(f"/stream?name={stream}", **good)[0] == 200
    # And the password is in no repr
    assert "s3cret" not in repr(site.app)


def test_read_only_shows_no_buttons_and_refuses_posts(
    client: redis.Redis, stream: str, site_for: Any
) -> None:
    with_group(client, stream)
    dlq_id = add_dead_letter(client, stream, {"n": "1"}, "ValueError: no")
    site = site_for([stream], read_only=True)
    cookie, _ = site.session()
    status, _, body = site.get(f"/stream?name={stream}", Cookie=cookie)
    assert status == 200 and "read-only" in body
    # Only the job search is left: a GET form, which changes nothing
    assert 'class="job-search"' in body and 'method="post"' not in body
    rest = re.sub(r'<form method="get"[^>]*class="job-search".*?</form>', "", body, flags=re.S)
    assert "<button" not in rest and "<form" not in rest
    token = cookie.split("=", 1)[1]
    for path in ("/requeue", "/purge", "/requeue-all"):
        refused = site.post(
            path, {"csrf": token, "stream": stream, "id": dlq_id, "confirm": "yes"}, Cookie=cookie
        )
        assert refused[0] == 403
    assert client.xlen(dead_letter_stream(stream)) == 1


def test_destroying_actions_ask_for_confirmation_first(
    client: redis.Redis, stream: str, site_for: Any
) -> None:
    with_group(client, stream)
    for n in range(3):
        add_dead_letter(client, stream, {"n": str(n)}, "ValueError: no")
    site = site_for([stream])
    cookie, token = site.session()
    form = {"csrf": token, "stream": stream}

    # When Purge is posted without confirmation
    status, _, body = site.post("/purge", form, Cookie=cookie)
    # Then a confirmation page asks, and nothing is deleted yet
    assert status == 200 and "Delete all 3 dead letters" in body
    assert 'name="confirm" value="yes"' in body
    assert client.xlen(dead_letter_stream(stream)) == 3

    # When "Requeue all" is confirmed: all three go back to the stream
    status, headers, _ = site.post("/requeue-all", {**form, "confirm": "yes"}, Cookie=cookie)
    assert status == 303 and headers["Location"].endswith("done=requeued-all&n=3")
    assert client.xlen(dead_letter_stream(stream)) == 0

    # When purge is confirmed on a new dead letter: it is gone
    add_dead_letter(client, stream, {"n": "4"}, "ValueError: no")
    status, headers, _ = site.post("/purge", {**form, "confirm": "yes"}, Cookie=cookie)
    assert status == 303 and headers["Location"].endswith("done=purged&n=1")
    assert client.xlen(dead_letter_stream(stream)) == 0
    page = site.get(headers["Location"], Cookie=cookie)[2]
    assert "Purged 1 dead letter(s)." in page


def test_long_lists_are_paginated(client: redis.Redis, stream: str, site_for: Any) -> None:
    # Given 120 dead letters and 60 pending messages
    with_group(client, stream, entries=60, pending=60)
    pipe = client.pipeline()
    for n in range(120):
        pipe.xadd(dead_letter_stream(stream), {"n": str(n), "flowd:reason": f"reason {n}"})
    pipe.execute()
    site = site_for([stream])

    # When the dead letters are paged through with "Older"
    seen: list[int] = []
    path: str | None = f"/stream?name={stream}"
    pages = 0
    while path is not None:
        status, _, body = site.get(path)
        assert status == 200
        pages += 1
        seen += [int(n) for n in re.findall(r"<dt>n</dt><dd>(\d+)</dd>", body)]
        older = re.search(r'<a class="next" href="([^"]+)#dead"', body)
        path = older[1].replace("&amp;", "&") if older else None
    # Then three pages of at most 50 show each one once, newest first
    assert pages == 3
    assert seen == list(range(119, -1, -1))

    # And the pending list shows 50, with a next page holding the other 10
    body = site.get(f"/stream?name={stream}")[2]
    assert len(re.findall(r'<tr><td class="mono">\d+-\d+</td><td>c1</td>', body)) == 50
    nxt = re.search(r'<a class="next" href="([^"]+)#pending"', body)
    assert nxt is not None
    body = site.get(nxt[1].replace("&amp;", "&"))[2]
    assert len(re.findall(r'<tr><td class="mono">\d+-\d+</td><td>c1</td>', body)) == 10


def test_unknown_streams_and_pages_are_404(client: redis.Redis, stream: str, site_for: Any) -> None:
    with_group(client, stream)
    other = f"{stream}-other"
    with_group(client, other)
    add_dead_letter(client, other, {"n": "1"}, "ValueError: no")
    site = site_for([stream])
    assert site.get(f"/stream?name={other}")[0] == 404
    assert site.get("/nothing")[0] == 404
    assert site.get("/static/../app.py")[0] == 404
    # And a cursor that is not a stream id just means the first page
    junk = site.get(f"/stream?name={stream}&dead_before=junk&pending_after=1-x")
    assert junk[0] == 200 and "Dead letters" in junk[2]
    # And no action reaches a stream the dashboard does not show
    cookie, token = site.session()
    status = site.post("/purge", {"csrf": token, "stream": other, "confirm": "yes"}, Cookie=cookie)
    assert status[0] == 404
    assert client.xlen(dead_letter_stream(other)) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"streams": "emails"}, "write ['emails']"),
        ({"streams": [""]}, "non-empty str"),
        ({"auth": "no-colon-s3cret"}, "USER:PASSWORD"),
        ({"auth": ":s3cret"}, "non-empty user"),
        ({"read_only": "yes"}, "read_only must be a bool"),
    ],
)
def test_bad_arguments_are_named(client: redis.Redis, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(flowd.ConfigurationError, match=re.escape(message)) as caught:
        Dashboard(client, **kwargs)
    assert "s3cret" not in str(caught.value)


def test_not_a_client_is_refused() -> None:
    with pytest.raises(flowd.ConfigurationError, match=r"redis\.Redis"):
        Dashboard("redis://localhost")


def test_pages_read_the_same_with_a_decoding_client(
    redis_url: str, client: redis.Redis, stream: str
) -> None:
    # Given a queue with a pending failure and a dead letter, read by a decode_responses client
    with_group(client, stream, entries=2, pending=1)
    pending_id = client.xpending_range(stream, "g", "-", "+", 1)[0]["message_id"].decode()
    client.hset(derived_key(stream, "errors:g"), pending_id, "TimeoutError: slow")
    add_dead_letter(client, stream, {"to": "b@example.com"}, "ValueError: declined")
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    app = Dashboard(decoding, [stream])
    try:
        with serving(app) as base:
            site = Site(base, app)
            overview = site.get("/")
            page = site.get(f"/stream?name={stream}")
    finally:
        decoding.close()
    # Then both pages render what the bytes client's pages show
    assert overview[0] == 200 and f">{stream}</a>" in overview[2]
    assert page[0] == 200
    for text in (pending_id, "TimeoutError: slow", "ValueError: declined", "b@example.com"):
        assert text in page[2], text


def test_behind_a_tls_proxy_the_browsers_origin_is_accepted(
    client: redis.Redis, stream: str
) -> None:
    # Given a WSGI server behind a proxy that terminates TLS for https://ops.example
    # (gunicorn and Django pass X-Forwarded-* on; waitress only from a trusted_proxy)
    with_group(client, stream)
    dlq_id = add_dead_letter(client, stream, {"n": "1"}, "ValueError: no")
    app = Dashboard(client, [stream])
    proxied = {"HTTP_HOST": "127.0.0.1:8700", "HTTP_X_FORWARDED_HOST": "ops.example"}
    proxied["HTTP_X_FORWARDED_PROTO"] = "https"
    status, headers, _ = call(app, "GET", "/", proxied)
    # Then the cookie is Secure
    assert status.startswith("200") and "; Secure" in headers["Set-Cookie"]
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    form = {"csrf": cookie.split("=", 1)[1], "stream": stream, "id": dlq_id}
    session = {**proxied, "HTTP_COOKIE": cookie}
    # And a POST from another site through the same proxy is refused
    evil = {**session, "HTTP_ORIGIN": "https://evil.example"}
    assert call(app, "POST", "/requeue", evil, form)[0].startswith("403")
    assert client.xlen(dead_letter_stream(stream)) == 1
    # And the page's own POST (Origin https://ops.example) is accepted
    own = {**session, "HTTP_ORIGIN": "https://ops.example"}
    assert call(app, "POST", "/requeue", own, form)[0].startswith("303")
    assert client.xlen(dead_letter_stream(stream)) == 0


def test_redis_down_gives_an_error_page_not_a_crash(stream: str) -> None:
    from tests.redis_server import free_port

    down = redis.Redis(port=free_port(), socket_connect_timeout=1)
    app = Dashboard(down, [stream])
    with serving(app) as base:
        status, headers, body = http(base + "/")
        assert status == 503 and "Redis error" in body
        assert "Content-Security-Policy" in headers
        # And it serves again as soon as Redis is back (nothing is cached)
        assert http(base + "/static/dashboard.css")[0] == 200


def test_a_user_without_counter_rights_still_acks_and_is_told_once(
    private_redis: Any, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.helpers import Numbered
    from tests.redis.test_security import FLOWD_COMMANDS, acl_rules

    # Given an ACL user with the commands flowd needed before the counters (no INCRBY/EXPIRE)
    admin = redis.Redis.from_url(private_redis.url)
    rules = [r for r in acl_rules(stream, "pw") if r not in ("+incrby", "+expire")]
    assert len(rules) == len(acl_rules(stream, "pw")) - 2 and "+incrby" in FLOWD_COMMANDS
    admin.execute_command("ACL", "SETUSER", "old", *rules)
    user = redis.Redis.from_url(private_redis.url, username="old", password="pw")
    flowd.Producer(user, stream).enqueue_bulk([Numbered(n=n) for n in range(5)])

    # When a queue runs its jobs as that user
    queue = numbered_queue(user, stream, lambda task: None)
    _throughput._warned.clear()  # said once per process: make this test's process fresh
    with caplog.at_level("WARNING", logger="flowd"):
        assert queue.drain(timeout=30) == 5

    # Then every job is acked all the same, and one WARNING says what to grant
    assert admin.xpending(stream, "g")["pending"] == 0
    warnings = [r for r in caplog.records if "throughput counters" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "Allow INCRBY and EXPIRE" in warnings[0].getMessage()
    user.close()
    admin.close()


def test_mount_helpers_name_bad_arguments(client: redis.Redis) -> None:
    from flask import Flask

    from flowd.dashboard.mount import mount_flask

    app = Flask(__name__)
    for prefix in ("flowd", "/", ""):
        with pytest.raises(flowd.ConfigurationError, match="prefix must be a path"):
            mount_flask(app, Dashboard(client, ["s"]), prefix)
    with pytest.raises(flowd.ConfigurationError, match=r"expected a flowd\.dashboard\.Dashboard"):
        mount_flask(app, object(), "/flowd")  # type: ignore[arg-type]


def test_on_redis_cluster_a_partitioned_queue_is_shown_and_requeued(cluster: RedisCluster) -> None:
    # Given a three-master cluster and a queue of three partitions, each on its own master
    client = cluster.client()
    try:
        names = flowd.partition_streams("orders", 3)
        for name in names:
            client.xadd(name, {"n": "1"})
            client.xgroup_create(name, "g", "0")
        dlq_id = add_dead_letter(client, names[2], {"n": "2"}, "ValueError: no")
        # And a dashboard that finds the streams itself (SCAN on every master)
        app = Dashboard(client)
        with serving(app) as base:
            site = Site(base, app)
            overview = site.get("/")[2]
            page = site.get(f"/stream?name={urllib.parse.quote(names[2])}")
            cookie, token = site.session()
            form = {"csrf": token, "stream": names[2], "id": dlq_id}
            moved = site.post("/requeue", form, Cookie=cookie)
        # Then every partition is listed, its page renders, and Requeue works across the slot
        for name in names:
            assert f">{name}</a>" in overview
        assert page[0] == 200 and "ValueError: no" in page[2]
        assert moved[0] == 303
        assert client.xlen(dead_letter_stream(names[2])) == 0 and client.xlen(names[2]) == 2
    finally:
        client.close()
