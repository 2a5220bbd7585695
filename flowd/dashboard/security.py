"""The dashboard's guards: HTTP Basic auth, cross-site request checks, response headers.

A POST must pass two independent checks (either alone stops a forged request):

- double submit: the ``flowd_csrf`` cookie (random, ``SameSite=Strict``,
  ``HttpOnly``) must equal the form's hidden ``csrf`` field. Another site can
  neither read the cookie nor make the browser send it;
- same origin: the ``Origin`` header (else ``Referer``) must name the host the
  request was sent to. A POST with neither is refused.

The cookie is ``Secure`` when the request came over HTTPS (directly or
through a proxy that says so in ``X-Forwarded-Proto``).

With an allowed-hosts list (``flowd dashboard`` always has one), every
request's ``Host`` (and ``X-Forwarded-Host``, when present) must name an
allowed host, and so must a POST's ``Origin``. Without it a DNS-rebinding
page (``evil.example`` resolving to 127.0.0.1) is "same origin" as far as the
browser and the checks above can tell, and could read the token and post it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError

CSRF_COOKIE = "flowd_csrf"
#: Always allowed by ``flowd dashboard`` (besides its bind address).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
CSRF_FIELD = "csrf"

#: No script at all, styles and images from the dashboard only, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

SECURITY_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    # Same-origin requests keep their Referer (a fallback for the origin check).
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]


def parse_auth(value: str | tuple[str, str] | None) -> tuple[str, str] | None:
    """``"USER:PASSWORD"`` or ``(user, password)`` as a pair; None stays None.

    :raises ConfigurationError: for anything else, without echoing the password.
    """
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        user, password = value
    elif isinstance(value, str) and ":" in value:
        user, _, password = value.partition(":")
    else:
        raise ConfigurationError(
            "auth must be 'USER:PASSWORD' or a (user, password) pair of str"
            " (value not shown: it may hold a password)"
        )
    if not user or not password:
        raise ConfigurationError("auth needs a non-empty user and a non-empty password")
    return user, password


def check_basic_auth(environ: Mapping[str, Any], auth: tuple[str, str]) -> bool:
    """True when the request carries these HTTP Basic credentials (constant-time compare)."""
    header = str(environ.get("HTTP_AUTHORIZATION", ""))
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, password = decoded.partition(":")
    expected_user, expected_password = auth
    # Both compared every time, so timing does not tell which one was wrong.
    user_ok = hmac.compare_digest(user.encode(), expected_user.encode())
    password_ok = hmac.compare_digest(password.encode(), expected_password.encode())
    return bool(sep) and user_ok and password_ok


def read_cookie(environ: Mapping[str, Any], name: str) -> str | None:
    """The value of one cookie, or None."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(str(environ.get("HTTP_COOKIE", "")))
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def new_token() -> str:
    """A fresh CSRF token."""
    return secrets.token_urlsafe(32)


def is_https(environ: Mapping[str, Any]) -> bool:
    """True when the browser talks HTTPS to us or to a proxy in front of us."""
    forwarded = str(environ.get("HTTP_X_FORWARDED_PROTO", "")).split(",")[0].strip()
    return environ.get("wsgi.url_scheme") == "https" or forwarded.lower() == "https"


def token_cookie(token: str, path: str, secure: bool) -> str:
    """The Set-Cookie value that hands ``token`` to the browser."""
    flags = "; Secure" if secure else ""
    return f"{CSRF_COOKIE}={token}; Path={path or '/'}; SameSite=Strict; HttpOnly{flags}"


def same_origin(environ: Mapping[str, Any]) -> bool:
    """True when Origin (else Referer) names the host this request was sent to.

    The host is the one the browser used: ``X-Forwarded-Host`` (set by a proxy
    in front; a cross-site form cannot set headers), else ``Host``. Schemes
    are not compared, so a TLS-terminating proxy needs no configuration.
    """
    host = str(environ.get("HTTP_X_FORWARDED_HOST") or environ.get("HTTP_HOST") or "")
    host = host.split(",")[0].strip()
    if not host:
        return False
    source = environ.get("HTTP_ORIGIN") or environ.get("HTTP_REFERER")
    if not source or source == "null":
        return False
    parts = urlsplit(str(source))
    return parts.scheme in ("http", "https") and _netloc(parts.netloc) == _netloc(host)


def _netloc(netloc: str) -> str:
    netloc = netloc.lower()
    for default in (":80", ":443"):
        netloc = netloc.removesuffix(default)
    return netloc


def csrf_ok(environ: Mapping[str, Any], form: Mapping[str, str]) -> bool:
    """True when a POST passes both the double-submit and the same-origin check."""
    cookie = read_cookie(environ, CSRF_COOKIE)
    field = form.get(CSRF_FIELD, "")
    if not cookie or not field:
        return False
    if not hmac.compare_digest(cookie.encode(), field.encode()):
        return False
    return same_origin(environ)


# A DNS name or IPv4 address, or a bracketed IPv6 address; then an optional port.
_HOST_RE = re.compile(r"^(?P<host>[a-z0-9_.-]+|\[[a-f0-9:.]+\])(?::(?P<port>[0-9]{1,5}))?$")


def split_host(value: str) -> tuple[str, str | None] | None:
    """``(host, port or None)`` of a ``Host`` value, lower case; None when it is not one.

    A bare IPv6 address (``::1``) is bracketed, and a trailing dot dropped
    (``localhost.`` is ``localhost``), so each host has one spelling.
    """
    value = value.strip().lower()
    if value.count(":") > 1 and not value.startswith("["):
        value = f"[{value}]"
    found = _HOST_RE.match(value)
    if found is None:
        return None
    host = found["host"].removesuffix(".")
    return (host, found["port"]) if host else None


class AllowedHosts:
    """The hosts a dashboard answers for.

    Each entry is a host, optionally with a port (without one it matches
    every port); ``.example.com`` matches example.com and its subdomains;
    ``*`` matches every host. Case does not matter.

    :raises ConfigurationError: for an entry that is none of these.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries: list[str] = []
        self._any = False
        self._exact: list[tuple[str, str | None]] = []
        self._domains: list[tuple[str, str | None]] = []
        for entry in entries:
            if not isinstance(entry, str):
                raise ConfigurationError(f"an allowed host must be a str, not {entry!r}")
            text = entry.strip().lower()
            self.entries.append(text)
            if text == "*":
                self._any = True
                continue
            domain = text.startswith(".")
            parsed = split_host(text.removeprefix(".")) if text != "." else None
            if parsed is None or (domain and parsed[0].startswith("[")):
                raise ConfigurationError(
                    f"allowed host {entry!r} is not a host (example.com, example.com:8700,"
                    " [::1]), a domain with its subdomains (.example.com), or '*'"
                )
            (self._domains if domain else self._exact).append(parsed)

    def __repr__(self) -> str:
        return f"AllowedHosts({self.entries!r})"

    def allows(self, value: str) -> bool:
        """True when ``value`` (a ``Host`` header, or an origin's ``host[:port]``) is allowed."""
        parsed = split_host(value)
        if parsed is None:
            return False
        if self._any:
            return True
        host, port = parsed
        for rule_host, rule_port in self._exact:
            if host == rule_host and rule_port in (None, port):
                return True
        for rule_host, rule_port in self._domains:
            if (host == rule_host or host.endswith("." + rule_host)) and rule_port in (None, port):
                return True
        return False

    def refused_host(self, environ: Mapping[str, Any]) -> str | None:
        """The request's ``Host`` (or ``X-Forwarded-Host``) when it is not allowed, else None.

        Both are checked: a page of a rebound name can set ``X-Forwarded-Host``
        but not ``Host``, and a proxy may put the browser's host in either.
        A request without a ``Host`` is refused (as ``""``): browsers always send one.
        """
        host = str(environ.get("HTTP_HOST") or "")
        if not self.allows(host):
            return host
        forwarded = environ.get("HTTP_X_FORWARDED_HOST")
        if forwarded is not None:
            first = str(forwarded).split(",")[0].strip()
            if not self.allows(first):
                return first
        return None

    def origin_allowed(self, environ: Mapping[str, Any]) -> bool:
        """False when the request has an ``Origin`` that names a host not allowed."""
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            return True
        parts = urlsplit(str(origin))
        return parts.scheme in ("http", "https") and self.allows(parts.netloc)
