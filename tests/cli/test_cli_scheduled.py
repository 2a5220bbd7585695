"""``flowd scheduled list|cancel`` and the scheduled part of ``flowd info``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

import flowd
from tests.helpers import Numbered

REPO = Path(__file__).resolve().parents[2]


def flowd_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
    return subprocess.run(
        [sys.executable, "-m", "flowd", *args, "--url", redis_url],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_scheduled_list_and_cancel(client: redis.Redis, redis_url: str, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    ids = producer.enqueue_bulk([Numbered(1), Numbered(2)], delay=3600)
    listed = flowd_cli(redis_url, "scheduled", "list", stream)
    assert listed.returncode == 0, listed.stderr
    assert f"stream {stream}: 2 scheduled jobs" in listed.stdout
    assert ids[0] in listed.stdout and '{"n": "1"}' in listed.stdout
    as_json = flowd_cli(redis_url, "scheduled", "list", stream, "--json")
    data = json.loads(as_json.stdout)
    assert data["scheduled"] == 2 and [job["id"] for job in data["jobs"]] == ids
    cancelled = flowd_cli(redis_url, "scheduled", "cancel", stream, ids[0])
    assert cancelled.returncode == 0 and f"cancelled {ids[0]}" in cancelled.stdout
    again = flowd_cli(redis_url, "scheduled", "cancel", stream, ids[0])
    assert again.returncode == 1 and "not scheduled" in again.stdout
    assert flowd.ScheduledJobs(client, stream).count() == 1
    usage = flowd_cli(redis_url, "scheduled", "cancel", stream)  # checked before connecting
    assert usage.returncode == 2 and "needs scheduled-job ids" in usage.stderr
    info = flowd_cli(redis_url, "info", stream)
    assert "scheduled: 1 jobs waiting for their time" in info.stdout
    info_json = json.loads(flowd_cli(redis_url, "info", stream, "--json").stdout)
    assert info_json["scheduled"] == 1


def test_scheduled_list_shows_schedules(client: redis.Redis, redis_url: str, stream: str) -> None:
    schedule = flowd.Schedule("nightly", Numbered(1), cron="0 3 * * *", tz="Europe/Paris")
    flowd.schedule.fire_schedules(client, stream, [schedule])
    listed = flowd_cli(redis_url, "scheduled", "list", stream)
    assert "schedule nightly (cron 0 3 * * * tz=Europe/Paris): last never, next 20" in listed.stdout
    info = flowd_cli(redis_url, "info", stream)
    assert "schedule nightly (cron 0 3 * * * tz=Europe/Paris): last never" in info.stdout
