"""The dashboard's scheduled jobs and schedules (flowd.ScheduledJobs), over real HTTP."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import redis

import flowd
from flowd._redis.keys import derived_key
from flowd.dashboard import Dashboard
from tests.dashboard.dashboard_server import http, serving
from tests.helpers import Email

XSS = "<img src=x onerror=alert(1)>"


def session(base: str) -> tuple[str, str]:
    _, headers, _ = http(base + "/")
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    return cookie, cookie.split("=", 1)[1]


def test_scheduled_jobs_and_schedules_are_listed_paged_and_cancelled(
    client: redis.Redis, stream: str
) -> None:
    # Given a queue with 60 jobs scheduled an hour ahead (one with markup in a field)
    client.xgroup_create(stream, "g", "0", mkstream=True)
    producer = flowd.Producer(client, stream)
    ids = producer.enqueue_bulk(
        [Email(to=f"user{n}@example.com", subject="Later") for n in range(59)], delay=3600
    )
    ids.append(producer.enqueue(Email(to=XSS, subject="Later"), delay=7200))
    # And a periodic schedule's state, as the scheduler keeps it
    now_ms = int(time.time() * 1000)
    state = {"last": now_ms - 60_000, "next": now_ms + 60_000, "spec": "every 60"}
    client.hset(derived_key(stream, "schedules"), "ping", json.dumps(state))
    app = Dashboard(client, [stream])

    with serving(app) as base:
        # When the overview and the stream page are opened
        overview = http(base + "/")[2]
        status, _, page = http(f"{base}/stream?name={stream}")

        # Then the overview counts them, and the page lists the first 50 in due order
        row = overview[overview.index(f">{stream}</a>") :].split("</tr>", 1)[0]
        assert re.findall(r'<td class="num[^"]*">([^<]*)</td>', row)[6] == "60"
        assert status == 200 and '<h2>Scheduled <span class="count">60</span></h2>' in page
        listed = re.findall(r'<tr><td class="mono">(s-[^<]+)</td>', page)
        assert listed == ids[:50]
        assert ">Cancel</button>" in page
        # And the schedule with its spec, last and next run
        assert '<td>ping</td><td class="mono">every 60</td>' in page
        # And the next page holds the other 10, the markup shown as text
        later = re.search(r'<a class="next" href="([^"]+)#scheduled"', page)
        assert later is not None
        second = http(base + later[1].replace("&amp;", "&"))[2]
        assert re.findall(r'<tr><td class="mono">(s-[^<]+)</td>', second) == ids[50:]
        assert "&lt;img src=x onerror=alert(1)&gt;" in second and "<img" not in second

        # When Cancel is posted: a confirmation first, then the job is gone
        cookie, token = session(base)
        form = {"csrf": token, "stream": stream, "id": ids[0]}
        headers = {"Cookie": cookie, "Origin": base}
        asked = http(base + "/cancel", data=form, headers=headers)
        assert asked[0] == 200 and "Cancel the scheduled job" in asked[2]
        assert flowd.ScheduledJobs(client, stream).count() == 60
        done = http(base + "/cancel", data={**form, "confirm": "yes"}, headers=headers)
        assert done[0] == 303 and done[1]["Location"].endswith("done=cancelled&n=1")
        assert flowd.ScheduledJobs(client, stream).count() == 59
        assert ids[0] not in [job.id for job in flowd.ScheduledJobs(client, stream).list()]
        # And a forged cancel from another origin changes nothing
        forged = http(
            base + "/cancel",
            data={**form, "id": ids[1], "confirm": "yes"},
            headers={"Origin": "http://evil.example"},
        )
        assert forged[0] == 403
        assert flowd.ScheduledJobs(client, stream).count() == 59


def test_read_only_has_no_cancel_button(client: redis.Redis, stream: str) -> None:
    client.xgroup_create(stream, "g", "0", mkstream=True)
    flowd.Producer(client, stream).enqueue(Email(to="a@example.com", subject="x"), delay=60)
    with serving(Dashboard(client, [stream], read_only=True)) as base:
        page: Any = http(f"{base}/stream?name={stream}")[2]
    assert '<span class="count">1</span>' in page and "Cancel" not in page
