"""What is kept of a failure: the bounded traceback beside the one-line reason."""

from __future__ import annotations

import traceback

#: Most characters of a traceback kept (its end: the frames nearest the error and the message).
TRACEBACK_LIMIT = 4096


def traceback_of(exc: BaseException) -> str:
    """The formatted traceback of ``exc``, cut to its last ``TRACEBACK_LIMIT`` characters."""
    text = "".join(traceback.format_exception(exc)).rstrip("\n")
    if len(text) <= TRACEBACK_LIMIT:
        return text
    return "...\n" + text[-(TRACEBACK_LIMIT - 4) :]
