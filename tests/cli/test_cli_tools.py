"""`flowd info` and `flowd dlq` as a user runs them: real subprocesses, a real server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import redis

import flowd
from flowd._redis.urls import redact_url
from tests.helpers import Numbered, numbered_queue, run_flowd, wait_until
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def flowd_cmd(*args: str, url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWD_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    return run_flowd(args, env, cwd=None, timeout=timeout)


def fail_into_dlq(client: redis.Redis, stream: str, jobs: int) -> None:
    """Run a queue whose worker always fails until every job is dead-lettered."""
    flowd.Producer(client, stream).enqueue_bulk(Numbered(n) for n in range(jobs))

    def fail(task: flowd.Task[Numbered]) -> None:
        raise RuntimeError(f"boom {task.job.n}")

    queue = numbered_queue(
        client, stream, fail, claimer=flowd.Claimer(min_idle_time=0.1, max_retries=0, interval=0.02)
    )
    handle = queue.run()
    try:
        wait_until(
            lambda: client.xlen(flowd.DeadLetters(client, stream).dlq_stream) == jobs, timeout=30
        )
    finally:
        assert handle.stop(timeout=5)


def test_info_json_is_parsed_and_exact(redis_url: str, client: redis.Redis, stream: str) -> None:
    # Given a stream of 10 jobs, a group that read 4 and acked 1, and 2 dead letters
    for n in range(10):
        client.xadd(stream, {"n": str(n)})
    client.xgroup_create(stream, "g", id="0")
    read = client.xreadgroup("g", "alice", {stream: ">"}, count=4)[0][1]
    client.xack(stream, "g", read[0][0])
    client.xadd(flowd._redis.keys.dead_letter_stream(stream), {"n": "x"})
    client.xadd(flowd._redis.keys.dead_letter_stream(stream), {"n": "y"})
    # When `flowd info --json` runs
    result = flowd_cmd("info", stream, "--json", url=redis_url)
    # Then its output parses and says exactly that
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["length"] == 10 and info["dlq_length"] == 2
    (group,) = info["groups"]
    assert group["name"] == "g" and group["pending"] == 3 and group["lag"] == 6
    assert group["oldest_pending_id"] == read[1][0].decode()
    assert [(c["name"], c["pending"]) for c in group["consumers"]] == [("alice", 3)]
    # and the plain form names the stream and the group
    text = flowd_cmd("info", stream, url=redis_url)
    assert text.returncode == 0 and stream in text.stdout and "g" in text.stdout


def test_dlq_list_requeue_round_trip(redis_url: str, client: redis.Redis, stream: str) -> None:
    # Given three jobs that failed into the dead-letter stream
    fail_into_dlq(client, stream, 3)
    dead = flowd.DeadLetters(client, stream)
    entries = dead.list()
    assert len(entries) == 3
    # When `flowd dlq list` runs, it shows each with its reason
    listing = flowd_cmd("dlq", "list", stream, url=redis_url)
    assert listing.returncode == 0, listing.stderr
    for entry in entries:
        assert entry.dlq_id in listing.stdout
    assert "RuntimeError: boom" in listing.stdout
    # When one is requeued by id, then the rest with --all
    one = flowd_cmd("dlq", "requeue", stream, entries[0].dlq_id, url=redis_url)
    assert one.returncode == 0, one.stderr
    assert dead.count() == 2
    rest = flowd_cmd("dlq", "requeue", stream, "--all", url=redis_url)
    assert rest.returncode == 0, rest.stderr
    # Then the DLQ is empty and a working queue processes all three again
    assert dead.count() == 0
    done: list[int] = []
    queue = numbered_queue(client, stream, lambda task: done.append(task.job.n), claimer=None)
    handle = queue.run()
    try:
        wait_until(lambda: sorted(done) == [0, 1, 2], timeout=20)
    finally:
        assert handle.stop(timeout=5)


def test_dlq_list_traceback(redis_url: str, client: redis.Redis, stream: str) -> None:
    # Given a job that failed until it was dead-lettered
    fail_into_dlq(client, stream, 1)
    # When `flowd dlq list` runs with and without --traceback
    plain = flowd_cmd("dlq", "list", stream, url=redis_url)
    full = flowd_cmd("dlq", "list", stream, "--traceback", url=redis_url)
    # Then only the second prints the traceback of the last run, indented under the entry
    assert plain.returncode == 0 and full.returncode == 0, full.stderr
    assert "Traceback" not in plain.stdout
    assert "    Traceback (most recent call last):" in full.stdout
    assert "    RuntimeError: boom 0" in full.stdout
    assert "in fail" in full.stdout


def test_dlq_purge(redis_url: str, client: redis.Redis, stream: str) -> None:
    # Given two dead letters
    fail_into_dlq(client, stream, 2)
    dead = flowd.DeadLetters(client, stream)
    first = dead.list()[0].dlq_id
    # When one is purged by id, then all
    assert flowd_cmd("dlq", "purge", stream, first, url=redis_url).returncode == 0
    assert dead.count() == 1
    assert flowd_cmd("dlq", "purge", stream, "--all", url=redis_url).returncode == 0
    # Then nothing is left; without ids or --all the command refuses, with status 2
    assert dead.count() == 0
    refused = flowd_cmd("dlq", "purge", stream, url=redis_url)
    assert refused.returncode == 2 and refused.stderr.startswith("flowd:")


def test_passwords_never_printed(stream: str) -> None:
    # Given a server that requires a password
    server = RedisServer(password="s3cret-pw")
    try:
        server.start()
        good = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        seeded = redis.Redis.from_url(good)
        seeded.xadd(stream, {"n": "1"})
        seeded.close()
        bad = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        # When info runs with the right and the wrong password
        ok = flowd_cmd("info", stream, url=good)
        refused = flowd_cmd("info", stream, url=bad)
        # Then the first works, the second fails with status 3, and neither prints a password
        assert ok.returncode == 0, ok.stderr
        assert refused.returncode == 3
        for result in (ok, refused):
            assert "s3cret-pw" not in result.stdout + result.stderr
            assert "wrong-pw" not in result.stdout + result.stderr
    finally:
        server.close()


def test_redact_url() -> None:
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("rediss://user:p%40ss@h/1") == "rediss://user:***@h/1"
    assert (
        redact_url("unix:///tmp/r.sock?password=xyz&db=2") == "unix:///tmp/r.sock?password=***&db=2"
    )
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
