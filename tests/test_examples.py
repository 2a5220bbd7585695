"""Every example in examples/ runs as its README says, against the tests' Redis.

The examples take their Redis from ``FLOWD_REDIS_URL``, like a deployment
would; they use fixed stream names, so each assertion here is about the jobs
this test enqueued.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from tests.helpers import run_python

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWD_", "DJANGO_", "FLASK_"))}
    env.update(FLOWD_REDIS_URL=redis_url, PYTHONUNBUFFERED="1", **extra)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run_python(args, env=env, cwd=cwd)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_cron_drain(redis_url: str, client: redis.Redis) -> None:
    # When the cron script runs with three sample invoices
    result = run(
        ["cron_drain.py", "--seed", "3", "--timeout", "30"], EXAMPLES, example_env(redis_url)
    )
    # Then it bills them and exits, leaving nothing pending
    for i in range(3):
        assert f"billed customer-{i}: {(1000 + i) / 100:.2f}" in result.stdout
    assert "processed" in result.stdout.splitlines()[-1]
    assert client.xpending("invoices", "billing")["pending"] == 0


def test_results(redis_url: str, client: redis.Redis) -> None:
    # When the results example runs
    result = run(["results.py"], EXAMPLES, example_env(redis_url))
    lines = result.stdout.splitlines()
    # Then it saw the jobs waiting and scheduled, and a wait that timed out
    assert lines[0] == "before any worker runs: waiting, waiting, scheduled"
    assert lines[1].startswith("not yet: job ") and "(it is WAITING)" in lines[1]
    assert lines[2] == "an id Redis never handed out: None"
    # And each wait returned the worker's value, decoded into its dataclass
    for i, (image, size) in enumerate([(1, "640x480"), (2, "320x240"), (3, "160x120")]):
        assert lines[3 + i].startswith(f"succeeded: image https://cdn.example.com/{image}-")
        assert f"({size}), run 1 by " in lines[3 + i]
    # And the job that gave up is dead, with its reason and its dead letter
    assert lines[6].startswith("dead: GiveUp: width must be positive, not 0 (dead letter ")
    assert client.xpending("thumbnails", "thumbnailers")["pending"] == 0


def test_flask_app(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the example app, imported as `flask --app app` would
    monkeypatch.setenv("FLOWD_REDIS_URL", redis_url)
    spec = importlib.util.spec_from_file_location(
        "example_flask_app", EXAMPLES / "flask_app/app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    app = module.create_app()

    # When its view is called through Flask's test client
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    response = app.test_client().post("/signup", data={"email": email})
    assert response.status_code == 202
    message_id = response.get_json()["queued"]

    # And its worker runs, as the docstring says: `flask --app app flowd worker --burst`
    result = run(
        ["-m", "flask", "--app", "app", "flowd", "worker", "--burst"],
        EXAMPLES / "flask_app",
        example_env(redis_url),
    )
    # Then the job ran in an app context
    assert f"welcome mail to {email} from Example Site (message {message_id})" in result.stdout


def test_flask_app_serves_the_dashboard_under_a_prefix(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the example app without FLOWD_DASHBOARD_AUTH
    monkeypatch.setenv("FLOWD_REDIS_URL", redis_url)
    monkeypatch.delenv("FLOWD_DASHBOARD_AUTH", raising=False)
    spec = importlib.util.spec_from_file_location(
        "example_flask_app_dashboard", EXAMPLES / "flask_app/app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    web = module.create_app().test_client()

    # When the dashboard's pages are asked for under /flowd
    overview = web.get("/flowd/")
    page = web.get("/flowd/stream?name=welcome-emails")

    # Then they are served, with links under the prefix, and the app's own views still work
    assert overview.status_code == 200
    assert 'href="/flowd/stream?name=welcome-emails"' in overview.get_data(as_text=True)
    assert page.status_code == 200 and "Dead letters" in page.get_data(as_text=True)
    assert web.get("/flowd/static/dashboard.css").status_code == 200
    # And without a password it is read-only: no action buttons (only the job search, a
    # GET form), POSTs refused
    body = page.get_data(as_text=True)
    assert 'method="post"' not in body
    rest = re.sub(r'<form method="get"[^>]*class="job-search".*?</form>', "", body, flags=re.S)
    assert "<button" not in rest
    refused = web.post("/flowd/purge", data={"stream": "welcome-emails", "confirm": "yes"})
    assert refused.status_code == 403


def test_django_project(redis_url: str, tmp_path: Path) -> None:
    project = EXAMPLES / "django_project"
    env = example_env(redis_url, EXAMPLE_DB=str(tmp_path / "db.sqlite3"))
    email = f"{uuid.uuid4().hex[:8]}@example.com"

    # Given the example project, migrated
    run(["manage.py", "migrate", "--verbosity", "0"], project, env)
    # When its view is called (Django's test client, in `manage.py shell`)
    posted = run(
        [
            "manage.py",
            "shell",
            "-c",
            "from django.test import Client; "
            f"r = Client().post('/signup/', {{'email': '{email}'}}); print(r.status_code)",
        ],
        project,
        env,
    )
    assert posted.stdout.strip().splitlines()[-1] == "201"
    # And `manage.py flowd_worker --burst` runs
    worked = run(["manage.py", "flowd_worker", "--burst"], project, env)
    # Then the job ran and wrote to the database, and the @task ran too
    assert f"welcome mail to {email}" in worked.stdout
    assert "signups so far" in worked.stdout
    welcomed = run(
        [
            "manage.py",
            "shell",
            "-c",
            "from signups.models import Signup; "
            f"print(Signup.objects.get(email='{email}').welcomed)",
        ],
        project,
        env,
    )
    assert welcomed.stdout.strip().splitlines()[-1] == "True"


def test_tracing(redis_url: str) -> None:
    # When the tracing example runs
    result = run(["tracing.py"], EXAMPLES, example_env(redis_url))
    # Then the console shows the request, the enqueue and the job's run in one trace,
    # and the job's log line names its job
    spans = {}
    decoder = json.JSONDecoder()
    text, at = result.stdout, 0
    while (start := text.find("{", at)) != -1:
        span, at = decoder.raw_decode(text, start)
        spans[span["name"]] = span
    assert {"handle request", "send receipts", "process receipts"} <= set(spans)
    assert len({s["context"]["trace_id"] for s in spans.values()}) == 1
    process = spans["process receipts"]
    assert process["parent_id"] == spans["send receipts"]["context"]["span_id"]
    assert process["attributes"]["flowd.outcome"] == "success"
    (line,) = [x for x in result.stderr.splitlines() if "receipt for order 42" in x]
    assert f"[job {process['attributes']['messaging.message.id']}]" in line
