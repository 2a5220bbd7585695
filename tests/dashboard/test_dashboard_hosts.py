"""The dashboard answers only for its allowed hosts: DNS rebinding gets neither page nor action."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

import flowd
from flowd._redis.keys import dead_letter_stream
from flowd.dashboard import Dashboard
from tests.dashboard.dashboard_server import add_dead_letter, call, http, serving


def queue_with_dead_letter(client: redis.Redis, stream: str) -> str:
    """A stream with a group and one dead letter; the dead letter's id."""
    client.xadd(stream, {"n": "1"})
    client.xgroup_create(stream, "g", "0")
    return add_dead_letter(client, stream, {"n": "1"}, "ValueError: no")


def get(app: Dashboard, host: str | None, **environ: str) -> tuple[int, dict[str, str], str]:
    """GET / as a browser that used ``host`` (None: no Host header at all)."""
    if host is not None:
        environ["HTTP_HOST"] = host
    status, headers, body = call(app, "GET", "/", environ)
    return int(status.split()[0]), headers, body


def test_the_constructors_hosts_are_served_and_a_rebound_name_is_refused(
    client: redis.Redis, stream: str
) -> None:
    # Given a Dashboard served on its own with allowed_hosts, and a dead letter
    queue_with_dead_letter(client, stream)
    app = Dashboard(client, [stream], allowed_hosts=["ops.example"])
    with serving(app) as base:
        port = base.rsplit(":", 1)[1]
        page = f"{base}/stream?name={stream}"
        # When the page is asked for under the allowed name
        status, headers, body = http(page, headers={"Host": f"ops.example:{port}"})
        # Then it is served, with its token
        assert status == 200 and 'name="csrf"' in body
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        token = cookie.split("=", 1)[1]

        # When a page of evil.example, rebound to this address, asks for it
        status, headers, body = http(page, headers={"Host": f"evil.example:{port}"})
        # Then it gets 400 with a short text naming the option, and no page, cookie or token
        assert status == 400, body
        assert "not allowed" in body and "--allowed-hosts" in body and "allowed_hosts=" in body
        assert headers["Content-Type"].startswith("text/plain")
        assert "csrf" not in body and token not in body and "Set-Cookie" not in headers

        # When it posts a purge with the token (Origin and Host both its own)
        form = {"csrf": token, "stream": stream, "confirm": "yes"}
        evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        refused = http(base + "/purge", data=form, headers={**evil, "Cookie": cookie})
        # Then it is refused and the dead letters are still there
        assert refused[0] == 400
        assert client.xlen(dead_letter_stream(stream)) == 1

        # When the dashboard's own page posts it
        own = {"Host": f"ops.example:{port}", "Origin": f"http://ops.example:{port}"}
        done = http(base + "/purge", data=form, headers={**own, "Cookie": cookie})
        # Then the dead letters are purged
        assert done[0] == 303, done[2]
        assert client.xlen(dead_letter_stream(stream)) == 0


def test_a_post_whose_origin_is_not_allowed_is_refused(client: redis.Redis, stream: str) -> None:
    # Given a dashboard behind a proxy that puts the browser's host in X-Forwarded-Host
    queue_with_dead_letter(client, stream)
    app = Dashboard(client, [stream], allowed_hosts=["127.0.0.1", "ops.example"])
    proxied = {"HTTP_HOST": "127.0.0.1:8700", "HTTP_X_FORWARDED_HOST": "ops.example"}
    status, headers, _ = get(app, None, **proxied)
    assert status == 200
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    form = {"csrf": cookie.split("=", 1)[1], "stream": stream, "confirm": "yes"}
    session = {**proxied, "HTTP_COOKIE": cookie}

    # When a purge comes with the right token but an Origin naming another host
    refused = call(app, "POST", "/purge", {**session, "HTTP_ORIGIN": "http://evil.example"}, form)
    # Then it is 403 and nothing is purged
    assert refused[0].startswith("403"), refused
    assert client.xlen(dead_letter_stream(stream)) == 1

    # When the proxy says the browser used a host that is not allowed
    rebound = {**session, "HTTP_X_FORWARDED_HOST": "evil.example"}
    forwarded = call(app, "POST", "/purge", {**rebound, "HTTP_ORIGIN": "http://evil.example"}, form)
    # Then that is refused as a Host would be
    assert forwarded[0].startswith("400"), forwarded
    assert client.xlen(dead_letter_stream(stream)) == 1

    # When the Origin names the allowed host
    done = call(app, "POST", "/purge", {**session, "HTTP_ORIGIN": "https://ops.example"}, form)
    # Then it is done
    assert done[0].startswith("303"), done
    assert client.xlen(dead_letter_stream(stream)) == 0


@pytest.mark.parametrize(
    ("allowed", "host", "status"),
    [
        # an exact host, without a port: every port
        (["ops.example"], "ops.example", 200),
        (["ops.example"], "ops.example:8700", 200),
        (["ops.example"], "OPS.Example:8700", 200),
        (["OPS.EXAMPLE"], "ops.example", 200),
        (["ops.example"], "ops.example.", 200),
        (["ops.example"], "evil.example", 400),
        (["ops.example"], "sub.ops.example", 400),
        (["ops.example"], "ops.example.evil.example", 400),
        # with a port: that port only
        (["ops.example:8443"], "ops.example:8443", 200),
        (["ops.example:8443"], "ops.example:8700", 400),
        (["ops.example:8443"], "ops.example", 400),
        # a leading dot: the domain and its subdomains
        ([".example.com"], "example.com", 200),
        ([".example.com"], "a.example.com:8700", 200),
        ([".example.com"], "A.B.Example.COM", 200),
        ([".example.com"], "badexample.com", 400),
        ([".example.com"], "example.com.evil.net", 400),
        # * : any host
        (["*"], "evil.example:8700", 200),
        (["*"], "203.0.113.9", 200),
        # IPv6, bracketed or not in the list
        (["::1"], "[::1]:8700", 200),
        (["[::1]"], "[::1]", 200),
        (["[::1]"], "[::2]:8700", 400),
        # not a host at all
        (["ops.example"], "ops.example:8700/x", 400),
        (["ops.example"], "user@ops.example", 400),
        (["*"], "", 400),
    ],
)
def test_host_rules(
    client: redis.Redis, stream: str, allowed: list[str], host: str, status: int
) -> None:
    # Given a dashboard with these allowed hosts
    queue_with_dead_letter(client, stream)
    app = Dashboard(client, [stream], allowed_hosts=allowed)
    # When a browser asks for its overview under this Host
    got, headers, body = get(app, host)
    # Then it is served only when a rule allows the host
    assert got == status, body
    if status == 400:
        assert "Set-Cookie" not in headers and "--allowed-hosts" in body and "csrf" not in body


def test_a_request_without_host_is_refused_when_hosts_are_checked(
    client: redis.Redis, stream: str
) -> None:
    queue_with_dead_letter(client, stream)
    app = Dashboard(client, [stream], allowed_hosts=["*"])
    assert get(app, None)[0] == 400


def test_without_allowed_hosts_the_host_is_left_to_the_framework(
    client: redis.Redis, stream: str
) -> None:
    # Given a Dashboard as mounted in Django (allowed_hosts=None: ALLOWED_HOSTS decides)
    queue_with_dead_letter(client, stream)
    app = Dashboard(client, [stream])
    # Then it serves whatever host the framework let through
    assert get(app, "anything.example:8000")[0] == 200
    assert app.allowed_hosts is None


def test_the_host_check_comes_before_auth(client: redis.Redis, stream: str) -> None:
    # Given a dashboard with auth and allowed hosts
    queue_with_dead_letter(client, stream)
    app = Dashboard(client, [stream], auth="ops:s3cret", allowed_hosts=["ops.example"])
    # Then a rebound name gets 400, not the auth challenge; an allowed one gets the challenge
    status, headers, _ = get(app, "evil.example")
    assert status == 400 and "WWW-Authenticate" not in headers
    assert get(app, "ops.example")[0] == 401


@pytest.mark.parametrize(
    ("allowed", "message"),
    [
        ("ops.example", "write ['ops.example']"),
        (["http://ops.example"], "'http://ops.example' is not a host"),
        ([""], "'' is not a host"),
        (["."], "'.' is not a host"),
        ([".[::1]"], "'.[::1]' is not a host"),
        (["ops.example:port"], "'ops.example:port' is not a host"),
        ([3], "must be a str"),
    ],
)
def test_bad_allowed_hosts_are_named(client: redis.Redis, allowed: Any, message: str) -> None:
    with pytest.raises(flowd.ConfigurationError, match=re.escape(message)):
        Dashboard(client, allowed_hosts=allowed)
