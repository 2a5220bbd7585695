"""``flowd job STREAM ID``: each status a job can have, as text and as JSON, and the
exit statuses (0 found, 1 not found, 2 bad usage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

import flowd
from flowd._redis.keys import dead_letter_stream
from tests.helpers import GROUP, Numbered, QueueFactory, wait_until

REPO = Path(__file__).resolve().parents[2]


def flowd_job(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m flowd job ARGS --url URL``, without the caller's FLOWD_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
    return subprocess.run(
        [sys.executable, "-m", "flowd", "job", *args, "--url", redis_url],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def shown(redis_url: str, stream: str, job_id: str, *extra: str) -> tuple[str, dict[str, Any]]:
    """The job's text output and its JSON, both found (exit status 0)."""
    text = flowd_job(redis_url, stream, job_id, *extra)
    assert text.returncode == 0, text.stderr
    as_json = flowd_job(redis_url, stream, job_id, "--json", *extra)
    assert as_json.returncode == 0, as_json.stderr
    return text.stdout, json.loads(as_json.stdout)


def line(text: str, name: str) -> str:
    """The value of the ``name:`` line of the text output."""
    for row in text.splitlines():
        if row.startswith(f"{name}:"):
            return row.split(":", 1)[1].strip()
    raise AssertionError(f"no {name!r} line in:\n{text}")


def status_of(client: redis.Redis, stream: str, job_id: str) -> flowd.JobStatus | None:
    result = flowd.Results(client, stream).get(job_id)
    return None if result is None else result.status


def fail(task: flowd.Task[Numbered]) -> None:
    raise ValueError(f"card declined for <b>{task.job.n}</b>")


def fail_deep(task: flowd.Task[Numbered]) -> None:
    """Fails with a chain of causes: a traceback longer than the text shows by default."""
    error: Exception = KeyError("first")
    for step in range(6):
        try:
            raise error
        except Exception as exc:
            error = ValueError(f"step {step}")
            error.__cause__ = exc
    raise RuntimeError("deep failure") from error


def test_scheduled_then_cancelled(client: redis.Redis, redis_url: str, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    job_id = producer.enqueue(Numbered(1), delay=3600)
    text, data = shown(redis_url, stream, job_id)
    assert line(text, "status") == "scheduled" and line(text, "job") == job_id
    assert line(text, "deliveries") == "0" and line(text, "started") == "-"
    assert data["status"] == "scheduled" and data["id"] == job_id and data["stream"] == stream
    enqueued = datetime.fromisoformat(data["enqueued_at"])
    assert enqueued.utcoffset() is not None and enqueued.utcoffset().total_seconds() == 0
    assert line(text, "enqueued") == data["enqueued_at"]
    assert "value:" not in text and "traceback:" not in text

    assert producer.cancel(job_id)
    text, data = shown(redis_url, stream, job_id)
    assert line(text, "status") == "cancelled"
    assert data["status"] == "cancelled" and data["value"] is None


def test_waiting_while_no_worker_runs(client: redis.Redis, redis_url: str, stream: str) -> None:
    client.xgroup_create(stream, GROUP, "$", mkstream=True)
    job_id = flowd.Producer(client, stream).enqueue(Numbered(1))
    text, data = shown(redis_url, stream, job_id)
    assert line(text, "status") == "waiting" and line(text, "consumer") == "-"
    assert data["status"] == "waiting" and data["consumer"] is None and data["deliveries"] == 0
    assert data["enqueued_at"].endswith("+00:00")
    # Narrowed to the one group, as Results(group=...) does
    assert shown(redis_url, stream, job_id, "--group", GROUP)[1]["status"] == "waiting"


def test_running_then_succeeded_with_its_value(
    client: redis.Redis, redis_url: str, stream: str, make_queue: QueueFactory
) -> None:
    release = threading.Event()

    def blocked(task: flowd.Task[Numbered]) -> dict[str, Any]:
        release.wait(30)
        return {"n": task.job.n, "tags": ["a", "é"], "ok": True}

    queue = make_queue(blocked, result_ttl=600)
    make_queue.run(queue)
    job_id = flowd.Producer(client, stream).enqueue(Numbered(7))
    wait_until(lambda: status_of(client, stream, job_id) is flowd.JobStatus.RUNNING)
    text, data = shown(redis_url, stream, job_id)
    assert line(text, "status") == "running" and line(text, "deliveries") == "1"
    assert line(text, "consumer") == queue.consumer
    assert data["status"] == "running" and data["consumer"] == queue.consumer
    assert data["finished_at"] is None and data["value"] is None

    release.set()
    wait_until(lambda: status_of(client, stream, job_id) is flowd.JobStatus.SUCCEEDED)
    text, data = shown(redis_url, stream, job_id)
    assert line(text, "status") == "succeeded"
    assert json.loads(line(text, "value")) == {"n": 7, "tags": ["a", "é"], "ok": True}
    assert data["value"] == {"n": 7, "tags": ["a", "é"], "ok": True}
    started = datetime.fromisoformat(data["started_at"])
    finished = datetime.fromisoformat(data["finished_at"])
    assert started <= finished and finished.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert line(text, "finished") == data["finished_at"]
    assert data["error"] is None and data["traceback"] is None and data["deliveries"] == 1


def test_success_without_result_ttl_says_the_value_is_not_kept(
    client: redis.Redis, redis_url: str, stream: str, make_queue: QueueFactory
) -> None:
    make_queue.run(make_queue(lambda task: 42))
    job_id = flowd.Producer(client, stream).enqueue(Numbered(1))
    wait_until(lambda: status_of(client, stream, job_id) is flowd.JobStatus.SUCCEEDED)
    text, data = shown(redis_url, stream, job_id)
    assert line(text, "value") == "not kept (the queue keeps values only with result_ttl)"
    assert data["status"] == "succeeded" and data["value"] is None


def test_retrying_after_a_failed_run(
    client: redis.Redis, redis_url: str, stream: str, make_queue: QueueFactory
) -> None:
    queue = make_queue(fail, claimer=flowd.Claimer(min_idle_time=3600))
    make_queue.run(queue)
    job_id = flowd.Producer(client, stream).enqueue(Numbered(3))
    wait_until(lambda: status_of(client, stream, job_id) is flowd.JobStatus.RETRYING)
    text, data = shown(redis_url, stream, job_id)
    assert line(text, "status") == "retrying"
    assert line(text, "error") == "ValueError: card declined for <b>3</b>"
    assert "traceback:" in text and "    ValueError: card declined for <b>3</b>" in text
    assert data["status"] == "retrying" and data["deliveries"] == 1
    assert data["consumer"] == queue.consumer
    assert data["traceback"].rstrip().endswith("ValueError: card declined for <b>3</b>")


def test_failed_when_the_queue_keeps_no_dead_letters(
    client: redis.Redis, redis_url: str, stream: str, make_queue: QueueFactory
) -> None:
    claimer = flowd.Claimer(min_idle_time=0.1, max_retries=0, dlq_stream=False)
    make_queue.run(make_queue(fail, claimer=claimer))
    job_id = flowd.Producer(client, stream).enqueue(Numbered(4))
    wait_until(lambda: status_of(client, stream, job_id) is flowd.JobStatus.FAILED)
    text, data = shown(redis_url, stream, job_id)
    assert line(text, "status") == "failed"
    assert line(text, "error") == "ValueError: card declined for <b>4</b>"
    assert "dead letter:" not in text
    assert data["status"] == "failed" and data["dead_letter_id"] is None
    assert data["finished_at"] is not None and "ValueError" in data["traceback"]


def test_dead_with_its_reason_and_dead_letter(
    client: redis.Redis, redis_url: str, stream: str, make_queue: QueueFactory
) -> None:
    make_queue.run(make_queue(fail_deep, claimer=flowd.Claimer(min_idle_time=0.1, max_retries=0)))
    job_id = flowd.Producer(client, stream).enqueue(Numbered(5))
    wait_until(lambda: status_of(client, stream, job_id) is flowd.JobStatus.DEAD)
    (dead_id, _), *_ = client.xrange(dead_letter_stream(stream))
    text, data = shown(redis_url, stream, job_id)
    assert line(text, "status") == "dead"
    assert line(text, "error") == "RuntimeError: deep failure"
    assert line(text, "dead letter") == f"{dead_id.decode()} (see flowd dlq list {stream})"
    assert data["status"] == "dead" and data["dead_letter_id"] == dead_id.decode()
    assert data["error"] == "RuntimeError: deep failure"

    # The text shows the traceback's last lines; --full and --json show all of it
    whole = data["traceback"].rstrip("\n").splitlines()
    assert len(whole) > 20 and whole[-1] == "RuntimeError: deep failure"
    tail = text.split("traceback:\n", 1)[1].splitlines()
    assert tail[0] == f"    ... ({len(whole) - 20} lines before; --full shows them)"
    assert tail[1:] == [f"    {row}" for row in whole[-20:]]
    full = flowd_job(redis_url, stream, job_id, "--full")
    assert full.stdout.split("traceback:\n", 1)[1].splitlines() == [f"    {r}" for r in whole]


def test_not_found_exits_1_with_a_message(client: redis.Redis, redis_url: str, stream: str) -> None:
    flowd.Producer(client, stream).enqueue(Numbered(1))
    for extra in ((), ("--json",)):
        missing = flowd_job(redis_url, stream, "1-1", *extra)
        assert missing.returncode == 1 and missing.stdout == ""
        assert f"no job with id '1-1' on {stream!r}" in missing.stderr
        assert "there is no stream" not in missing.stderr
    nowhere = flowd_job(redis_url, f"{stream}-none", "s-123-abc")
    assert nowhere.returncode == 1
    assert f"there is no stream '{stream}-none' at this Redis either" in nowhere.stderr


def test_bad_usage_exits_2(client: redis.Redis, redis_url: str, stream: str) -> None:
    client.xgroup_create(stream, GROUP, "$", mkstream=True)
    job_id = flowd.Producer(client, stream).enqueue(Numbered(1))
    no_group = flowd_job(redis_url, stream, job_id, "--group", "nope")
    assert no_group.returncode == 2
    assert f"stream {stream!r} has no group 'nope'; its groups: {GROUP}" in no_group.stderr
    assert flowd_job(redis_url, stream).returncode == 2  # no ID
    assert flowd_job(redis_url, stream, "").returncode == 2
    assert flowd_job(redis_url, stream, job_id, "--partitions", "0").returncode == 2
