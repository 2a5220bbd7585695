"""``flowd dashboard``: the real command in a subprocess, served by waitress."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flowd import partition_streams
from flowd._redis.keys import dead_letter_stream
from tests.dashboard.dashboard_server import add_dead_letter, http
from tests.helpers import run_flowd, run_python

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-Pa55"


class Served:
    """A running ``flowd dashboard`` process and the URL it printed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            # DEBUG logs: the password must not show up in them either.
            [sys.executable, "-m", "flowd", "--log-level", "DEBUG", "dashboard", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.first_line = self.process.stdout.readline()
        found = re.search(r"serving (http://\S+?)/ ", self.first_line)
        assert found, (self.first_line, self.stop())
        self.url = found[1]

    def stop(self) -> tuple[str, str]:
        """SIGTERM, then the rest of stdout and stderr; asserts a clean exit."""
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        return self.first_line + out, err


@pytest.fixture
def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
    return {**clean, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def served(env: dict[str, str]) -> Iterator[Any]:
    running: list[Served] = []

    def start(*args: str, **extra_env: str) -> Served:
        server = Served(list(args), {**env, **extra_env})
        running.append(server)
        return server

    yield start
    for server in running:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        # Closed here, so a test that failed before stop() leaves no open pipe behind for
        # the garbage collector to warn about in some later test.
        for pipe in (server.process.stdout, server.process.stderr):
            if pipe is not None:
                pipe.close()


def one_job(client: redis.Redis, stream: str, *, dead_letter: bool = False) -> None:
    """``stream`` with one job and group g (and one dead letter, if asked)."""
    client.xadd(stream, {"n": "1"})
    client.xgroup_create(stream, "g", "0")
    if dead_letter:
        add_dead_letter(client, stream, {"n": "1"}, "ValueError: no")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_auth_is_required_and_the_password_is_never_printed(
    redis_url: str, client: redis.Redis, stream: str, served: Any
) -> None:
    # Given `flowd dashboard STREAM --auth USER:PASSWORD` on a free port
    one_job(client, stream)
    server = served(stream, "--url", redis_url, "--port", "0", "--auth", f"ops:{PASSWORD}")

    # Then it prints the loopback URL it serves
    assert server.url.startswith("http://127.0.0.1:")
    # And answers 401 without credentials, 200 with them
    assert http(server.url + "/")[0] == 401
    assert http(server.url + "/", headers=basic("ops", "nope"))[0] == 401
    status, _, body = http(server.url + "/", headers=basic("ops", PASSWORD))
    assert status == 200 and stream in body
    assert http(f"{server.url}/stream?name={stream}", headers=basic("ops", PASSWORD))[0] == 200

    # And the password is in neither its output nor its logs
    out, err = server.stop()
    assert PASSWORD not in out and PASSWORD not in err
    assert "HTTP Basic auth" in out


def test_auth_comes_from_the_environment_too(redis_url: str, stream: str, served: Any) -> None:
    server = served(stream, "--url", redis_url, "--port", "0", FLOWD_DASHBOARD_AUTH="ops:pw")
    assert http(server.url + "/")[0] == 401
    assert http(server.url + "/", headers=basic("ops", "pw"))[0] == 200
    server.stop()


def test_read_only_shows_no_buttons_and_refuses_posts(
    redis_url: str, client: redis.Redis, stream: str, served: Any
) -> None:
    one_job(client, stream, dead_letter=True)
    server = served(stream, "--url", redis_url, "--port", "0", "--read-only")
    status, headers, body = http(f"{server.url}/stream?name={stream}")
    assert status == 200 and "ValueError: no" in body
    # No action buttons: the one form left is the job search (a GET)
    assert 'method="post"' not in body
    assert body.count("<button") == 1 and '<button type="submit">Find job</button>' in body
    token = headers["Set-Cookie"].split(";")[0]
    refused = http(
        server.url + "/purge",
        data={"csrf": token.split("=", 1)[1], "stream": stream, "confirm": "yes"},
        headers={"Cookie": token, "Origin": server.url},
    )
    assert refused[0] == 403
    assert client.xlen("{" + stream + "}:dead") == 1
    server.stop()


def test_partitions_show_each_stream_of_the_queue(
    redis_url: str, client: redis.Redis, stream: str, served: Any
) -> None:
    # Given a queue of three partitions, each with its group
    names = partition_streams(stream, 3)
    for name in names:
        client.xadd(name, {"n": "1"})
        client.xgroup_create(name, "g", "0")
    # When the dashboard is asked for the queue with --partitions 3
    server = served(stream, "--url", redis_url, "--port", "0", "--partitions", "3")
    body = http(server.url + "/")[2]
    # Then each partition has its row and its page
    for name in names:
        assert f">{name}</a>" in body
        link = f"{server.url}/stream?{urllib.parse.urlencode({'name': name})}"
        assert http(link)[0] == 200
    server.stop()


def dashboard_page(server: Served, stream: str) -> tuple[str, str]:
    """(cookie header, csrf token) of the stream page as the dashboard's own browser gets it."""
    status, headers, body = http(f"{server.url}/stream?name={stream}")
    assert status == 200, body
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    found = re.search(r'name="csrf" value="([^"]+)"', body)
    assert found, body
    return cookie, found[1]


def test_a_dns_rebinding_page_gets_neither_the_token_nor_the_purge(
    redis_url: str, client: redis.Redis, stream: str, served: Any
) -> None:
    # Given `flowd dashboard` in its default mode (loopback, no auth) and a dead letter
    one_job(client, stream, dead_letter=True)
    server = served(stream, "--url", redis_url, "--port", "0")
    port = server.url.rsplit(":", 1)[1]
    evil = f"evil.example:{port}"

    # When a page of evil.example, its name rebound to 127.0.0.1, loads the dashboard
    status, headers, body = http(f"{server.url}/stream?name={stream}", headers={"Host": evil})
    # Then it gets 400 naming --allowed-hosts, and neither the page nor a token
    assert status == 400, body
    assert "not allowed" in body and "--allowed-hosts" in body
    assert "csrf" not in body and "Set-Cookie" not in headers

    # When it posts the purge with a token (one the dashboard's own page holds)
    cookie, token = dashboard_page(server, stream)
    form = {"csrf": token, "stream": stream, "confirm": "yes"}
    rebound = {"Host": evil, "Origin": f"http://{evil}", "Cookie": cookie}
    # Or sends it to the loopback name but from its own origin
    cross = {"Origin": f"http://{evil}", "Cookie": cookie}
    # Then both are refused, and the dead letters are still there
    assert http(server.url + "/purge", data=form, headers=rebound)[0] == 400
    assert http(server.url + "/purge", data=form, headers=cross)[0] == 403
    assert client.xlen(dead_letter_stream(stream)) == 1

    # And the dashboard's own page still purges
    own = {"Origin": server.url, "Cookie": cookie}
    assert http(server.url + "/purge", data=form, headers=own)[0] == 303
    assert client.xlen(dead_letter_stream(stream)) == 0
    server.stop()


def test_loopback_names_are_allowed_by_default(
    redis_url: str, client: redis.Redis, stream: str, served: Any
) -> None:
    # Given the default dashboard on 127.0.0.1
    one_job(client, stream)
    server = served(stream, "--url", redis_url, "--port", "0")
    port = server.url.rsplit(":", 1)[1]
    # Then every loopback name is served, on any port, in any case; other names are not
    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}"):
        assert http(server.url + "/", headers={"Host": host})[0] == 200, host
    assert http(server.url + "/", headers={"Host": f"[::1]:{port}"})[0] == 200
    assert http(server.url + "/", headers={"Host": f"localhost.evil.example:{port}"})[0] == 400
    server.stop()


def test_allowed_hosts_come_from_the_option(
    redis_url: str, client: redis.Redis, stream: str, served: Any
) -> None:
    # Given a dashboard started with --allowed-hosts (given twice, comma separated)
    one_job(client, stream, dead_letter=True)
    server = served(
        stream,
        "--url",
        redis_url,
        "--port",
        "0",
        "--allowed-hosts",
        "ops.example, .corp.example",
        "--allowed-hosts",
        "dash.example:9000",
    )
    port = server.url.rsplit(":", 1)[1]
    # Then those hosts are served, besides loopback
    for host in ("ops.example", f"ops.example:{port}", "corp.example", "a.corp.example"):
        assert http(server.url + "/", headers={"Host": host})[0] == 200, host
    assert http(server.url + "/", headers={"Host": "dash.example:9000"})[0] == 200
    assert http(server.url + "/", headers={"Host": f"localhost:{port}"})[0] == 200
    # And no other
    for host in ("evil.example", "notcorp.example", f"dash.example:{port}"):
        assert http(server.url + "/", headers={"Host": host})[0] == 400, host
    # And an allowed host's own page can act
    cookie, token = dashboard_page(server, stream)
    form = {"csrf": token, "stream": stream, "confirm": "yes"}
    headers = {"Host": "ops.example", "Origin": "https://ops.example", "Cookie": cookie}
    assert http(server.url + "/purge", data=form, headers=headers)[0] == 303
    assert client.xlen(dead_letter_stream(stream)) == 0
    server.stop()


def test_allowed_hosts_come_from_the_environment_unless_the_option_is_given(
    redis_url: str, stream: str, served: Any
) -> None:
    extra = {"FLOWD_DASHBOARD_ALLOWED_HOSTS": "ops.example,dash.example"}
    # Given the environment variable alone: its hosts are served
    server = served(stream, "--url", redis_url, "--port", "0", **extra)
    for host in ("ops.example", "dash.example", "127.0.0.1"):
        assert http(server.url + "/", headers={"Host": host})[0] == 200, host
    assert http(server.url + "/", headers={"Host": "evil.example"})[0] == 400
    server.stop()
    # Given the option too: the option's list replaces the variable's (as --auth does)
    server = served(
        stream, "--url", redis_url, "--port", "0", "--allowed-hosts", "other.example", **extra
    )
    assert http(server.url + "/", headers={"Host": "other.example"})[0] == 200
    assert http(server.url + "/", headers={"Host": "ops.example"})[0] == 400
    server.stop()


def test_star_allows_every_host(redis_url: str, stream: str, served: Any) -> None:
    server = served(stream, "--url", redis_url, "--port", "0", "--allowed-hosts", "*")
    assert http(server.url + "/", headers={"Host": "anything.example:1234"})[0] == 200
    server.stop()


def test_a_wildcard_bind_says_which_hosts_it_answers(
    redis_url: str, stream: str, served: Any
) -> None:
    # Given a dashboard on every interface, with auth but no --allowed-hosts
    server = served(
        stream, "--url", redis_url, "--port", "0", "--bind", "0.0.0.0", "--auth", "ops:pw"
    )
    # Then it says that only loopback names are answered, and how to add the others
    _, err = server.stop()
    assert "only Host localhost" in err and "--allowed-hosts" in err


def test_a_bad_allowed_host_is_refused_at_start(redis_url: str, env: dict[str, str]) -> None:
    result = run_flowd(
        ["dashboard", "--url", redis_url],
        {**env, "FLOWD_DASHBOARD_ALLOWED_HOSTS": "https://ops.example"},
    )
    assert result.returncode == 2
    assert "'https://ops.example' is not a host" in result.stderr
    assert "serving" not in result.stdout


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_a_public_address_without_auth_is_refused(
    redis_url: str, env: dict[str, str], bind: str
) -> None:
    # When the dashboard is asked to listen beyond loopback without a password
    result = run_flowd(["dashboard", "--url", redis_url, "--bind", bind], env)
    # Then it refuses at once, saying why and what to do
    assert result.returncode == 2
    assert f"refusing to serve the dashboard on {bind} without a password" in result.stderr
    assert "--auth USER:PASSWORD" in result.stderr
    assert "serving" not in result.stdout


def test_the_options_are_documented_in_help(env: dict[str, str]) -> None:
    result = run_flowd(["dashboard", "--help"], env)
    assert result.returncode == 0, result.stderr
    for option in (
        "--url",
        "--bind",
        "--port",
        "--partitions",
        "--auth",
        "--allowed-hosts",
        "--read-only",
    ):
        assert option in result.stdout
    assert "FLOWD_DASHBOARD_ALLOWED_HOSTS" in result.stdout


def test_the_flowd_command_does_not_need_the_dashboard_extra(env: dict[str, str]) -> None:
    # The dashboard's libraries are imported only when `flowd dashboard` runs
    code = (
        "import sys, flowd.cli.parser; flowd.cli.parser.build_parser(); "
        "assert not {'jinja2', 'waitress'} & set(sys.modules), sorted(sys.modules)"
    )
    result = run_python(["-c", code], env=env)
    assert result.returncode == 0, result.stderr
