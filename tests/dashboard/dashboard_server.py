"""Serve a Dashboard over real HTTP for the tests (waitress on a free loopback port)."""

from __future__ import annotations

import io
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import waitress

from flowd._redis.keys import dead_letter_stream, derived_key


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yields its base URL."""
    server: Any = waitress.create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, name="test-dashboard-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        # First let the handler threads finish: one still servicing a request wakes the
        # loop when it is done, which fails (EBADF) once the loop has closed.
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=10)

        # Then close every channel in the server's own loop thread (browsers keep
        # connections alive, and the loop runs until none is left).
        def close_all() -> None:
            for channel in list(server._map.values()):
                channel.close()

        try:
            server.trigger.pull_trigger(close_all)
        except OSError:
            # The loop's wake-up pipe is already gone (seen once in CI: EBADF), so the
            # loop cannot be asked; close the server from here instead.
            close_all()
            server.close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the test dashboard server did not stop"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def http(
    url: str,
    *,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, str]:
    """One request (POST when ``data`` is given), redirects not followed: status, headers, body."""
    body = None if data is None else urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with _opener.open(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def add_dead_letter(
    client: redis.Redis, stream: str, fields: dict[str, str], reason: str, deliveries: int = 4
) -> str:
    """A dead letter as flowd's dead-letter path writes it (original fields, then flowd:*)."""
    meta = {
        "flowd:id": f"{int(time.time() * 1000)}-0",
        "flowd:stream": stream,
        "flowd:group": "g",
        "flowd:consumer": "c1",
        "flowd:deliveries": str(deliveries),
        "flowd:reason": reason,
        "flowd:time": str(int(time.time() * 1000)),
    }
    return client.xadd(dead_letter_stream(stream), {**fields, **meta}).decode()


# Adds ARGV[1] entries to KEYS[1] in one script call: the fast way to build big streams.
_FILL_LUA = """
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'to', 'user' .. i .. '@example.com', 'subject', 'Hello',
             'attempt', '0')
end
"""
# The same for dead letters, with the flowd:* fields of the dead-letter path.
_FILL_DEAD_LUA = """
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'to', 'user' .. i .. '@example.com', 'subject', 'Hello',
             'attempt', '0', 'flowd:id', i .. '-0', 'flowd:stream', ARGV[2],
             'flowd:group', 'mailers', 'flowd:consumer', 'c1', 'flowd:deliveries', '4',
             'flowd:reason', 'ValueError: card declined', 'flowd:time', ARGV[3])
end
"""
_FILL_CHUNK = 50_000


def fill_big_queue(
    client: redis.Redis, stream: str, entries: int, dead: int, pending: int = 1000
) -> None:
    """``entries`` jobs in ``stream`` (group ``mailers``, ``pending`` of them delivered to
    consumer c1, with a recorded failure each) and ``dead`` dead letters."""
    fill = client.register_script(_FILL_LUA)
    fill_dead = client.register_script(_FILL_DEAD_LUA)
    for done in range(0, entries, _FILL_CHUNK):
        fill(keys=[stream], args=[min(_FILL_CHUNK, entries - done)])
    now = str(int(time.time() * 1000))
    for done in range(0, dead, _FILL_CHUNK):
        count = min(_FILL_CHUNK, dead - done)
        fill_dead(keys=[dead_letter_stream(stream)], args=[count, stream, now])
    client.xgroup_create(stream, "mailers", "0")
    delivered = client.xreadgroup("mailers", "c1", {stream: ">"}, count=pending)
    ids = [msg_id for msg_id, _ in delivered[0][1]] if delivered else []
    if ids:
        errors = derived_key(stream, "errors:mailers")
        client.hset(errors, mapping={i: "TimeoutError: slow API" for i in ids})


def call(
    app: Any, method: str, path: str, environ: dict[str, str], form: dict[str, str] | None = None
) -> tuple[str, dict[str, str], str]:
    """Call a WSGI app directly, with the environ a server (or proxy set-up) would give it."""
    body = urllib.parse.urlencode(form or {}).encode()
    started: list[Any] = []
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        **environ,
    }
    out = b"".join(app(env, lambda status, headers: started.append((status, headers))))
    return started[0][0], dict(started[0][1]), out.decode()
