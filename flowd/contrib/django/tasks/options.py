"""The ``OPTIONS`` of a ``TASKS`` backend entry, checked into :class:`TaskOptions`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...._redis.keys import hash_tag
from ...._redis.timeutil import to_seconds
from ...._redis.urls import DEFAULT_URL
from ....backoff import Backoff
from ....claimer import Claimer
from ....errors import ConfigurationError
from ....flow.adaptive import MAX_CONCURRENCY

__all__ = ["DEFAULT_PREFIX", "GROUP", "TaskOptions"]

#: The streams of a backend are ``<prefix>:<queue name>``.
DEFAULT_PREFIX = "django-tasks"
#: The consumer group of every task stream.
GROUP = "django-tasks"

_KEYS = frozenset(
    {
        "URL",
        "CLIENT_OPTIONS",
        "RESULT_TTL",
        "MAX_RETRIES",
        "BACKOFF",
        "MIN_IDLE_TIME",
        "CONCURRENCY",
        "ENQUEUE_ON_COMMIT",
        "STREAM_PREFIX",
        "TIME_LIMIT",
    }
)
_BACKOFF_KEYS = {"INITIAL": "initial", "FACTOR": "factor", "MAXIMUM": "maximum", "JITTER": "jitter"}
_DEFAULT_BACKOFF = {"INITIAL": 1, "FACTOR": 2, "MAXIMUM": 600}


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a dict, not {type(value).__name__}")
    return value


def _known(raw: Mapping[str, Any], allowed: frozenset[str] | Mapping[str, str], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigurationError(
            f"{where} has unknown keys {unknown}; expected some of {sorted(allowed)}"
        )


def _backoff(value: object, where: str) -> Backoff | None:
    if value is None:
        return None
    raw = _mapping(value, where)
    _known(raw, _BACKOFF_KEYS, where)
    try:
        return Backoff(**{_BACKOFF_KEYS[key]: item for key, item in raw.items()})
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc


def _queues(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigurationError(f"{where} must be a list of queue names, not {value!r}")
    names = tuple(value)
    if not names:
        raise ConfigurationError(f"{where} is empty: name at least one queue")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{where}: a queue name must be a non-empty str, not {name!r}")
    return names


@dataclass(frozen=True)
class TaskOptions:
    """One backend's checked settings (see :mod:`flowd.contrib.django.tasks`)."""

    queues: tuple[str, ...]
    url: str = DEFAULT_URL
    client_options: Mapping[str, Any] = field(default_factory=dict)
    result_ttl: float = 86400.0
    max_retries: int = 3
    backoff: Backoff | None = None
    min_idle_time: float = 30.0
    concurrency: int = 8
    enqueue_on_commit: bool = True
    stream_prefix: str = DEFAULT_PREFIX
    time_limit: float | None = None

    @classmethod
    def parse(cls, alias: str, params: Mapping[str, Any]) -> TaskOptions:
        """Check a ``TASKS[alias]`` entry; nothing is imported or connected.

        :raises ConfigurationError: naming the setting and what is wrong with it.
        """
        where = f"TASKS[{alias!r}]"
        queues = _queues(params.get("QUEUES", ["default"]), f"{where}['QUEUES']")
        options = _mapping(params.get("OPTIONS", {}), f"{where}['OPTIONS']")
        here = f"{where}['OPTIONS']"
        _known(options, _KEYS, here)
        url = options.get("URL", DEFAULT_URL)
        if not isinstance(url, str) or not url:
            raise ConfigurationError(f"{here}['URL'] must be a non-empty str, not {url!r}")
        client_options = _mapping(options.get("CLIENT_OPTIONS", {}), f"{here}['CLIENT_OPTIONS']")
        prefix = options.get("STREAM_PREFIX", DEFAULT_PREFIX)
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(
                f"{here}['STREAM_PREFIX'] must be a non-empty str, not {prefix!r}"
            )
        on_commit = options.get("ENQUEUE_ON_COMMIT", True)
        if not isinstance(on_commit, bool):
            raise ConfigurationError(
                f"{here}['ENQUEUE_ON_COMMIT'] must be True or False, not {on_commit!r}"
            )
        concurrency = options.get("CONCURRENCY", 8)
        if (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= MAX_CONCURRENCY
        ):
            raise ConfigurationError(
                f"{here}['CONCURRENCY'] must be an int from 1 to {MAX_CONCURRENCY}, "
                f"not {concurrency!r}"
            )
        try:
            result_ttl = to_seconds(options.get("RESULT_TTL", 86400), "RESULT_TTL")
            time_limit = options.get("TIME_LIMIT")
            claimer = Claimer(
                min_idle_time=options.get("MIN_IDLE_TIME", 30.0),
                max_retries=options.get("MAX_RETRIES", 3),
            )
            if time_limit is not None:
                time_limit = to_seconds(time_limit, "TIME_LIMIT")
        except ConfigurationError as exc:
            raise ConfigurationError(f"{here}: {exc}") from exc
        parsed = cls(
            queues=queues,
            url=url,
            client_options=dict(client_options),
            result_ttl=result_ttl,
            max_retries=claimer.max_retries,
            backoff=_backoff(options.get("BACKOFF", _DEFAULT_BACKOFF), f"{here}['BACKOFF']"),
            min_idle_time=claimer.min_idle_time,
            concurrency=concurrency,
            enqueue_on_commit=on_commit,
            stream_prefix=prefix,
            time_limit=time_limit,
        )
        for name in queues:
            try:
                hash_tag(parsed.stream(name))
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}['QUEUES']: queue {name!r}: {exc}") from exc
        return parsed

    def stream(self, queue_name: str) -> str:
        """The flowd stream of one Django queue."""
        return f"{self.stream_prefix}:{queue_name}"

    def claimer(self) -> Claimer:
        """The claimer of each task queue: MAX_RETRIES retries, after BACKOFF's delays."""
        return Claimer(
            min_idle_time=self.min_idle_time, max_retries=self.max_retries, backoff=self.backoff
        )
