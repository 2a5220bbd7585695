"""flowd: a job queue on Redis Streams for synchronous Python.

This module is the curated face: every public name is imported here. The
package is laid out as its architecture:

- the public vocabulary at the top: ``job``, ``task``, ``producer``, ``queue``,
  ``handle``, ``claimer``, ``backoff``, ``schedule``, ``scheduled``,
  ``deadletters``, ``results``, ``info``, ``housekeeping``, ``hooks``,
  ``errors``;
- ``_redis/``: the Redis boundary (sessions, reply parsing, key and field
  names, the one Lua script runner and the scheduling scripts, job records and
  the job lookup, connecting, URLs, throughput counters, time units, and the
  key-layout migration);
- ``_codec/``: how a Job class maps to stream fields (the plan and the codecs);
- ``flow/``: flow control (priorities, pause, rate limits, per-key concurrency,
  expiry), below the runtime that calls it;
- ``_consumer/``: the consumer runtime of a running Queue (its walk-through is
  at the top of ``_consumer/engine.py``);
- ``cli/``: the ``flowd`` command; ``dashboard/`` and ``contrib/`` (Django,
  Flask, Prometheus) beside it.

Import rules (tests/test_imports.py enforces them, beside its no-cycle check):
``_redis`` and ``_codec`` import nothing of flowd but ``errors`` and each
other's modules; ``flow`` imports only those and ``errors``; ``_consumer`` never imports ``cli``,
``dashboard`` or ``contrib``; no module of flowd imports this one.
"""

from __future__ import annotations

import logging

from ._redis.keys import partition_streams
from ._redis.migrate import KeyMigration, migrate_keys
from ._version import __version__
from .backoff import Backoff
from .claimer import Claimer, DeadLetterWorker
from .deadletters import DeadLetter, DeadLetters
from .errors import (
    ConfigurationError,
    DecodeError,
    EncodeError,
    EnqueueError,
    FlowdError,
    GiveUp,
    HandleStateError,
    RedisVersionError,
    ReplicationError,
    ResultTimeout,
    Retry,
    TimeLimitExceeded,
)
from .flow.pause import is_paused, pause, resume
from .flow.ratelimit import RateLimit
from .handle import QueueHandle, QueueStats
from .hooks import Hooks, LogHooks
from .housekeeping import Housekeeping, TrimResult, remove_idle_consumers, trim_stream
from .info import ConsumerInfo, GroupInfo, StreamInfo, stream_info
from .job import Job, Mapper, field
from .producer import Producer
from .queue import Queue, WorkerFn
from .results import JobResult, JobStatus, Results
from .schedule import Schedule
from .scheduled import ScheduledJob, ScheduledJobs, ScheduleState
from .task import JobLogFilter, Task, current_task

__all__ = [
    "Backoff",
    "Claimer",
    "ConfigurationError",
    "ConsumerInfo",
    "DeadLetter",
    "DeadLetterWorker",
    "DeadLetters",
    "DecodeError",
    "EncodeError",
    "EnqueueError",
    "FlowdError",
    "GiveUp",
    "GroupInfo",
    "HandleStateError",
    "Hooks",
    "Housekeeping",
    "Job",
    "JobLogFilter",
    "JobResult",
    "JobStatus",
    "KeyMigration",
    "LogHooks",
    "Mapper",
    "Producer",
    "Queue",
    "QueueHandle",
    "QueueStats",
    "RateLimit",
    "RedisVersionError",
    "ReplicationError",
    "ResultTimeout",
    "Results",
    "Retry",
    "Schedule",
    "ScheduleState",
    "ScheduledJob",
    "ScheduledJobs",
    "StreamInfo",
    "Task",
    "TimeLimitExceeded",
    "TrimResult",
    "WorkerFn",
    "__version__",
    "current_task",
    "field",
    "is_paused",
    "migrate_keys",
    "partition_streams",
    "pause",
    "remove_idle_consumers",
    "resume",
    "stream_info",
    "trim_stream",
]

logging.getLogger("flowd").addHandler(logging.NullHandler())
