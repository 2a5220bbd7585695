"""What is kept of a failure: the bounded traceback beside the one-line reason.

A job's exception is the job's code: its ``__str__`` or ``__repr__`` (or a GiveUp
reason's, or a SystemExit code's) may raise. Everything here formats through
:func:`safe_str` and :func:`safe_repr`, which never raise, so a failure is always
recorded and no worker thread dies of one.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

#: Most characters of a traceback kept (its end: the frames nearest the error and the message).
TRACEBACK_LIMIT = 4096


def _class_name(obj: object) -> str:
    try:
        return type(obj).__name__
    except Exception:  # a hostile metaclass; nothing else is left to say
        return "object"


def storable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) as backslash escapes:
    Redis takes it, where the text itself would fail every write that carries it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _safe(format_: Callable[[object], str], obj: object) -> str:
    try:
        text = format_(obj)
        if type(text) is str:
            return storable(text)
    except Exception:
        pass
    return f"<unprintable {_class_name(obj)}>"


def safe_str(obj: object) -> str:
    """``str(obj)``, or ``"<unprintable ClassName>"`` when that raises."""
    return _safe(str, obj)


def safe_repr(obj: object) -> str:
    """``repr(obj)``, or ``"<unprintable ClassName>"`` when that raises."""
    return _safe(repr, obj)


def traceback_of(exc: BaseException) -> str:
    """The formatted traceback of ``exc``, cut to its last ``TRACEBACK_LIMIT`` characters."""
    try:
        text = "".join(traceback.format_exception(exc)).rstrip("\n")
    except Exception:  # format_exception guards str(exc), but not every hostile object
        text = f"{_class_name(exc)}: {safe_str(exc)} (its traceback could not be formatted)"
    text = storable(text)
    if len(text) <= TRACEBACK_LIMIT:
        return text
    return "...\n" + text[-(TRACEBACK_LIMIT - 4) :]
