"""Just enough WSGI plumbing for the dashboard: a request, a response, a form parser."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

#: Largest form body read; the dashboard's forms are a few short fields.
MAX_FORM_BYTES = 64 * 1024

STATUS_TEXT = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    503: "Service Unavailable",
}


def _first(values: Mapping[str, list[str]]) -> dict[str, str]:
    return {key: items[0] for key, items in values.items() if items}


class Request:
    """The parts of a WSGI environ the dashboard reads."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        self.script_name = str(environ.get("SCRIPT_NAME", "")).rstrip("/")
        self.path = str(environ.get("PATH_INFO", "")) or "/"
        self.query = _first(parse_qs(str(environ.get("QUERY_STRING", ""))))

    def form(self) -> dict[str, str] | None:
        """The urlencoded POST body's fields (first value each); None when it is too large."""
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_FORM_BYTES:
            return None
        body = self.environ["wsgi.input"].read(length) if length > 0 else b""
        return _first(parse_qs(body.decode("utf-8", "replace")))

    def url(self, path: str, **params: str | int | None) -> str:
        """A URL of this dashboard (under the prefix it is mounted at)."""
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.script_name}{path}" + (f"?{query}" if query else "")


@dataclass
class Response:
    """Status, headers and body of one answer."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, start_response: Any) -> Iterable[bytes]:
        headers = [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            *self.headers,
        ]
        start_response(f"{self.status} {STATUS_TEXT.get(self.status, 'Unknown')}", headers)
        return [self.body]


def redirect(location: str) -> Response:
    """A 303 to ``location`` (after a POST, so reloading does not repeat it)."""
    return Response(303, b"", "text/plain; charset=utf-8", [("Location", location)])


def plain(status: int, message: str) -> Response:
    """A short text answer."""
    return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8")
