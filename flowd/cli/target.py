"""``MODULE:ATTR``: importing the queue a worker command runs, and saying what went wrong.

An exception raised by the user's module is shown with its traceback, minus
flowd's and importlib's own frames, so the first line to read is the user's.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import redis

from .._redis.connect import EXIT_USAGE
from ..errors import CommandError
from ..queue import Queue

_FLOWD_DIR = str(Path(__file__).resolve().parent) + os.sep
_REDIS_DIR = str(Path(redis.__file__).resolve().parent) + os.sep
# importlib's own frames: the import machinery, not the user's code
_IMPORTLIB = (str(Path(importlib.__file__).parent) + os.sep, "<frozen importlib")


def load_queue(target: str) -> Queue[Any]:
    """Import ``MODULE:ATTR``; ATTR is a Queue, or a callable returning one.

    :raises CommandError: EXIT_USAGE, with the reason (and the user's traceback).
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"expected MODULE:ATTR, got {target!r}", EXIT_USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the app's own modules import
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise _user_error(f"cannot import {module_name!r}:", module_name, exc) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"{module_name!r} has no attribute {attr!r}", EXIT_USAGE) from None
    if not isinstance(obj, Queue) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise _user_error(f"{target} raised", module_name, exc) from None
    if not isinstance(obj, Queue):
        raise CommandError(
            f"{target} is a {type(obj).__name__}, not a flowd.Queue or a callable returning one",
            EXIT_USAGE,
        )
    return obj


def _user_error(what: str, module_name: str, exc: Exception) -> CommandError:
    """``what``: "cannot import 'mod':" or "mod:attr raised"; the reason follows it."""
    frames = user_frames(exc)
    if isinstance(exc, ValueError) and "Redis URL" in str(exc):
        # redis-py's own wording; --url and FLOWD_REDIS_URL were checked before the import.
        own = [f for f in frames if not f.filename.startswith(_REDIS_DIR)]
        where = f", {own[-1].filename}:{own[-1].lineno}" if own else ""
        message = f"bad Redis URL in {module_name!r} (its own client{where}): {exc}"
    else:
        message = f"{what} {type(exc).__name__}: {exc}"
    detail = ""
    if frames:
        detail = (
            "Traceback of your code (flowd's frames left out):\n"
            + "".join(traceback.format_list(frames))
            + "".join(traceback.format_exception_only(exc))
        )
    return CommandError(message, EXIT_USAGE, detail=detail.rstrip("\n"))


def user_frames(exc: BaseException) -> traceback.StackSummary:
    """The frames of ``exc``'s traceback outside flowd and the import machinery."""
    frames = traceback.extract_tb(exc.__traceback__)
    return traceback.StackSummary.from_list(
        [frame for frame in frames if not frame.filename.startswith((_FLOWD_DIR, *_IMPORTLIB))]
    )
