"""Redis URLs as flowd shows them: never with a password."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

_SECRET_QUERY_KEYS = frozenset({"password", "pass", "pwd"})


def redact_url(url: str) -> str:
    """``url`` with any password (in the user part or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            host = netloc.rsplit("@", 1)[1]
            netloc = f"{parts.username or ''}:***@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
            )
    except ValueError:
        return "<unparsable URL>"
    if netloc == parts.netloc and query == parts.query:
        return url
    text = f"{parts.scheme}://{netloc}{parts.path}"
    text += f"?{query}" if query else ""
    return text + (f"#{parts.fragment}" if parts.fragment else "")
