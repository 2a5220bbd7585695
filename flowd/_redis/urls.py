"""Redis URLs as flowd shows them: never with a password."""

from __future__ import annotations

import re

#: The Redis URL when neither ``--url`` nor ``FLOWD_REDIS_URL`` (nor a framework setting) gives one.
DEFAULT_URL = "redis://localhost:6379/0"

# A query parameter that holds a secret: password=, ssl_password=, pass=, pwd=...
_SECRET_QUERY = re.compile(r"([?&][^=&#]*(?:password|pass|pwd)=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password (in the user part or the query) replaced by ``***``.

    Works on the raw text, not on a parsed URL: an unencoded ``#``, ``/`` or
    ``?`` in a password would end the user part for a URL parser and leak the
    rest. Everything up to the last ``@`` is the user part. A URL without a
    secret comes back unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_QUERY.sub(r"\1***", url)
    at = rest.rfind("@")
    if at != -1:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            rest = f"{user}:***@{rest[at + 1 :]}"
    return scheme + sep + _SECRET_QUERY.sub(r"\1***", rest)
