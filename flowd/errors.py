"""Every exception flowd raises.

::

    FlowdError                            base: catch everything flowd raises
    ├── ConfigurationError (ValueError)   bad Queue/Claimer/Producer arguments, at construction
    ├── RedisVersionError                 the server is older than 6.2; names the version found
    ├── DecodeError                       a stream entry could not be mapped to its Job
    ├── EncodeError (TypeError)           a Job value does not fit its annotation (at enqueue)
    ├── ReplicationError                  durable enqueue: too few replicas confirmed in time
    ├── EnqueueError                      enqueue_bulk: not every job was written; says which were
    ├── HandleStateError (RuntimeError)   a queue or handle used in the wrong state
    ├── ResultTimeout (TimeoutError)      Results.wait: the job did not finish in time
    ├── CommandError                      a worker command must exit: message and exit status
    ├── Retry                             raised by a job: run it again (after a delay)
    └── GiveUp                            raised by a job: dead-letter it now, no more runs

    TimeLimitExceeded (BaseException)     raised *into* a job's thread past Queue.time_limit

A worker that raises is not a flowd error: its message stays pending and is
retried or dead-lettered by the claimer.

``TimeLimitExceeded`` is deliberately not a FlowdError, nor an Exception: it
interrupts a job from outside (as ``KeyboardInterrupt`` does, and as
Dramatiq's ``Interrupt``), so an ``except Exception`` in the job must not
swallow it and let the job run on past its limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta


class FlowdError(Exception):
    """Base class of every flowd exception."""


class ConfigurationError(FlowdError, ValueError):
    """A Queue, Claimer or Producer was given an invalid argument."""


class RedisVersionError(FlowdError):
    """The Redis server is too old for flowd (XAUTOCLAIM needs 6.2)."""

    def __init__(self, found: str, required: str = "6.2.0") -> None:
        self.found = found
        self.required = required
        super().__init__(f"flowd needs Redis >= {required}, but the server reports {found}")


class DecodeError(FlowdError):
    """A stream entry could not be mapped to its Job class."""

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        message_id: str | None = None,
        fields: Mapping[bytes, bytes] | None = None,
    ) -> None:
        self.reason = reason
        self.field = field
        self.message_id = message_id
        self.fields = dict(fields) if fields is not None else None
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = []
        if self.message_id is not None:
            where.append(f"message {self.message_id}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason

    def reason_text(self) -> str:
        """The text the dead-letter path records for this error."""
        return f"DecodeError: {self}"


class EncodeError(FlowdError, TypeError):
    """A Job field holds a value that does not fit its annotation."""


class ReplicationError(FlowdError):
    """Durable enqueue: fewer replicas than asked confirmed the writes within the timeout.

    The jobs were added on the master (their ids are on ``ids``), but a
    failover before they reach a replica would lose them.
    """

    def __init__(self, wanted: int, acknowledged: int, timeout: float, ids: list[str]) -> None:
        self.wanted = wanted
        self.acknowledged = acknowledged
        self.ids = ids
        super().__init__(
            f"only {acknowledged} of {wanted} replicas confirmed {len(ids)} enqueued jobs "
            f"within {timeout}s; they are on the master but not yet durable"
        )


class EnqueueError(FlowdError):
    """``enqueue_bulk`` did not write every job; says which ones it did.

    Every input index is in exactly one of three places, so the jobs can be
    sent again without duplicates::

        try:
            ids = producer.enqueue_bulk(jobs)
        except flowd.EnqueueError as err:
            producer.enqueue_bulk([jobs[i] for i in err.failed])  # certainly not written

    :ivar enqueued: ids of the jobs written, in input order (as a success returns them).
    :ivar failed: input indexes of jobs certainly not written: refused by Redis
        (OOM, say), or never sent because an earlier chunk went wrong.
    :ivar unknown: input indexes of jobs that may or may not have been written:
        the connection broke while their chunk was in flight.
    :ivar cause: the first Redis error (also ``__cause__``).
    """

    def __init__(
        self,
        enqueued: list[str],
        failed: list[int],
        unknown: list[int],
        cause: BaseException,
    ) -> None:
        self.enqueued = enqueued
        self.failed = failed
        self.unknown = unknown
        self.cause = cause
        self.__cause__ = cause
        super().__init__(
            f"enqueue_bulk wrote {len(enqueued)} jobs; {len(failed)} were not written "
            f"(see .failed) and {len(unknown)} may or may not have been (see .unknown): "
            f"{type(cause).__name__}: {cause}"
        )


class HandleStateError(FlowdError, RuntimeError):
    """A Queue or QueueHandle was used in a state that does not allow it."""


class ResultTimeout(FlowdError, TimeoutError):
    """``Results.wait`` gave up: the job had not finished when its timeout passed."""

    def __init__(self, job_id: str, timeout: float, status: object = None) -> None:
        self.job_id = job_id
        self.timeout = timeout
        #: The job's status when the wait gave up (a JobStatus), None if unknown.
        self.status = status
        where = "unknown to Redis" if status is None else f"{getattr(status, 'name', status)}"
        super().__init__(f"job {job_id} did not finish within {timeout:g}s (it is {where})")


class CommandError(FlowdError):
    """A command (``flowd ...``, ``manage.py flowd_worker``, ``flask flowd worker``) must
    exit with ``status`` after printing the one-line ``message``; ``detail`` (a
    traceback, say) is printed after it."""

    def __init__(self, message: str, status: int = 1, *, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class Retry(FlowdError):
    """Raised by a job to be run again after ``delay`` seconds (or the claimer's backoff).

    The run counts toward ``max_retries`` but is not a failure: it is logged
    at INFO and counted in ``QueueStats.retry_requested``.

    :param delay: seconds or a timedelta; None uses the claimer's ``backoff``
        (without one: ``min_idle_time``).
    :raises ConfigurationError: for a negative or non-numeric delay.
    """

    def __init__(self, delay: float | timedelta | None = None, reason: str = "") -> None:
        self.delay = None if delay is None else _delay_seconds(delay)
        self.reason = reason
        when = "later" if self.delay is None else f"in {self.delay:g}s"
        super().__init__(f"retry requested {when}" + (f": {reason}" if reason else ""))


def _delay_seconds(delay: object) -> float:
    # Checked here rather than with _timeutil.to_seconds, which imports this module.
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise ConfigurationError(f"Retry delay must be seconds or a timedelta, not {delay!r}")
    if not 0 <= seconds < float("inf"):
        raise ConfigurationError(f"Retry delay must be a finite number >= 0, not {delay!r}")
    return seconds


class GiveUp(FlowdError):
    """Raised by a job that will never succeed: it is dead-lettered now with ``reason``."""

    def __init__(self, reason: str = "gave up") -> None:
        self.reason = reason
        super().__init__(reason)


class TimeLimitExceeded(BaseException):
    """Raised asynchronously in a job's thread once it runs past ``Queue.time_limit``."""
