"""The Tasks framework, wherever it lives: ``django.tasks`` (Django >= 6.0) or the
``django_tasks`` backport (Django 4.2-5.2), with the same names in both."""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "BaseTaskBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "exception_traceback",
    "module_path",
    "plain_json",
    "signals",
    "task_backends",
]


def _framework() -> str:
    """The package of the framework: Django's own first, so one module serves both."""
    for name in ("django.tasks", "django_tasks"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return name
    raise ImproperlyConfigured(
        "flowd's Django Tasks backend needs Django >= 6.0 or the backport: pip install django-tasks"
    )


def _module(suffix: str) -> ModuleType:
    return importlib.import_module(f"{FRAMEWORK}.{suffix}")


#: ``django.tasks`` or ``django_tasks``.
FRAMEWORK = _framework()
_base = _module("base")

# Typed as Any: the framework may be either package, and Django ships no hints.
BaseTaskBackend: Any = _module("backends.base").BaseTaskBackend
Task: Any = _base.Task
TaskContext: Any = _base.TaskContext
TaskError: Any = _base.TaskError
TaskResult: Any = _base.TaskResult
TaskResultStatus: Any = _base.TaskResultStatus
TaskResultDoesNotExist: Any = _module("exceptions").TaskResultDoesNotExist
signals: Any = _module("signals")
task_backends: Any = importlib.import_module(FRAMEWORK).task_backends


def module_path(value: Any) -> str:
    """``package.module.Name`` of a function or class, as the framework names them."""
    return f"{value.__module__}.{value.__qualname__}"


def exception_traceback(exc: BaseException) -> str:
    """The traceback text of ``exc``, as the framework's TaskError keeps it."""
    return "".join(traceback.format_exception(exc))


def plain_json(value: Any) -> Any:
    """``value`` as JSON types (tuples become lists, bytes text), as the framework
    normalizes arguments and return values.

    :raises TypeError: a value with no JSON form.
    :raises ValueError: bytes that are not UTF-8.
    """
    if isinstance(value, Mapping):
        return {plain_json(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("bytes that are not UTF-8 have no JSON form") from exc
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Sequence):
        return [plain_json(v) for v in value]
    raise TypeError(f"{type(value).__name__} has no JSON form")
