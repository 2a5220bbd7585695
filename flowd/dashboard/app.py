"""Dashboard: the WSGI application, its routes and its actions."""

from __future__ import annotations

import importlib.resources
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jinja2
import redis.exceptions

from .._redis.keys import dead_letter_stream, partition_base
from .._redis.session import check_client
from ..deadletters import DeadLetters
from ..errors import ConfigurationError
from ..flow.pause import pause, resume
from ..info import stream_info
from . import chart, data, jobs, security
from .overview import LAG_SCAN_LIMIT, overview, unsafe_eviction_policy
from .web import Request, Response, plain, redirect

__all__ = ["Dashboard"]

logger = logging.getLogger(__name__)

#: How long discovered stream names are reused, in seconds.
DISCOVERY_TTL = 5.0
_STATIC = {"dashboard.css": "text/css; charset=utf-8"}
#: Outcome codes of actions, shown after the redirect (fixed texts: no text from the URL).
DONE = {
    "requeued": "Requeued {n} dead letter(s).",
    "requeued-all": "Requeued {n} dead letter(s).",
    "purged": "Purged {n} dead letter(s).",
    "cancelled": "Cancelled {n} scheduled job(s).",
    "paused": "Paused: its consumers read no new jobs within a second; running jobs finish.",
    "resumed": "Resumed: its consumers read again.",
    "unchanged": "Nothing changed: it was so already.",
}
#: Actions that are undone as easily as done: no confirmation page.
_NO_CONFIRM = ("requeue", "pause", "resume")


class Dashboard:
    """A web dashboard of flowd queues, as a WSGI application.

    Serve it with any WSGI server (``flowd dashboard`` uses waitress), or
    mount it in Django or Flask (see :mod:`flowd.dashboard.mount`). Every
    request reads Redis afresh and every list is paginated, so it keeps no
    state and costs the same on a busy stream as on an idle one.

    :param client: a ``redis.Redis`` or ``RedisCluster`` client.
    :param streams: the streams to show; None finds the streams that have
        consumer groups (a bounded SCAN, repeated at most every 5 s).
    :param read_only: show no action buttons and refuse every POST.
    :param auth: ``"USER:PASSWORD"`` or a pair: HTTP Basic auth on every request.
    :param allowed_hosts: the hosts it answers for (``example.com``,
        ``example.com:8700``, ``.example.com`` for a domain and its subdomains,
        ``*`` for any): another ``Host`` gets 400, a POST whose ``Origin``
        names another host 403. None checks no host: right when mounted in a
        framework that does (Django's ``ALLOWED_HOSTS``); served on its own or
        under Flask, give a list (``flowd dashboard`` always does).
    :raises ConfigurationError: for a bad client, stream list, auth or host value.
    """

    def __init__(
        self,
        client: Any,
        streams: Sequence[str] | None = None,
        *,
        read_only: bool = False,
        auth: str | tuple[str, str] | None = None,
        allowed_hosts: Sequence[str] | None = None,
    ) -> None:
        check_client(client)
        if streams is not None:
            if isinstance(streams, str | bytes):
                raise ConfigurationError(f"streams must be a list of names; write [{streams!r}]")
            streams = list(streams)
            for name in streams:
                if not isinstance(name, str) or not name:
                    raise ConfigurationError(f"a stream name must be a non-empty str: {name!r}")
        if isinstance(allowed_hosts, str | bytes):
            raise ConfigurationError(
                f"allowed_hosts must be a list of hosts; write [{allowed_hosts!r}]"
            )
        if not isinstance(read_only, bool):
            raise ConfigurationError(f"read_only must be a bool, not {read_only!r}")
        self.client = client
        self.streams = streams
        self.read_only = read_only
        self._auth = security.parse_auth(auth)
        self._hosts = None if allowed_hosts is None else security.AllowedHosts(allowed_hosts)
        self.allowed_hosts = None if self._hosts is None else self._hosts.entries
        self._discovered: tuple[float, list[str]] = (0.0, [])
        self._lock = threading.Lock()
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("flowd.dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._env.globals.update(ago=data.ago, when=data.when, limit=data.active_limit)

    def __repr__(self) -> str:
        # No auth in here: reprs end up in logs.
        return (
            f"Dashboard(streams={self.streams!r}, read_only={self.read_only}, "
            f"allowed_hosts={self.allowed_hosts!r})"
        )

    def known_streams(self) -> list[str]:
        """The streams shown: the ones given, or those discovered, each followed by its
        priority bands' streams that exist (cached for a few seconds)."""
        with self._lock:
            found_at, names = self._discovered
            if time.monotonic() - found_at > DISCOVERY_TTL:
                given = self.streams
                names = data.with_bands(
                    self.client, data.discover(self.client) if given is None else given
                )
                self._discovered = (time.monotonic(), names)
            return names

    # -- WSGI

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        refused = None if self._hosts is None else self._hosts.refused_host(environ)
        if refused is not None:
            # First of all: a rebound name must not get the page (and its token), nor
            # even the auth challenge.
            logger.warning("dashboard: refused a request for host %r", refused[:200])
            response = plain(
                400,
                f"host {refused[:200]!r} is not allowed here; to serve the dashboard under that "
                "name, list it with --allowed-hosts (flowd dashboard) or allowed_hosts=",
            )
        elif self._auth is not None and not security.check_basic_auth(environ, self._auth):
            response = plain(401, "authentication required")
            response.headers.append(
                ("WWW-Authenticate", 'Basic realm="flowd dashboard", charset="UTF-8"')
            )
        else:
            token = security.read_cookie(environ, security.CSRF_COOKIE)
            fresh = token is None
            if token is None:
                token = security.new_token()
            response = self._respond(request, token)
            if fresh:
                cookie = security.token_cookie(
                    token, request.script_name or "/", security.is_https(environ)
                )
                response.headers.append(("Set-Cookie", cookie))
        response.headers.extend(security.SECURITY_HEADERS)
        return response(start_response)

    def _respond(self, request: Request, token: str) -> Response:
        try:
            if request.method == "POST":
                return self._post(request)
            if request.method not in ("GET", "HEAD"):
                return plain(405, "method not allowed")
            return self._get(request, token)
        except redis.exceptions.RedisError as exc:
            logger.error("dashboard: Redis error on %s %s: %s", request.method, request.path, exc)
            return self._page(
                503, "error.html", token, request=request, message=f"Redis error: {exc}"
            )

    def _get(self, request: Request, token: str) -> Response:
        path = request.path
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        if path in ("/", ""):
            streams = self.known_streams()
            rows, minutes = overview(self.client, streams)
            return self._page(
                200,
                "overview.html",
                token,
                request=request,
                rows=rows,
                chart=chart.build(minutes),
                eviction_policy=unsafe_eviction_policy(self.client),
            )
        if path == "/stream":
            stream = request.query.get("name", "")
            if stream not in self.known_streams():
                return self._page(
                    404, "error.html", token, request=request, message=f"no stream {stream!r} here"
                )
            return self._stream_page(request, token, stream)
        if path == "/job":
            return self._job_page(request, token)
        return self._page(404, "error.html", token, request=request, message="no such page")

    def _stream_page(self, request: Request, token: str, stream: str) -> Response:
        q = request.query
        # A partition's pause is its queue's: shown, and set, by the queue's name.
        queue = partition_base(stream) or stream
        info = stream_info(self.client, stream, lag_scan_limit=LAG_SCAN_LIMIT, base_stream=queue)
        groups = [g.name for g in info.groups]
        group = q.get("group") if q.get("group") in groups else (groups[0] if groups else None)
        pending = (
            data.pending_page(self.client, stream, group, q.get("pending_after"))
            if group is not None
            else None
        )
        try:
            offset = max(0, int(q.get("scheduled_offset", "0")))
        except ValueError:
            offset = 0
        done = DONE.get(q.get("done", ""), "")
        return self._page(
            200,
            "stream.html",
            token,
            request=request,
            stream=stream,
            queue=queue,
            info=info,
            group=group,
            pending=pending,
            dead=data.dead_page(self.client, stream, q.get("dead_before")),
            scheduled=data.scheduled_page(self.client, stream, offset),
            chart=chart.build(data.history(self.client, [stream])),
            max_consumers=data.MAX_CONSUMERS,
            done=done.format(n=q.get("n", "0")) if done and q.get("n", "").isdigit() else "",
        )

    def _job_page(self, request: Request, token: str) -> Response:
        stream = request.query.get("stream", "")
        if stream not in self.known_streams():
            return self._page(
                404, "error.html", token, request=request, message=f"no stream {stream!r} here"
            )
        # Pasted ids often carry spaces around them.
        job_id = request.query.get("id", "").strip()
        view = jobs.find_job(self.client, stream, job_id) if job_id else None
        return self._page(
            200 if view is not None else 404,
            "job.html",
            token,
            request=request,
            stream=stream,
            job_id=job_id,
            job=view,
        )

    # -- actions

    def _post(self, request: Request) -> Response:
        if self.read_only:
            return plain(403, "this dashboard is read-only")
        form = request.form()
        if form is None:
            return plain(413, "form too large")
        if self._hosts is not None and not self._hosts.origin_allowed(request.environ):
            logger.warning(
                "dashboard: refused a POST to %s from an origin not allowed", request.path
            )
            return plain(403, "cross-site request refused: origin not allowed")
        if not security.csrf_ok(request.environ, form):
            logger.warning("dashboard: refused a cross-site or tokenless POST to %s", request.path)
            return plain(403, "cross-site request refused")
        stream = form.get("stream", "")
        if stream not in self.known_streams():
            return plain(404, f"no stream {stream!r} here")
        action = request.path.strip("/")
        if action not in ("requeue", "requeue-all", "purge", "cancel", "pause", "resume"):
            return plain(404, "no such action")
        if action not in _NO_CONFIRM and form.get("confirm") != "yes":
            return self._confirm(request, form, action, stream)
        try:
            count = self._act(action, stream, form)
        except ConfigurationError as exc:
            return plain(400, str(exc))
        logger.info("dashboard: %s on %s: %d", action, stream, count)
        done = {"requeue": "requeued", "requeue-all": "requeued-all", "purge": "purged"}
        if action in ("pause", "resume"):
            code = ("paused" if action == "pause" else "resumed") if count else "unchanged"
            group = form.get("group") or None
            return redirect(request.url("/stream", name=stream, group=group, done=code, n=count))
        return redirect(
            request.url("/stream", name=stream, done=done.get(action, "cancelled"), n=count)
        )

    def _act(self, action: str, stream: str, form: dict[str, str]) -> int:
        if action in ("pause", "resume"):
            # No group: every group of the stream.
            change = pause if action == "pause" else resume
            queue = partition_base(stream) or stream  # one pause for all its partitions
            return int(change(self.client, queue, form.get("group") or None))
        dead = DeadLetters(self.client, stream)
        if action == "requeue":
            return len(dead.requeue([form.get("id", "")]))
        if action == "requeue-all":
            return dead.requeue_all()
        if action == "purge":
            return dead.purge()
        api = data.scheduled_api()
        if api is None:
            raise ConfigurationError("scheduled jobs are not available in this flowd")
        return int(bool(api(self.client, stream).cancel(form.get("id", ""))))

    def _confirm(
        self, request: Request, form: dict[str, str], action: str, stream: str
    ) -> Response:
        if action == "cancel":
            question = f"Cancel the scheduled job {form.get('id', '')!r} of {stream}?"
            yes = "Yes, cancel it"
        else:
            count = int(self.client.xlen(dead_letter_stream(stream)))
            if action == "purge":
                question = f"Delete all {count} dead letters of {stream}? This cannot be undone."
                yes = f"Yes, delete {count} dead letters"
            else:
                question = f"Move all {count} dead letters of {stream} back to the stream?"
                yes = f"Yes, requeue {count} dead letters"
        return self._page(
            200,
            "confirm.html",
            form.get(security.CSRF_FIELD, ""),
            request=request,
            action=action,
            stream=stream,
            item=form.get("id", ""),
            question=question,
            yes=yes,
        )

    # -- rendering

    def _page(self, status: int, template: str, token: str, **context: Any) -> Response:
        html = self._env.get_template(template).render(
            csrf_token=token, read_only=self.read_only, **context
        )
        return Response(status, html.encode("utf-8"))

    def _static(self, name: str) -> Response:
        if name not in _STATIC:
            return plain(404, "no such file")
        body = importlib.resources.files("flowd.dashboard").joinpath("static", name).read_bytes()
        return Response(200, body, _STATIC[name])
