"""flowd: a job queue on Redis Streams for synchronous Python."""

from __future__ import annotations

import logging

from ._keys import partition_streams
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
    Retry,
    TimeLimitExceeded,
)
from .handle import QueueHandle, QueueStats
from .hooks import Hooks, LogHooks
from .housekeeping import Housekeeping, TrimResult, remove_idle_consumers, trim_stream
from .info import ConsumerInfo, GroupInfo, StreamInfo, stream_info
from .job import Job, Mapper, field
from .migrate import KeyMigration, migrate_keys
from .producer import Producer
from .queue import Queue, WorkerFn
from .schedule import Schedule
from .scheduled import ScheduledJob, ScheduledJobs, ScheduleState
from .task import Task

__version__ = "0.1.0"

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
    "KeyMigration",
    "LogHooks",
    "Mapper",
    "Producer",
    "Queue",
    "QueueHandle",
    "QueueStats",
    "RedisVersionError",
    "ReplicationError",
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
    "field",
    "migrate_keys",
    "partition_streams",
    "remove_idle_consumers",
    "stream_info",
    "trim_stream",
]

logging.getLogger("flowd").addHandler(logging.NullHandler())
