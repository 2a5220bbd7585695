"""The dashboard's Pause and Resume buttons: POSTs with the CSRF token like the other
actions, refused cross-site and when read-only; the stream page shows what is paused."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import flowd
from flowd.dashboard import Dashboard
from tests.dashboard.dashboard_server import serving
from tests.dashboard.test_dashboard import Site, with_group


@pytest.fixture
def site(client: redis.Redis, stream: str) -> Iterator[Site]:
    with_group(client, stream)
    app = Dashboard(client, [stream])
    with serving(app) as base:
        yield Site(base, app)


def test_pause_and_resume_a_group_and_the_stream(
    client: redis.Redis, stream: str, site: Site
) -> None:
    cookie, token = site.session()
    page = site.get(f"/stream?name={stream}", Cookie=cookie)[2]
    # Given a stream page with nothing paused: a Pause button for the stream and its group
    assert "Pause all groups" in page and 'value="g"' in page and "paused" not in page
    # When the group's Pause is posted
    form = {"csrf": token, "stream": stream, "group": "g"}
    status, headers, _ = site.post("/pause", form, Cookie=cookie)
    # Then it is paused at once (no confirmation: it is undone as easily), and shown
    assert status == 303
    assert headers["Location"] == f"/stream?name={stream}&group=g&done=paused&n=1"
    assert flowd.is_paused(client, stream, "g") and not flowd.is_paused(client, stream)
    page = site.get(headers["Location"], Cookie=cookie)[2]
    assert "Paused: its consumers read no new jobs" in page
    assert '<td class="state paused">paused' in page
    # When it is paused again, Then nothing changes, and the page says so
    status, headers, _ = site.post("/pause", form, Cookie=cookie)
    assert status == 303 and headers["Location"].endswith("done=unchanged&n=0")
    # When the whole stream is paused, Then the page says so, with one Resume for it all
    status, headers, _ = site.post("/pause", {"csrf": token, "stream": stream}, Cookie=cookie)
    assert status == 303 and flowd.is_paused(client, stream)
    page = site.get(f"/stream?name={stream}", Cookie=cookie)[2]
    assert "Paused (every group)" in page and "Resume all groups" in page
    # When it is resumed, Then every pause is lifted
    status, headers, _ = site.post("/resume", {"csrf": token, "stream": stream}, Cookie=cookie)
    assert status == 303 and headers["Location"].endswith("done=resumed&n=1")
    assert not flowd.is_paused(client, stream, "g")
    assert "paused" not in site.get(f"/stream?name={stream}", Cookie=cookie)[2]


def test_a_forged_pause_is_refused(client: redis.Redis, stream: str, site: Site) -> None:
    cookie, token = site.session()
    form = {"csrf": token, "stream": stream}
    # From another origin, without cookies, or with a guessed token: 403, nothing paused
    for status, _, body in (
        site.post("/pause", form, same_site=False, Origin="http://evil.example"),
        site.post("/pause", form, same_site=False),
        site.post("/pause", {**form, "csrf": "guess"}, Cookie=cookie),
    ):
        assert status == 403, body
    assert not flowd.is_paused(client, stream)
    # A group named "*" is refused with the reason
    status, _, body = site.post("/pause", {**form, "group": "*"}, Cookie=cookie)
    assert status == 400 and "other than '*'" in body
    assert not flowd.is_paused(client, stream)


def test_read_only_shows_the_state_but_no_buttons(client: redis.Redis, stream: str) -> None:
    with_group(client, stream)
    flowd.pause(client, stream)
    with serving(Dashboard(client, [stream], read_only=True)) as base:
        site = Site(base, Dashboard(client, [stream], read_only=True))
        cookie, token = site.session()
        page = site.get(f"/stream?name={stream}", Cookie=cookie)[2]
        assert "Paused (every group)" in page and "Resume" not in page
        refused = site.post("/resume", {"csrf": token, "stream": stream}, Cookie=cookie)
        assert refused[0] == 403
    assert flowd.is_paused(client, stream)


def test_the_paused_state_reads_the_same_with_a_decoding_client(
    redis_url: str, stream: str, client: redis.Redis
) -> None:
    with_group(client, stream)
    flowd.pause(client, stream, "g")
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with serving(Dashboard(decoding, [stream])) as base:
            page = Site(base, Dashboard(decoding, [stream])).get(f"/stream?name={stream}")[2]
        assert '<td class="state paused">paused' in page
    finally:
        decoding.close()


def test_an_unknown_group_can_be_paused_ahead(client: redis.Redis, stream: str, site: Site) -> None:
    # A group that has no consumers yet: its consumers will start paused
    cookie, token = site.session()
    form: dict[str, Any] = {"csrf": token, "stream": stream, "group": "later"}
    assert site.post("/pause", form, Cookie=cookie)[0] == 303
    assert flowd.is_paused(client, stream, "later") and not flowd.is_paused(client, stream, "g")


def test_a_partition_page_pauses_its_whole_queue(client: redis.Redis, stream: str) -> None:
    # Given the dashboard of a queue of 3 partitions, as `flowd dashboard --partitions 3` shows
    names = flowd.partition_streams(stream, 3)
    for name in names:
        with_group(client, name)
    app = Dashboard(client, names)
    with serving(app) as base:
        site = Site(base, app)
        cookie, token = site.session()
        # When Pause is posted from one partition's page
        form = {"csrf": token, "stream": names[1], "group": "g"}
        assert site.post("/pause", form, Cookie=cookie)[0] == 303
        # Then the queue is paused by its name, and every partition's page shows it
        assert flowd.is_paused(client, stream, "g")
        for name in names:
            page = site.get(f"/stream?name={urllib.parse.quote(name)}", Cookie=cookie)[2]
            assert '<td class="state paused">paused' in page
            assert f"{stream} (a partition of it" in page
        assert site.post("/resume", form, Cookie=cookie)[0] == 303
        assert not flowd.is_paused(client, stream, "g")
