"""Hooks: a small interface to observe a queue's jobs (metrics, tracing, logging).

Subclass :class:`Hooks`, override what you need, and pass instances as
``Queue(..., hooks=[...])``. Only overridden methods are called, so an
unused event costs nothing per job. A hook that raises is logged and
ignored: it never fails a job or stops a thread. flowd's own failure and
dead-letter logging is the built-in :class:`LogHooks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .errors import GiveUp, Retry
from .task import Task

__all__ = ["Hooks", "LogHooks"]

logger = logging.getLogger(__name__)


class Hooks:
    """Base class of queue hooks; every method does nothing until overridden.

    Job events run on the worker thread that runs the job; ``on_claim`` runs on
    the claimer thread. Durations are seconds.
    """

    def before_job(self, task: Task[Any]) -> None:
        """A job is about to run."""

    def after_success(self, task: Task[Any], duration: float) -> None:
        """A job returned; its message will be acked."""

    def after_failure(self, task: Task[Any], exc: BaseException, duration: float) -> None:
        """A job raised (or ran past its time limit); it is retried or dead-lettered.

        Not called for :class:`flowd.Retry` and :class:`flowd.GiveUp`, which are
        outcomes the job chose, not failures (see ``QueueStats``): those end in
        :meth:`after_retry` and :meth:`after_give_up`."""

    def after_retry(self, task: Task[Any], exc: Retry, duration: float) -> None:
        """A job raised :class:`flowd.Retry`: it runs again after the delay (past
        ``max_retries`` it goes down the dead-letter path instead)."""

    def after_give_up(self, task: Task[Any], exc: GiveUp, duration: float) -> None:
        """A job raised :class:`flowd.GiveUp`: it goes down the dead-letter path now."""

    def on_dead_letter(self, task: Task[Any]) -> None:
        """A message went down the dead-letter path (``task.error`` says why)."""

    def on_expired(self, task: Task[Any]) -> None:
        """A job's deadline (``enqueue(expires=...)``) passed before it started: it was
        not run (``task.error`` is ``"expired"``). It was dead-lettered, and
        :meth:`on_dead_letter` follows, or acked (``Queue(dead_letter_expired=False)``)."""

    def on_claim(self, task: Task[Any]) -> None:
        """A message was reclaimed from an idle consumer and is about to run again."""

    def on_start(self, queue: Any) -> None:
        """The :class:`flowd.Queue` is starting (``run()`` or ``drain()``), on the
        calling thread: a hook that needs the queue's ``client``, ``group`` or
        ``streams`` takes them here."""


class LogHooks(Hooks):
    """The built-in failure logging: an ERROR with the traceback for each failed job."""

    def after_failure(self, task: Task[Any], exc: BaseException, duration: float) -> None:
        logger.error(
            "job %s on %s failed (delivery %d)",
            task.id,
            task.stream,
            task.deliveries,
            exc_info=exc,
        )


_EVENTS = (
    "before_job",
    "after_success",
    "after_failure",
    "after_retry",
    "after_give_up",
    "on_dead_letter",
    "on_expired",
    "on_claim",
)


class HookSet:
    """The overridden methods of some hooks, per event, ready to call."""

    def __init__(self, hooks: Sequence[Hooks]) -> None:
        self.hooks = tuple(hooks)
        for event in _EVENTS:
            base = getattr(Hooks, event)
            methods = [getattr(h, event) for h in self.hooks if getattr(type(h), event) is not base]
            setattr(self, event, tuple(methods))

    before_job: tuple[Callable[[Task[Any]], None], ...]
    after_success: tuple[Callable[[Task[Any], float], None], ...]
    after_failure: tuple[Callable[[Task[Any], BaseException, float], None], ...]
    after_retry: tuple[Callable[[Task[Any], Retry, float], None], ...]
    after_give_up: tuple[Callable[[Task[Any], GiveUp, float], None], ...]
    on_dead_letter: tuple[Callable[[Task[Any]], None], ...]
    on_expired: tuple[Callable[[Task[Any]], None], ...]
    on_claim: tuple[Callable[[Task[Any]], None], ...]


def call_hooks(methods: Sequence[Callable[..., None]], *args: Any) -> None:
    """Call each hook method; one that raises is logged, never propagated."""
    for method in methods:
        try:
            method(*args)
        except Exception:
            logger.exception("hook %r raised; ignored", method)
