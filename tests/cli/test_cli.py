"""The ``flowd`` command, run as a real subprocess against the tests' private Redis.

The app under test is ``tests/cli/cli_app.py``: it builds its Queue from the
environment and records in Redis every job it starts and finishes, so these
tests can check from the outside what the worker processes did.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from tests.cli.cli_app import Numbered, key
from tests.helpers import REPO, clean_env, run_flowd, wait_until
from tests.redis_server import find_redis_server, free_port

GROUP = "g"
TARGET = "tests.cli.cli_app:make_queue"


# ---------------------------------------------------------------------------
# helpers


def as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def id_key(msg_id: str | bytes) -> tuple[int, int]:
    ms, seq = as_str(msg_id).split("-")
    return int(ms), int(seq)


def base_env() -> dict[str, str]:
    """This process's environment without FLOWD_* settings, with the repo importable."""
    env = clean_env()
    env["PYTHONUNBUFFERED"] = "1"
    return env


def app_env(redis_url: str, stream: str, **settings: str) -> dict[str, str]:
    """The environment of a ``flowd worker tests.cli.cli_app:...`` process."""
    env = base_env()
    env.update(FLOWD_REDIS_URL=redis_url, FLOWD_TEST_STREAM=stream, FLOWD_TEST_GROUP=GROUP)
    env.update(settings)
    return env


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def is_alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def child_pids(parent: int) -> list[int]:
    """The live child processes of ``parent`` (a process this test started)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] == parent and stat[0] not in ("Z", "X"):
                children.append(int(entry.name))
    return children


@dataclass
class FlowdProcess:
    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextmanager
def flowd_process(args: list[str], env: dict[str, str], tmp_path: Path) -> Iterator[FlowdProcess]:
    """``python -m flowd ARGS`` in the background; killed (with its children) if still alive."""
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowd", *args], env=env, cwd=REPO, stdout=out, stderr=err
        )
        running = FlowdProcess(proc, stdout_path, stderr_path)
        try:
            yield running
        finally:
            children = child_pids(proc.pid)  # `--processes N` workers, started by our process
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for pid in children:
                if is_alive(pid):
                    os.kill(pid, signal.SIGKILL)
    if proc.returncode not in (0, None):
        print(f"flowd {args} exited {proc.returncode}; stderr:\n{running.stderr()[-5000:]}")


def smembers_int(client: redis.Redis, name: str) -> set[int]:
    return {int(m) for m in client.smembers(name)}


def done(client: redis.Redis, stream: str) -> set[int]:
    return smembers_int(client, key(stream, "done"))


def pending_ids(client: redis.Redis, stream: str) -> set[str]:
    rows = client.xpending_range(stream, GROUP, min="-", max="+", count=1_000_000)
    return {as_str(row["message_id"]) for row in rows}


def consumers(client: redis.Redis, stream: str) -> dict[str, dict[str, Any]]:
    try:
        rows = client.xinfo_consumers(stream, GROUP)
    except redis.exceptions.ResponseError:  # no stream or no group yet
        return {}
    return {as_str(row["name"]): row for row in rows}


def last_delivered_id(client: redis.Redis, stream: str) -> str:
    for info in client.xinfo_groups(stream):
        if as_str(info["name"]) == GROUP:
            return as_str(info["last-delivered-id"])
    raise AssertionError(f"group {GROUP} missing on {stream}")


def enqueue(client: redis.Redis, stream: str, numbers: range, sleep: float = 0.0) -> list[str]:
    return flowd.Producer(client, stream=stream).enqueue_bulk(
        Numbered(n=n, sleep=sleep) for n in numbers
    )


def assert_nothing_lost(client: redis.Redis, stream: str, ids: list[str]) -> None:
    """Job ``i`` (message ``ids[i]``) is acked and finished, or pending, or not delivered yet."""
    pending = pending_ids(client, stream)
    finished = done(client, stream)
    started = smembers_int(client, key(stream, "started"))
    last = id_key(last_delivered_id(client, stream))
    for n, msg_id in enumerate(ids):
        if id_key(msg_id) > last:
            assert n not in started, f"job {n} ran but its message was never delivered"
        elif msg_id not in pending:
            assert n in finished, f"job {n} ({msg_id}) was acked without finishing"
        else:
            assert n not in finished, f"job {n} ({msg_id}) finished but was not acked"


def queues_started(process: FlowdProcess, stream: str) -> int:
    """How many worker processes have logged that their queue started."""
    return process.stderr().count(f"queue {stream}/{GROUP} started:")


def stderr_reasons(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("flowd:")]


# ---------------------------------------------------------------------------
# flowd worker: graceful stop


@pytest.mark.parametrize(
    "target", [TARGET, "tests.cli.cli_app:queue"], ids=["factory", "attribute"]
)
def test_sigterm_stops_worker_cleanly_and_loses_no_job(
    target: str, client: redis.Redis, redis_url: str, stream: str, tmp_path: Path
) -> None:
    # Given a backlog of 300 jobs of 50 ms each and a worker with 4 threads
    ids = enqueue(client, stream, range(300))
    env = app_env(redis_url, stream, FLOWD_TEST_SLEEP="0.05")
    with flowd_process(["worker", target, "--shutdown-timeout", "20"], env, tmp_path) as worker:
        wait_until(lambda: len(done(client, stream)) >= 20, timeout=60)

        # When it gets SIGTERM in the middle of the backlog
        worker.signal(signal.SIGTERM)

        # Then it exits 0 within its shutdown timeout
        status = worker.wait(timeout=20 + 20)
        assert status == 0, worker.stderr()[-3000:]
    assert "received SIGTERM" in worker.stderr()

    # And every job is finished and acked, or still pending, or not delivered yet
    assert_nothing_lost(client, stream, ids)
    # And every job that started also finished (stop waits for running jobs), once
    assert smembers_int(client, key(stream, "started")) == done(client, stream)
    for n in done(client, stream):
        assert int(client.get(key(stream, f"runs:{n}")) or 0) == 1
    # And it did stop in the middle: the rest of the backlog was left for later
    assert 20 <= len(done(client, stream)) < 300


# ---------------------------------------------------------------------------
# flowd worker --processes


def test_processes_share_the_backlog_restart_killed_children_and_stop_on_sigterm(
    client: redis.Redis, redis_url: str, stream: str, tmp_path: Path
) -> None:
    # Given an app whose claimer reclaims messages idle for 2 s, and three worker processes
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    env = app_env(redis_url, stream, FLOWD_TEST_SLEEP="0.05", FLOWD_TEST_MIN_IDLE="2")
    args = ["worker", TARGET, "--processes", "3", "--shutdown-timeout", "15"]
    with flowd_process(args, env, tmp_path) as supervisor:
        # (a consumer appears in XINFO CONSUMERS only once it reads something)
        wait_until(lambda: queues_started(supervisor, stream) == 3, timeout=60)

        # When 600 jobs arrive
        enqueue(client, stream, range(600))

        # Then all are processed, by three distinct consumers, one per process
        wait_until(lambda: len(done(client, stream)) == 600, timeout=60)
        by_consumer = {
            as_str(k): int(v) for k, v in client.hgetall(key(stream, "by_consumer")).items()
        }
        assert sorted(name.rsplit("-", 1)[1] for name in by_consumer) == ["w0", "w1", "w2"]
        assert all(count > 0 for count in by_consumer.values()), by_consumer
        assert sum(by_consumer.values()) == 600
        assert set(by_consumer) == set(consumers(client, stream))
        pids = smembers_int(client, key(stream, "pids"))
        assert len(pids) == 3
        assert sorted(child_pids(supervisor.pid)) == sorted(pids)

        # When one child is killed with SIGKILL while 300 more jobs (100 ms each) run
        enqueue(client, stream, range(600, 900), sleep=0.1)
        wait_until(lambda: len(done(client, stream)) >= 620, timeout=60)
        victim = min(pids)
        stat = proc_stat(victim)
        assert stat is not None and stat[1] == supervisor.pid  # a child of our supervisor
        os.kill(victim, signal.SIGKILL)

        # Then the supervisor starts a new process in its place, which joins the group
        new_pids = wait_until(lambda: smembers_int(client, key(stream, "pids")) - pids, timeout=60)
        assert len(new_pids) == 1
        wait_until(lambda: set(child_pids(supervisor.pid)) == (pids - {victim}) | new_pids)
        wait_until(lambda: queues_started(supervisor, stream) == 4, timeout=60)
        # And every job gets done, those of the killed process through the claimer
        wait_until(lambda: len(done(client, stream)) == 900, timeout=90)
        # And jobs enqueued after the restart are processed too
        enqueue(client, stream, range(900, 960))
        wait_until(lambda: len(done(client, stream)) == 960, timeout=60)
        wait_until(lambda: not pending_ids(client, stream), timeout=30)

        # When the supervisor gets SIGTERM
        children = child_pids(supervisor.pid)
        supervisor.signal(signal.SIGTERM)

        # Then every child stops and the supervisor exits 0
        status = supervisor.wait(timeout=15 + 5 + 20)
        assert status == 0, supervisor.stderr()[-3000:]
    assert not [pid for pid in children if is_alive(pid)]
    assert not pending_ids(client, stream)
    assert "exited with -9" in supervisor.stderr()


# ---------------------------------------------------------------------------
# flowd worker --burst


@pytest.mark.parametrize("processes", [1, 2])
def test_burst_processes_the_backlog_and_exits_0(
    processes: int, client: redis.Redis, redis_url: str, stream: str
) -> None:
    # Given a backlog of 300 jobs
    enqueue(client, stream, range(300))

    # When a burst worker runs
    args = ["worker", TARGET, "--burst", "--processes", str(processes)]
    result = run_flowd(args, app_env(redis_url, stream), timeout=90)

    # Then it exits 0 once every job is done, each exactly once, and nothing is pending
    assert result.returncode == 0, result.stderr[-3000:]
    assert done(client, stream) == set(range(300))
    assert all(int(client.get(key(stream, f"runs:{n}")) or 0) == 1 for n in range(300))
    assert not pending_ids(client, stream)


def test_burst_stops_gracefully_on_sigterm(
    client: redis.Redis, redis_url: str, stream: str, tmp_path: Path
) -> None:
    # Given a burst worker with a backlog of 400 jobs of 250 ms each (25 s on 4 threads)
    ids = enqueue(client, stream, range(400), sleep=0.25)
    args = ["worker", TARGET, "--burst", "--shutdown-timeout", "10"]
    with flowd_process(args, app_env(redis_url, stream), tmp_path) as worker:
        wait_until(lambda: len(done(client, stream)) >= 8, timeout=60)

        # When it gets SIGTERM (it logs "stopping gracefully")
        worker.signal(signal.SIGTERM)
        wait_until(lambda: "received SIGTERM" in worker.stderr(), timeout=30)

        # Then it stops like a non-burst worker: running jobs finish, no new one starts
        try:
            status = worker.wait(timeout=10 + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"flowd worker --burst ignored SIGTERM: {len(done(client, stream))} of 400 "
                "jobs done 15 s later and it is still draining the backlog"
            )
        assert status == 0, worker.stderr()[-3000:]
    assert len(done(client, stream)) < 400
    assert_nothing_lost(client, stream, ids)


# ---------------------------------------------------------------------------
# exit status and reasons


@pytest.mark.parametrize(
    "target",
    [
        "tests.no_such_module:make_queue",
        "tests.cli.cli_app:no_such_attribute",
        "tests.cli.cli_app:not_a_queue",
        "tests.cli.cli_app:make_not_a_queue",
        "tests.cli.cli_app",
    ],
    ids=["no-module", "no-attribute", "not-a-queue", "returns-not-a-queue", "no-colon"],
)
def test_bad_target_exits_2_with_one_line(target: str, redis_url: str, stream: str) -> None:
    # Given a MODULE:ATTR that does not name a Queue
    # When the worker starts with it
    result = run_flowd(["worker", target], app_env(redis_url, stream), timeout=60)

    # Then it exits 2 with one "flowd:" line saying why, and no traceback
    assert result.returncode == 2, result.stderr
    reasons = stderr_reasons(result.stderr)
    assert len(reasons) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_bad_target_with_processes_exits_2(redis_url: str, stream: str, tmp_path: Path) -> None:
    # Given a MODULE:ATTR that does not exist
    args = ["worker", "tests.cli.cli_app:no_such_attribute", "--processes", "2"]
    with flowd_process(args, app_env(redis_url, stream), tmp_path) as supervisor:
        # When the supervisor starts two workers with it
        # Then it exits 2 with the reason, instead of restarting them forever
        try:
            status = supervisor.wait(timeout=20)
        except subprocess.TimeoutExpired:
            restarts = supervisor.stderr().count("restarting in")
            pytest.fail(
                f"flowd worker --processes 2 with a bad target still runs after 20 s "
                f"({restarts} restarts of workers that exit 2)"
            )
        assert status == 2, supervisor.stderr()
    assert stderr_reasons(supervisor.stderr()), supervisor.stderr()


@pytest.mark.parametrize("how", ["--url", "env"])
def test_unreachable_redis_exits_3_without_the_password(how: str, stream: str) -> None:
    # Given a Redis URL with a password, to a loopback port where nothing listens
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    args = ["worker", TARGET, "--connect-timeout", "1"]
    if how == "--url":
        env = app_env("redis://127.0.0.1:1/0", stream)
        args += ["--url", url]
    else:
        env = app_env(url, stream)

    # When the worker starts
    result = run_flowd(args, env, timeout=60)

    # Then it exits 3 with one "flowd:" line that does not show the password
    assert result.returncode == 3, result.stderr
    reasons = stderr_reasons(result.stderr)
    assert len(reasons) == 1, result.stderr
    assert "Redis" in reasons[0]
    assert "s3cret" not in result.stderr + result.stdout


def test_help_exits_0() -> None:
    result = run_flowd(["--help"], base_env(), timeout=30)
    assert result.returncode == 0
    assert "worker" in result.stdout


# ---------------------------------------------------------------------------
# a second SIGINT


@pytest.mark.parametrize("processes", [1, 2])
def test_second_sigint_exits_at_once(
    processes: int, client: redis.Redis, redis_url: str, stream: str, tmp_path: Path
) -> None:
    # Given a worker busy with jobs of 30 s each
    ids = enqueue(client, stream, range(4 * processes))
    env = app_env(redis_url, stream, FLOWD_TEST_SLEEP="30")
    args = ["worker", TARGET, "--processes", str(processes), "--shutdown-timeout", "60"]
    with flowd_process(args, env, tmp_path) as worker:
        wait_until(lambda: client.scard(key(stream, "started")) >= processes, timeout=60)
        children = child_pids(worker.pid) if processes > 1 else []

        # When it gets SIGINT, starts stopping gracefully, and gets SIGINT again
        worker.signal(signal.SIGINT)
        wait_until(lambda: "received SIGINT" in worker.stderr(), timeout=30)
        sent = time.monotonic()
        worker.signal(signal.SIGINT)

        # Then it exits at once, with a non-zero status
        status = worker.wait(timeout=15)
        assert time.monotonic() - sent < 15
        assert status != 0
    assert "second interrupt" in worker.stderr()
    # And its workers are gone too, and the jobs they were running are still pending
    wait_until(lambda: not [pid for pid in children if is_alive(pid)], timeout=10)
    assert not done(client, stream)
    started = smembers_int(client, key(stream, "started"))
    assert {ids[n] for n in started} <= pending_ids(client, stream)


_SIGINT_DURING_FIRST_HANDLER = """
import logging, os, signal, sys
from flowd.cli.runner import StopSignals

class SecondInterrupt(logging.Handler):
    def emit(self, record):
        # The second Ctrl-C arrives while the first one's handler is still logging.
        if "received SIGINT" in record.getMessage():
            os.kill(os.getpid(), signal.SIGINT)

logging.getLogger("flowd").addHandler(SecondInterrupt())
with StopSignals(shutdown_timeout=60) as signals:
    os.kill(os.getpid(), signal.SIGINT)
    signals.requested.wait(10)
    sum(range(1000))  # a few calls, where pending handlers run
sys.exit(0)
"""


def test_a_second_sigint_during_the_first_ones_handler_exits() -> None:
    # Given a process whose second SIGINT arrives before the first one's handler has returned
    # When it runs
    result = subprocess.run(
        [sys.executable, "-c", _SIGINT_DURING_FIRST_HANDLER],
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then the second one is taken as the second: the process exits at once with 130
    assert result.returncode == 130, result.stderr
    assert "second interrupt, exiting at once" in result.stderr


# ---------------------------------------------------------------------------
# flowd demo


def test_demo_runs_on_an_embedded_server() -> None:
    # Given no Redis URL anywhere, and a redis-server binary named by FLOWD_REDIS_SERVER
    env = base_env()
    env["FLOWD_REDIS_SERVER"] = find_redis_server()

    # When the demo runs
    result = run_flowd(["demo", "--jobs", "2000"], env, timeout=110)

    # Then it completes, prints its summary and stops its server
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started a private redis-server" in result.stdout
    assert "summary" in result.stdout
    assert "dead letters     2" in result.stdout
    assert "clean stop       True" in result.stdout
    assert "stopped the private redis-server" in result.stdout
    # And its steps are numbered once each, and it says that it cleans up
    steps = re.findall(r"^(\d+)\. ", result.stdout, re.M)
    assert steps == ["1", "2", "3", "4", "5"], result.stdout
    assert re.search(
        r"^   retried runs     \d+ \(runs of a message delivered before", result.stdout, re.M
    )
    assert re.search(
        r"^removed flowd-demo-\w+ and its dead letters \(--keep keeps them\)$", result.stdout, re.M
    )
    assert "kept in" not in result.stdout


def demo_keys(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(match="flowd-demo-*")) | set(
        client.scan_iter(match="{flowd-demo-*")
    )


def test_demo_with_url_leaves_no_keys_behind(client: redis.Redis, redis_url: str) -> None:
    # Given the tests' Redis
    before = demo_keys(client)

    # When the demo runs against it
    result = run_flowd(["demo", "--jobs", "2000", "--url", redis_url], base_env(), timeout=110)

    # Then it completes and removes every key it made
    assert result.returncode == 0, result.stdout + result.stderr
    assert "using Redis at" in result.stdout
    assert "clean stop       True" in result.stdout
    assert demo_keys(client) == before


def test_demo_keep_leaves_its_stream_and_dead_letters_and_says_where(
    client: redis.Redis, redis_url: str
) -> None:
    # When the demo runs with --keep against the tests' Redis
    args = ["demo", "--jobs", "500", "--url", redis_url, "--keep"]
    result = run_flowd(args, base_env(), timeout=110)

    # Then it names the stream it kept, and the stream and its 2 dead letters are there
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"^kept (flowd-demo-\w+) and its dead letters in (\S+);", result.stdout, re.M)
    assert match, result.stdout
    stream, dead = match.groups()
    try:
        assert client.xlen(dead) == 2
        assert client.xlen(stream) >= 500
    finally:
        client.delete(stream, dead, *client.scan_iter(match=f"{{{stream}}}:*"))


def test_demo_help_and_keep_without_a_url() -> None:
    # The help names the real default: a private server unless --url or FLOWD_REDIS_URL
    shown = run_flowd(["demo", "--help"], base_env(), timeout=30)
    assert shown.returncode == 0
    assert "$FLOWD_REDIS_URL, else a private redis-server" in " ".join(shown.stdout.split())
    # --keep on the private server, which goes away, is refused with status 2
    refused = run_flowd(["demo", "--keep"], base_env(), timeout=30)
    assert refused.returncode == 2
    assert "--keep needs --url" in refused.stdout
