"""flowd: a job queue on Redis Streams for synchronous Python."""

from __future__ import annotations

import logging

from .errors import (
    ConfigurationError,
    DecodeError,
    EncodeError,
    FlowdError,
    HandleStateError,
    RedisVersionError,
)
from .job import Job, Mapper, field
from .producer import Producer
from .task import Task

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "FlowdError",
    "HandleStateError",
    "Job",
    "Mapper",
    "Producer",
    "RedisVersionError",
    "Task",
    "__version__",
    "field",
]

logging.getLogger("flowd").addHandler(logging.NullHandler())
