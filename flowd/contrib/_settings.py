"""The settings of framework queues: one dict per queue, checked, then built into
Queues and Producers on first use. Used by :mod:`flowd.contrib.django` and
:mod:`flowd.contrib.flask`; the format is described in :mod:`flowd.contrib`."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from ..claimer import Claimer
from ..errors import ConfigurationError, EncodeError
from ..hooks import Hooks
from ..housekeeping import Housekeeping
from ..job import Job
from ..producer import Producer
from ..queue import Queue
from ..task import Task

__all__ = ["QueueRegistry", "QueueSpec", "WorkerWrapper", "import_object"]

#: Wraps a worker function, e.g. to run it inside a Flask app context.
WorkerWrapper = Callable[[Callable[[Task[Any]], object]], Callable[[Task[Any]], object]]

_QUEUE_KEYS = frozenset(
    {
        "STREAM",
        "GROUP",
        "JOB",
        "WORKER",
        "CONCURRENCY",
        "CLAIMER",
        "HOUSEKEEPING",
        "HOOKS",
        "MAXLEN",
        "BLOCK",
        "CONSUMER",
        "RESULT_TTL",
    }
)
_CLAIMER_KEYS = {
    "MIN_IDLE_TIME": "min_idle_time",
    "MAX_RETRIES": "max_retries",
    "DLQ_WORKER": "dlq_worker",
    "DLQ_STREAM": "dlq_stream",
    "INTERVAL": "interval",
    "BATCH": "batch",
}
_HOUSEKEEPING_KEYS = {"INTERVAL": "interval", "TRIM": "trim", "CONSUMER_TTL": "consumer_ttl"}


def import_object(path: str, where: str) -> Any:
    """Import ``package.module.name`` (or ``package.module:name``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigurationError(f"{where}: expected a dotted path like 'myapp.jobs.send'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{where}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"{where}: {module_name!r} has no attribute {attr!r}"
            ) from None
    return obj


def _resolve(value: Any, where: str) -> Any:
    return import_object(value, where) if isinstance(value, str) else value


def _check_keys(raw: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown keys {unknown}; expected some of {sorted(allowed)}"
        )


def _check_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a dict, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class QueueSpec:
    """One queue's settings, checked but not imported yet (see the module docstring)."""

    name: str
    where: str
    stream: str
    group: str
    job: Any
    worker: Any
    concurrency: int
    claimer: Any
    housekeeping: Any
    hooks: tuple[Any, ...]
    maxlen: int | None
    block: float
    consumer: str | None
    result_ttl: Any = None

    @classmethod
    def parse(cls, name: str, raw: Any, where: str) -> QueueSpec:
        """Check the keys and plain values of one queue's dict; nothing is imported."""
        here = f"{where}[{name!r}]"
        raw = _check_mapping(raw, here)
        _check_keys(raw, _QUEUE_KEYS, here)
        if "JOB" not in raw:
            raise ConfigurationError(f"{here} needs 'JOB': the flowd.Job class of its messages")
        for key in ("STREAM", "GROUP", "CONSUMER"):
            value = raw.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigurationError(f"{here}[{key!r}] must be a non-empty str, not {value!r}")
        hooks = raw.get("HOOKS", ())
        if isinstance(hooks, str) or not isinstance(hooks, Iterable):
            raise ConfigurationError(f"{here}['HOOKS'] must be a list, not {hooks!r}")
        claimer = raw.get("CLAIMER", True)
        if claimer is not None and not isinstance(claimer, bool | Mapping | Claimer):
            raise ConfigurationError(
                f"{here}['CLAIMER'] must be a dict, a flowd.Claimer, True or None, not {claimer!r}"
            )
        if isinstance(claimer, Mapping):
            _check_keys(claimer, _CLAIMER_KEYS, f"{here}['CLAIMER']")
        housekeeping = raw.get("HOUSEKEEPING", True)
        if isinstance(housekeeping, Mapping):
            _check_keys(housekeeping, _HOUSEKEEPING_KEYS, f"{here}['HOUSEKEEPING']")
        return cls(
            name=name,
            where=here,
            stream=raw.get("STREAM") or name,
            group=raw.get("GROUP") or name,
            job=raw["JOB"],
            worker=raw.get("WORKER"),
            concurrency=raw.get("CONCURRENCY", 8),
            claimer=claimer,
            housekeeping=housekeeping,
            hooks=tuple(hooks),
            maxlen=raw.get("MAXLEN"),
            block=raw.get("BLOCK", 2.0),
            consumer=raw.get("CONSUMER"),
            result_ttl=raw.get("RESULT_TTL"),
        )

    def job_class(self) -> type[Job]:
        """The ``JOB`` class, imported."""
        job = _resolve(self.job, f"{self.where}['JOB']")
        if not isinstance(job, type) or not issubclass(job, Job):
            raise ConfigurationError(f"{self.where}['JOB'] must be a flowd.Job class, not {job!r}")
        return job

    def build_claimer(self, wrap: WorkerWrapper | None = None) -> Claimer | None:
        """The ``CLAIMER`` setting as a :class:`flowd.Claimer` (None when off)."""
        if self.claimer is None or self.claimer is False:
            return None
        if isinstance(self.claimer, Claimer):
            return self.claimer
        if self.claimer is True:
            return Claimer()
        kwargs = {_CLAIMER_KEYS[key]: value for key, value in self.claimer.items()}
        dlq_worker = kwargs.get("dlq_worker")
        if dlq_worker is not None:
            dlq_worker = _resolve(dlq_worker, f"{self.where}['CLAIMER']['DLQ_WORKER']")
            if not callable(dlq_worker):
                raise ConfigurationError(
                    f"{self.where}['CLAIMER']['DLQ_WORKER'] must be callable, not {dlq_worker!r}"
                )
            kwargs["dlq_worker"] = wrap(dlq_worker) if wrap is not None else dlq_worker
        try:
            return Claimer(**kwargs)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.where}['CLAIMER']: {exc}") from exc

    def _housekeeping(self) -> Housekeeping | bool:
        value = self.housekeeping
        if isinstance(value, Mapping):
            kwargs = {_HOUSEKEEPING_KEYS[key]: item for key, item in value.items()}
            return Housekeeping(**kwargs)
        if isinstance(value, bool | Housekeeping):
            return value
        raise ConfigurationError(
            f"{self.where}['HOUSEKEEPING'] must be True, False or a dict, not {value!r}"
        )

    def _hooks(self) -> list[Hooks]:
        hooks = []
        for index, item in enumerate(self.hooks):
            where = f"{self.where}['HOOKS'][{index}]"
            hook = _resolve(item, where)
            if isinstance(hook, type) and issubclass(hook, Hooks):
                hook = hook()
            if not isinstance(hook, Hooks):
                raise ConfigurationError(f"{where} must be a flowd.Hooks, not {hook!r}")
            hooks.append(hook)
        return hooks

    def build_queue(self, client: Any, wrap: WorkerWrapper | None = None) -> Queue[Any]:
        """A :class:`flowd.Queue` for these settings; ``wrap`` wraps its worker functions."""
        if self.worker is None:
            raise ConfigurationError(
                f"{self.where} has no 'WORKER': it can enqueue, but nothing can consume it"
            )
        worker = _resolve(self.worker, f"{self.where}['WORKER']")
        if not callable(worker):
            raise ConfigurationError(f"{self.where}['WORKER'] must be callable, not {worker!r}")
        try:
            return Queue(
                client,
                stream=self.stream,
                group=self.group,
                job=self.job_class(),
                worker=wrap(worker) if wrap is not None else worker,
                concurrency=self.concurrency,
                claimer=self.build_claimer(wrap),
                housekeeping=self._housekeeping(),
                hooks=self._hooks(),
                consumer=self.consumer,
                block=self.block,
                result_ttl=self.result_ttl,
            )
        except ConfigurationError as exc:
            if str(exc).startswith(self.where):
                raise
            raise ConfigurationError(f"{self.where}: {exc}") from exc

    def build_producer(self, client: Any) -> Producer:
        """A :class:`flowd.Producer` for this queue's stream."""
        try:
            return Producer(client, self.stream, maxlen=self.maxlen)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.where}: {exc}") from exc


class QueueRegistry:
    """The queues of one app's settings: one Redis client, and a cached Queue and Producer each.

    Thread-safe. The client and each queue's objects are built on first use;
    building a Queue imports its ``JOB``, ``WORKER`` and hooks.

    :param url: the Redis URL.
    :param queues: queue name -> settings dict (see the module docstring).
    :param where: how the settings are named in error messages, e.g. ``FLOWD['QUEUES']``.
    :param client_options: extra keyword arguments of ``redis.Redis.from_url``.
    :param wrap: wraps each worker and dead-letter worker (e.g. in an app context).
    :raises ConfigurationError: a key or a plain value is wrong.
    """

    def __init__(
        self,
        url: str,
        queues: Mapping[str, Any],
        *,
        where: str,
        client_options: Mapping[str, Any] | None = None,
        wrap: WorkerWrapper | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ConfigurationError(f"the Redis URL must be a non-empty str, not {url!r}")
        self.url = url
        self.client_options = dict(_check_mapping(client_options or {}, "the Redis client options"))
        queues = _check_mapping(queues, where)
        self.specs: dict[str, QueueSpec] = {
            name: QueueSpec.parse(name, raw, where) for name, raw in queues.items()
        }
        self.where = where
        self.wrap = wrap
        self._lock = threading.RLock()
        self._client: Any = None
        self._queues: dict[str, Queue[Any]] = {}
        self._producers: dict[str, Producer] = {}
        self._jobs: dict[str, type[Job]] = {}

    def __repr__(self) -> str:
        return f"<QueueRegistry {self.where} queues={sorted(self.specs)}>"

    def spec(self, name: str) -> QueueSpec:
        """The settings of queue ``name``."""
        try:
            return self.specs[name]
        except KeyError:
            raise ConfigurationError(
                f"no queue {name!r} in {self.where}; configured: {sorted(self.specs) or 'none'}"
            ) from None

    @property
    def client(self) -> Any:
        """The ``redis.Redis`` client of every queue (created on first use, not connected)."""
        with self._lock:
            if self._client is None:
                try:
                    self._client = redis.Redis.from_url(self.url, **self.client_options)
                except (TypeError, ValueError) as exc:
                    raise ConfigurationError(f"cannot build a Redis client: {exc}") from exc
            return self._client

    def queue(self, name: str) -> Queue[Any]:
        """The :class:`flowd.Queue` of ``name``; the same object on every call."""
        with self._lock:
            queue = self._queues.get(name)
            if queue is None:
                queue = self._queues[name] = self.spec(name).build_queue(self.client, self.wrap)
            return queue

    def producer(self, name: str) -> Producer:
        """The :class:`flowd.Producer` of ``name``; the same object on every call."""
        with self._lock:
            producer = self._producers.get(name)
            if producer is None:
                producer = self._producers[name] = self.spec(name).build_producer(self.client)
            return producer

    def job_class(self, name: str) -> type[Job]:
        """The imported ``JOB`` class of ``name``."""
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                job = self._jobs[name] = self.spec(name).job_class()
            return job

    def consumable(self) -> list[str]:
        """Names of the queues that have a ``WORKER``, in settings order."""
        return [name for name, spec in self.specs.items() if spec.worker is not None]

    def queue_for(self, job: Job, name: str | None) -> str:
        """Check that ``job`` belongs on queue ``name``; with None, find its queue by class.

        :raises EncodeError: ``job`` is not a Job, or not the queue's ``JOB``.
        :raises ConfigurationError: no queue (or several) has the job's class.
        """
        if not isinstance(job, Job):
            raise EncodeError(f"enqueue takes a flowd.Job instance, not {type(job).__name__}")
        if name is not None:
            expected = self.job_class(name)
            if not isinstance(job, expected):
                raise EncodeError(
                    f"queue {name!r} takes {expected.__name__} jobs, not {type(job).__name__}"
                )
            return name
        matches = [n for n in self.specs if self.job_class(n) is type(job)]
        if len(matches) != 1:
            found = "no queue" if not matches else f"several queues ({', '.join(matches)})"
            raise ConfigurationError(
                f"{found} in {self.where} take {type(job).__name__} jobs; pass queue=..."
            )
        return matches[0]

    def check(self) -> list[str]:
        """Import and build every queue without caching anything; the errors found."""
        errors: list[str] = []
        try:
            client = redis.Redis.from_url(self.url, **self.client_options)
        except (TypeError, ValueError) as exc:
            return [f"cannot build a Redis client: {exc}"]
        try:
            for spec in self.specs.values():
                try:
                    spec.build_producer(client)
                    if spec.worker is None:
                        spec.job_class()
                    else:
                        spec.build_queue(client)
                except ConfigurationError as exc:
                    errors.append(str(exc))
        finally:
            client.close()
        return errors
