"""Every exception flowd raises.

::

    FlowdError                            base: catch everything flowd raises
    ├── ConfigurationError (ValueError)   bad Queue/Claimer/Producer arguments, at construction
    ├── RedisVersionError                 the server is older than 6.2; names the version found
    ├── DecodeError                       a stream entry could not be mapped to its Job
    ├── EncodeError (TypeError)           a Job value does not fit its annotation (at enqueue)
    ├── ReplicationError                  durable enqueue: too few replicas confirmed in time
    ├── HandleStateError (RuntimeError)   a queue or handle used in the wrong state
    └── CommandError                      a worker command must exit: message and exit status

A worker that raises is not a flowd error: its message stays pending and is
retried or dead-lettered by the claimer.
"""

from __future__ import annotations

from collections.abc import Mapping


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


class HandleStateError(FlowdError, RuntimeError):
    """A Queue or QueueHandle was used in a state that does not allow it."""


class CommandError(FlowdError):
    """A command (``flowd ...``, ``manage.py flowd_worker``, ``flask flowd worker``) must
    exit with ``status`` after printing the one-line ``message``; ``detail`` (a
    traceback, say) is printed after it."""

    def __init__(self, message: str, status: int = 1, *, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
