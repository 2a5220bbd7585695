"""Django scenarios of tests/contrib/test_django.py, each in a fresh process (Django sets up once).

``python -m tests.contrib.django_project.scenarios NAME`` with ``DJANGO_SETTINGS_MODULE``
set: it sets Django up, runs scenario NAME (assertions inside), and prints
``ok`` and a JSON line of results.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import django

django.setup()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import SystemCheckError  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

import flowd  # noqa: E402
from flowd.contrib import django as flowd_django  # noqa: E402
from tests.contrib.django_project.settings import JOBS, PREFIX  # noqa: E402
from tests.contrib.django_project.testapp.jobs import Report, Welcome  # noqa: E402
from tests.contrib.django_project.testapp.models import Signup  # noqa: E402


def raises(exc_type: type[BaseException], text: str, call: Callable[[], Any]) -> str:
    """Assert that ``call()`` raises ``exc_type`` with ``text`` in its message."""
    try:
        call()
    except exc_type as exc:
        assert text in str(exc), f"{text!r} not in {str(exc)!r}"
        return str(exc)
    raise AssertionError(f"{call} did not raise {exc_type.__name__}")


def config() -> dict[str, Any]:
    # Given the settings of tests/contrib/django_project/settings.py
    # Then each queue is built from its dict, once per process
    emails = flowd_django.get_queue("emails")
    assert emails is flowd_django.get_queue("emails")
    assert (emails.stream, emails.group, emails.concurrency) == (f"{PREFIX}-emails", "mailers", 4)
    assert emails.job is Welcome
    assert emails.claimer is not None
    assert (emails.claimer.min_idle_time, emails.claimer.max_retries) == (0.3, 1)
    assert emails.claimer.dlq_worker is not None
    assert emails.client is flowd_django.get_client()
    reports = flowd_django.get_queue("reports")
    assert (reports.group, reports.claimer) == ("reports", None)
    assert reports.housekeeping is not None and reports.housekeeping.consumer_ttl is None
    assert flowd_django.queue_names() == ["emails", "reports"]
    outbox = flowd_django.get_producer("outbox")
    assert (outbox.stream, outbox.maxlen) == (f"{PREFIX}-outbox", 1000)
    assert outbox is flowd_django.get_producer("outbox")
    raises(ImproperlyConfigured, "has no 'WORKER'", lambda: flowd_django.get_queue("outbox"))
    raises(ImproperlyConfigured, "no queue 'nope'", lambda: flowd_django.get_queue("nope"))

    # And enqueue checks that a job fits its queue before anything is sent
    raises(
        flowd.EncodeError,
        "takes Welcome jobs, not Report",
        lambda: flowd_django.enqueue(Report(n=1), queue="emails"),
    )
    raises(ImproperlyConfigured, "several queues", lambda: flowd_django.enqueue(Report(n=1)))
    raises(flowd.EncodeError, "", lambda: flowd_django.enqueue(Welcome(email=3)))  # type: ignore[arg-type]

    # And every mistake in FLOWD is an ImproperlyConfigured that names it, and a check error
    ok = {"JOB": f"{JOBS}.Welcome", "WORKER": f"{JOBS}.send_welcome"}
    url = flowd_django.registry().url
    cases: list[tuple[Any, str]] = [
        ({"URL": url, "QUEUES": {"x": {"WORKER": ok["WORKER"]}}}, "needs 'JOB'"),
        ({"URL": url, "QUEUES": {"x": {**ok, "CONCURENCY": 3}}}, "unknown keys ['CONCURENCY']"),
        ({"URL": url, "QUEUE": {}}, "unknown keys ['QUEUE']"),
        ({"URL": url, "QUEUES": {"x": {**ok, "JOB": "tests.nope.Job"}}}, "cannot import"),
        ({"URL": url, "QUEUES": {"x": {**ok, "JOB": f"{JOBS}.record"}}}, "flowd.Job class"),
        ({"URL": url, "QUEUES": {"x": {**ok, "WORKER": f"{JOBS}.nope"}}}, "has no attribute"),
        ({"URL": url, "QUEUES": {"x": {**ok, "CONCURRENCY": 0}}}, "concurrency must be"),
        (
            {"URL": url, "QUEUES": {"x": {**ok, "CLAIMER": {"MAX_RETRIES": -1}}}},
            "['CLAIMER']: max_retries",
        ),
        ({"URL": url, "QUEUES": {"x": {**ok, "HOOKS": ["logging.Logger"]}}}, "flowd.Hooks"),
        ({"URL": url, "QUEUES": ["x"]}, "must be a dict"),
    ]
    for setting, text in cases:
        with override_settings(FLOWD=setting):
            message = raises(ImproperlyConfigured, text, lambda: flowd_django.get_queue("x"))
            assert "FLOWD" in message, message
            raises(SystemCheckError, "flowd.E001", lambda: call_command("check"))
    with override_settings(FLOWD=None):
        raises(ImproperlyConfigured, "settings.FLOWD is missing", flowd_django.get_client)

    # And leaving override_settings brings the real settings back
    assert flowd_django.get_queue("emails").stream == f"{PREFIX}-emails"
    call_command("check")
    # And hooks may be given as classes to instantiate
    with override_settings(
        FLOWD={"URL": url, "QUEUES": {"x": {**ok, "HOOKS": ["flowd.LogHooks", flowd.Hooks()]}}}
    ):
        hooks = flowd_django.get_queue("x").hooks
        assert [type(h).__name__ for h in hooks] == ["LogHooks", "Hooks"], hooks
    return {}


def views() -> dict[str, Any]:
    call_command("migrate", verbosity=0)
    client = Client(raise_request_exception=False)

    # When a view writes a row and enqueues in one transaction that commits
    response = client.post("/signup/", {"email": "a@example.com"})
    # Then the job waited for the commit (no id inside the transaction)
    assert response.status_code == 201, response.content
    assert response.json() == {"id_before_commit": None}

    # When the transaction rolls back after the enqueue
    response = client.post("/signup/?fail=1", {"email": "b@example.com"})
    # Then neither the row nor the job exists
    assert response.status_code == 500
    assert list(Signup.objects.values_list("email", flat=True)) == ["a@example.com"]

    # When a view enqueues outside a transaction, the job is sent at once
    report_id = client.get("/report/?n=7").json()["id"]
    assert isinstance(report_id, str) and "-" in report_id, report_id

    # And on_commit=False sends at once even in a transaction that rolls back
    try:
        with transaction.atomic():
            sent = flowd_django.enqueue(Welcome(email="c@example.com"), on_commit=False)
            assert isinstance(sent, str)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass

    # And enqueue_bulk waits for the commit too, and sends nothing on a rollback
    with transaction.atomic():
        assert flowd_django.enqueue_bulk([Report(n=8), Report(n=9)], queue="reports") is None
    try:
        with transaction.atomic():
            flowd_django.enqueue_bulk([Report(n=10)], queue="reports")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    return {"report_id": report_id}


def no_database() -> dict[str, Any]:
    # Given a project without DATABASES, enqueue (on_commit=True by default) sends at once
    sent = flowd_django.enqueue(Report(n=1), queue="reports")
    assert isinstance(sent, str), sent
    bulk = flowd_django.enqueue_bulk([Report(n=2)], queue="reports")
    assert isinstance(bulk, list) and len(bulk) == 1, bulk
    return {"ids": [sent, *bulk]}


def dashboard() -> dict[str, Any]:
    from django.contrib.auth.models import User

    call_command("migrate", verbosity=0)
    client = Client(raise_request_exception=False)
    # Given the dashboard mounted at /ops/flowd/ behind staff login
    # When an anonymous user asks for it, or posts an action
    # Then they are sent to the login page, and the POST does nothing
    for response in (
        client.get("/ops/flowd/"),
        client.get("/ops/flowd/stream", {"name": f"{PREFIX}-emails"}),
        client.post("/ops/flowd/purge", {"stream": f"{PREFIX}-emails", "confirm": "yes"}),
    ):
        assert response.status_code == 302, response.status_code
        assert response["Location"].startswith("/login/?next=/ops/flowd/"), response["Location"]
    # And a logged-in user who is not staff is sent there too
    User.objects.create_user("visitor", password="pw")
    client.force_login(User.objects.get(username="visitor"))
    assert client.get("/ops/flowd/").status_code == 302
    # When a staff member asks for it
    User.objects.create_user("ops", password="pw", is_staff=True)
    client.force_login(User.objects.get(username="ops"))
    overview = client.get("/ops/flowd/")
    # Then the overview is served, its links and assets under the prefix
    assert overview.status_code == 200, overview.content[:500]
    html = overview.content.decode()
    assert f'href="/ops/flowd/stream?name={PREFIX}-emails"' in html, html
    assert 'href="/ops/flowd/static/dashboard.css"' in html
    assert "Content-Security-Policy" in overview.headers
    css = client.get("/ops/flowd/static/dashboard.css")
    assert css.status_code == 200 and css["Content-Type"].startswith("text/css")
    page = client.get("/ops/flowd/stream", {"name": f"{PREFIX}-emails"})
    assert page.status_code == 200 and "Dead letters" in page.content.decode()
    # When a page of a name not in ALLOWED_HOSTS (DNS rebinding) asks, even for staff
    # (no CommonMiddleware here, so nothing else asks Django for the host)
    rebound = client.get(
        "/ops/flowd/stream", {"name": f"{PREFIX}-emails"}, HTTP_HOST="evil.example"
    )
    # Then Django refuses it (400), and the dashboard's page and token are not in the answer
    assert rebound.status_code == 400, rebound.status_code
    assert b"csrf" not in rebound.content and "Set-Cookie" not in rebound.headers
    return {}


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "dashboard": dashboard,
    "config": config,
    "views": views,
    "no_database": no_database,
}

if __name__ == "__main__":
    result = SCENARIOS[sys.argv[1]]()
    print("ok")
    print(json.dumps(result))
