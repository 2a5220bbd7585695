"""The answers of the ``flowd`` command to a newcomer's mistakes, each run as a subprocess.

Every test checks the message a user reads and the exit status a script sees:
a mistake is never answered with silence, a misleading message or a success.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import redis

import flowd
from flowd._redis.keys import dead_letter_stream
from flowd.cli.parser import build_parser
from tests.cli.cli_app import key
from tests.cli.test_cli import (
    TARGET,
    app_env,
    base_env,
    enqueue,
    flowd_process,
    pending_ids,
    stderr_reasons,
)
from tests.helpers import client_of, run_flowd, wait_until
from tests.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]


def run_in(
    cwd: Path, args: list[str], env: dict[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m flowd ARGS`` run from ``cwd`` (where the app's module is)."""
    return run_flowd(args, env, cwd=cwd, timeout=timeout)


def write_app(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(body))


APP = """
    import redis
    import flowd
    from tests.helpers import Numbered

    client = redis.Redis.from_url({url!r})
    queue = flowd.Queue(client, stream={stream!r}, group="g", job=Numbered,
                        worker=lambda task: None)
"""


# ---------------------------------------------------------------------------
# the module's own client


def test_worker_logs_the_address_its_queue_uses_and_warns_when_url_differs(
    redis_url: str, client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    # Given a module whose queue has its own client, for the tests' server
    write_app(tmp_path, "ownclient", APP.format(url=redis_url, stream=stream))
    enqueue(client, stream, range(3))
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    other = f"redis://127.0.0.1:{free_port()}/0"

    # When the worker runs it with --url naming another server
    result = run_in(tmp_path, ["worker", "ownclient:queue", "--burst", "--url", other], base_env())

    # Then it runs on the module's server, says so, and warns once that --url is not used
    assert result.returncode == 0, result.stderr
    assert f"on redis://127.0.0.1:{port}/0" in result.stderr
    assert f"on {other}" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "is not the server of" in line]
    assert len(warnings) == 1, result.stderr
    assert other in warnings[0] and f"127.0.0.1:{port}" in warnings[0]
    assert not pending_ids(client, stream)


# ---------------------------------------------------------------------------
# a malformed URL, and where it came from


@pytest.mark.parametrize("source", ["--url", "FLOWD_REDIS_URL"])
def test_a_malformed_url_names_itself_and_its_source(source: str, stream: str) -> None:
    # Given a URL without a valid scheme, with a password in it
    bad = "htp://:s3cret@127.0.0.1:6390/0"
    env = base_env()
    env["FLOWD_TEST_STREAM"] = stream
    args = ["worker", TARGET]
    if source == "--url":
        args += ["--url", bad]
    else:
        env["FLOWD_REDIS_URL"] = bad

    # When the worker starts
    result = run_in(REPO, args, env)

    # Then it exits 2 saying the URL is invalid, which one (redacted), and where it came from
    assert result.returncode == 2, result.stderr
    assert stderr_reasons(result.stderr) == [
        f"flowd: bad Redis URL htp://:***@127.0.0.1:6390/0 (from {source})"
    ], result.stderr
    assert "s3cret" not in result.stderr


def test_a_malformed_url_in_the_module_is_reported_as_the_modules(
    redis_url: str, stream: str, tmp_path: Path
) -> None:
    # Given a module that builds its client from a URL of its own that is malformed
    write_app(tmp_path, "badurl", APP.format(url="localhost:6379", stream=stream))

    # When the worker imports it (with a valid --url)
    result = run_in(tmp_path, ["worker", "badurl:queue", "--url", redis_url], base_env())

    # Then it exits 2 saying the module's own URL is invalid, and where in the module
    assert result.returncode == 2, result.stderr
    reasons = stderr_reasons(result.stderr)
    assert len(reasons) == 1, result.stderr
    assert reasons[0].startswith("flowd: bad Redis URL in 'badurl' (its own client, ")
    assert "badurl.py:6" in reasons[0]
    assert "cannot import" not in result.stderr


# ---------------------------------------------------------------------------
# an exception in the user's module


def test_an_error_in_the_users_module_shows_its_traceback_without_flowds_frames(
    tmp_path: Path,
) -> None:
    # Given a module with a NameError two calls deep
    write_app(
        tmp_path,
        "buggy",
        """
        def helper():
            return undefined_name

        def build():
            return helper()

        queue = build()
        """,
    )

    # When the worker imports it
    result = run_in(tmp_path, ["worker", "buggy:queue"], base_env())

    # Then it exits 2 with the reason, then the traceback of the user's code only
    assert result.returncode == 2, result.stderr
    assert stderr_reasons(result.stderr) == [
        "flowd: cannot import 'buggy': NameError: name 'undefined_name' is not defined"
    ], result.stderr
    assert "Traceback of your code" in result.stderr
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', result.stderr)
    assert [(Path(f).name, int(line), fn) for f, line, fn in frames] == [
        ("buggy.py", 8, "<module>"),
        ("buggy.py", 6, "build"),
        ("buggy.py", 3, "helper"),
    ], result.stderr
    assert "/flowd/" not in result.stderr and "importlib" not in result.stderr


# ---------------------------------------------------------------------------
# Redis unreachable


def test_unreachable_redis_says_at_once_that_it_waits_then_the_outcome(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    # Given nothing listening on a port yet, and a burst worker for it with a long wait
    port = free_port()
    env = app_env(f"redis://127.0.0.1:{port}/0", stream)
    args = ["worker", TARGET, "--burst", "--connect-timeout", "60"]
    with flowd_process(args, env, tmp_path) as worker:
        # When it starts, it says at once that it waits, for how long, and which option sets it
        wait_until(lambda: "waiting up to 60s (--connect-timeout)" in worker.stderr(), timeout=30)
        assert worker.proc.poll() is None

        # When the server comes up
        server = RedisServer(port=port)
        server.start()
        try:
            # Then it says so and runs: an empty backlog, exit 0
            assert worker.wait(timeout=60) == 0, worker.stderr()
        finally:
            server.close()
    assert re.search(r"Redis at redis://127\.0\.0\.1:\d+/0 answered after", worker.stderr())


def test_unreachable_redis_names_connect_timeout_and_exits_3(stream: str) -> None:
    port = free_port()
    env = app_env(f"redis://127.0.0.1:{port}/0", stream)
    result = run_in(REPO, ["worker", TARGET, "--connect-timeout", "1"], env)
    assert result.returncode == 3, result.stderr
    assert "waiting up to 1s (--connect-timeout)" in result.stderr
    reasons = stderr_reasons(result.stderr)
    assert len(reasons) == 1 and reasons[0].startswith(
        f"flowd: cannot reach Redis at redis://127.0.0.1:{port}/0 (waited "
    ), result.stderr
    assert "--connect-timeout 1)" in reasons[0]


# ---------------------------------------------------------------------------
# a server that wants a password


@pytest.fixture
def password_server() -> Iterator[RedisServer]:
    server = RedisServer(password="s3cret-pw")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("command", ["worker", "info"])
def test_a_server_that_requires_a_password_says_so(
    command: str, password_server: RedisServer, stream: str
) -> None:
    # Given a server with requirepass, and a URL without a password
    url = f"redis://127.0.0.1:{password_server.port}/0"
    args = ["worker", TARGET] if command == "worker" else ["info", stream, "--url", url]

    # When a command connects
    result = run_in(REPO, args, app_env(url, stream))

    # Then it exits 3 at once and says the server requires a password
    assert result.returncode == 3, result.stderr
    reasons = stderr_reasons(result.stderr)
    assert len(reasons) == 1, result.stderr
    assert "requires a password (AUTH)" in reasons[0]
    assert "HELLO" not in result.stderr


# ---------------------------------------------------------------------------
# typos that used to look like success


@pytest.fixture
def images(password_server: RedisServer) -> Callable[..., CompletedProcess[str]]:
    """``flowd ARGS --url URL`` of a server of its own holding two streams, ``images``
    (group ``thumbs``) and ``emails``."""
    with client_of(password_server) as client:
        client.xadd("images", {"n": "1"})
        client.xgroup_create("images", "thumbs", id="0")
        client.xadd("emails", {"n": "1"})

    def flowd_there(*args: str) -> CompletedProcess[str]:
        return run_in(REPO, [*args, "--url", password_server.url], base_env())

    return flowd_there


def test_info_on_a_missing_stream_names_the_streams_there(
    images: Callable[..., CompletedProcess[str]],
) -> None:
    result = images("info", "imagse")
    assert result.returncode == 2, result.stderr
    assert stderr_reasons(result.stderr) == [
        "flowd: no stream 'imagse' at this Redis; streams here: emails, images"
    ]
    assert result.stdout == ""


def test_info_on_a_missing_group_names_the_groups_there(
    images: Callable[..., CompletedProcess[str]],
) -> None:
    result = images("info", "images", "--group", "thumb")
    assert result.returncode == 2, result.stderr
    assert stderr_reasons(result.stderr) == [
        "flowd: stream 'images' has no group 'thumb'; its groups: thumbs"
    ]
    shown = images("info", "images", "--group", "thumbs")
    assert shown.returncode == 0, shown.stderr
    assert "group thumbs:" in shown.stdout


def test_dlq_requeue_of_an_id_not_in_the_dlq_reports_it(
    images: Callable[..., CompletedProcess[str]],
) -> None:
    result = images("dlq", "requeue", "images", "1-0")
    assert result.returncode == 1, result.stderr
    assert stderr_reasons(result.stderr) == [
        f"flowd: not in {dead_letter_stream('images')}: 1-0 (see flowd dlq list)"
    ]
    purge = images("dlq", "purge", "images", "1-0")
    assert purge.returncode == 1, purge.stderr
    assert "not in" in purge.stderr


def test_dlq_list_of_an_empty_dlq_says_so_and_a_missing_stream_is_an_error(
    images: Callable[..., CompletedProcess[str]],
) -> None:
    empty = images("dlq", "list", "images")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == f"no dead letters in {dead_letter_stream('images')}\n"
    missing = images("dlq", "list", "imagse")
    assert missing.returncode == 2, missing.stderr
    assert "no stream 'imagse'" in missing.stderr and "emails, images" in missing.stderr


# ---------------------------------------------------------------------------
# signals and an unclean stop


def test_sigterm_says_what_exits_at_once_and_that_is_true(
    client: redis.Redis, redis_url: str, stream: str, tmp_path: Path
) -> None:
    # Given a worker busy with a job of 60 s
    enqueue(client, stream, range(1))
    env = app_env(redis_url, stream, FLOWD_TEST_SLEEP="60")
    args = ["worker", TARGET, "--shutdown-timeout", "120"]
    with flowd_process(args, env, tmp_path) as worker:
        wait_until(lambda: client.scard(key(stream, "started")) == 1, timeout=60)

        # When it gets SIGTERM, it says how to exit at once: SIGINT, not "interrupt again"
        worker.signal(signal.SIGTERM)
        wait_until(lambda: "received SIGTERM" in worker.stderr(), timeout=30)
        line = next(x for x in worker.stderr().splitlines() if "received SIGTERM" in x)
        assert "send SIGINT (Ctrl-C) to exit at once" in line
        assert "interrupt again" not in line

        # When SIGTERM comes again, it keeps stopping and says so
        worker.signal(signal.SIGTERM)
        wait_until(lambda: "already stopping" in worker.stderr(), timeout=30)
        assert worker.proc.poll() is None

        # When SIGINT comes, it exits at once, as it said
        worker.signal(signal.SIGINT)
        status = worker.wait(timeout=30)
    assert status == 130
    assert "second interrupt, exiting at once" in worker.stderr()


def test_an_unclean_stop_lists_only_the_jobs_still_running(
    client: redis.Redis, redis_url: str, stream: str, tmp_path: Path
) -> None:
    # Given a worker with 4 threads, one of them running a job of 60 s
    ids = enqueue(client, stream, range(1))
    env = app_env(redis_url, stream, FLOWD_TEST_SLEEP="60", FLOWD_TEST_CONCURRENCY="4")
    args = ["worker", TARGET, "--shutdown-timeout", "1"]
    with flowd_process(args, env, tmp_path) as worker:
        wait_until(lambda: client.scard(key(stream, "started")) == 1, timeout=60)

        # When it gets SIGTERM and the job outlives the shutdown timeout
        worker.signal(signal.SIGTERM)
        status = worker.wait(timeout=60)

    # Then it exits 1 naming that one job, by message id, and no idle thread
    assert status == 1, worker.stderr()
    reasons = stderr_reasons(worker.stderr())
    assert len(reasons) == 1, worker.stderr()
    prefix = "flowd: unclean stop: 1 job(s) still running after 1s, left pending for the claimer: "
    assert reasons[0].startswith(prefix), reasons
    listed = reasons[0].removeprefix(prefix)
    assert re.fullmatch(rf"{re.escape(ids[0])} \({re.escape(stream)}\) on flowd-worker-\S+", listed)
    assert ids[0] in pending_ids(client, stream)


# ---------------------------------------------------------------------------
# help


def _options(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_of_every_subcommand_has_a_help_text() -> None:
    missing = [
        f"{path}: {'/'.join(action.option_strings) or action.dest}"
        for path, action in _options(build_parser(), "flowd")
        if not action.help
    ]
    assert missing == []


def test_dlq_list_help_shows_the_options_of_list() -> None:
    result = run_in(REPO, ["dlq", "list", "--help"], base_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: flowd dlq list")
    assert "--limit LIMIT         print at most this many" in result.stdout
    assert "--all" not in result.stdout
    requeue = run_in(REPO, ["dlq", "requeue", "--help"], base_env())
    assert "--all" in requeue.stdout and "--limit" not in requeue.stdout


def test_version_prints_the_distribution_version() -> None:
    result = run_in(REPO, ["--version"], base_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"flowd {flowd.__version__} (flowd-queue)"
