"""The dashboard's guards: HTTP Basic auth, cross-site request checks, response headers.

A POST must pass two independent checks (either alone stops a forged request):

- double submit: the ``flowd_csrf`` cookie (random, ``SameSite=Strict``,
  ``HttpOnly``) must equal the form's hidden ``csrf`` field. Another site can
  neither read the cookie nor make the browser send it;
- same origin: the ``Origin`` header (else ``Referer``) must name the host the
  request was sent to. A POST with neither is refused.

The cookie is ``Secure`` when the request came over HTTPS (directly or
through a proxy that says so in ``X-Forwarded-Proto``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError

CSRF_COOKIE = "flowd_csrf"
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
