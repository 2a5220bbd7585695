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
from tests.dashboard_server import add_dead_letter, http

REPO = Path(__file__).resolve().parent.parent
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


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_auth_is_required_and_the_password_is_never_printed(
    redis_url: str, client: redis.Redis, stream: str, served: Any
) -> None:
    # Given `flowd dashboard STREAM --auth USER:PASSWORD` on a free port
    client.xadd(stream, {"n": "1"})
    client.xgroup_create(stream, "g", "0")
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
    client.xadd(stream, {"n": "1"})
    client.xgroup_create(stream, "g", "0")
    add_dead_letter(client, stream, {"n": "1"}, "ValueError: no")
    server = served(stream, "--url", redis_url, "--port", "0", "--read-only")
    status, headers, body = http(f"{server.url}/stream?name={stream}")
    assert status == 200 and "ValueError: no" in body
    assert "<button" not in body
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


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_a_public_address_without_auth_is_refused(
    redis_url: str, env: dict[str, str], bind: str
) -> None:
    # When the dashboard is asked to listen beyond loopback without a password
    result = subprocess.run(
        [sys.executable, "-m", "flowd", "dashboard", "--url", redis_url, "--bind", bind],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it refuses at once, saying why and what to do
    assert result.returncode == 2
    assert f"refusing to serve the dashboard on {bind} without a password" in result.stderr
    assert "--auth USER:PASSWORD" in result.stderr
    assert "serving" not in result.stdout


def test_the_options_are_documented_in_help(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowd", "dashboard", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in ("--url", "--bind", "--port", "--partitions", "--auth", "--read-only"):
        assert option in result.stdout


def test_the_flowd_command_does_not_need_the_dashboard_extra(env: dict[str, str]) -> None:
    # The dashboard's libraries are imported only when `flowd dashboard` runs
    code = (
        "import sys, flowd.cli; flowd.cli.build_parser(); "
        "assert not {'jinja2', 'waitress'} & set(sys.modules), sorted(sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
