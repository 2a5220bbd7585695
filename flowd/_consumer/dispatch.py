"""The dispatcher of one stream: from a stream entry to a task for the worker pool.

The reader and the claimer call it (as their context's ``dispatch``) with
each entry they read, holding one permit for it. It decodes the entry into
the queue's Job and submits the task to the pool, or routes the entry:
deleted from the stream -> acked and counted; undecodable, or claimed past
``max_retries`` -> the dead-letter path (on a worker thread). It is also the
pool's route back for this stream: acks go to its acker, failures and dead
letters to its dead-letter mover, retry decisions to its
:class:`~flowd._consumer.retry.RetryControl`.

An entry a retry re-added to the stream carries ``flowd:runs`` (the runs done
before): its deliveries count them too, so ``max_retries`` keeps its meaning.
One re-added by another group's retry (``flowd:group`` beside ``flowd:retry-of``)
is acked unrun: this group has run that job already.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from .._codec.plan import decode_job
from .._codec.values import encode_value
from .._redis.fields import other_group, prior_runs, traceparent_of
from .._redis.records import SuccessRecords
from .._redis.replies import Fields
from ..errors import DecodeError
from ..flow import expiry
from ..flow.keygate import Asking, KeyGate
from ..flow.keylimit import KeyFn, Name, bad_key
from ..hooks import call_hooks
from ..task import Task
from .acker import Acker
from .dead_letter_move import DeadLetterMover, reason_of
from .pool import DeadLetterWork, WorkerPool
from .readahead import hand_back, ids_of
from .retry import RetryControl
from .runs import RunRecords
from .scheduler import UniqueRelease

logger = logging.getLogger(__name__)


class Dispatcher:
    """Dispatch for one stream of a run, and that stream's route for outcomes."""

    def __init__(
        self,
        pool: WorkerPool,
        stream: str,
        group: str,
        job: type[Any],
        acker: Acker,
        mover: DeadLetterMover | None,
        max_retries: int | None,
        retry: RetryControl,
        unique: UniqueRelease,
        runs: RunRecords,
        consumer: str = "",
        dead_letter_expired: bool = True,
        keys: KeyGate | None = None,
        concurrency_key: KeyFn | None = None,
    ) -> None:
        self.pool = pool
        self.stream = stream
        self.group = group
        self.job = job
        self.acker = acker
        self.mover = mover
        self._retry = retry
        self._unique = unique
        self._runs = runs
        self._group_bytes = group.encode("utf-8")
        self.consumer = consumer
        self.dead_letter_expired = dead_letter_expired
        #: Per-key concurrency (flowd.flow.keygate), with the queue's key function.
        self.keys = keys
        self.concurrency_key = concurrency_key
        self._records = SuccessRecords(consumer, group)
        #: The pool calls it for each success when the queue keeps results.
        self.keep: Callable[[Task[Any], object, float], str] | None = (
            None if acker.result_ttl_ms is None else self._result_record
        )
        #: Most deliveries a claimed entry may have and still run (None: no limit).
        self.limit = None if max_retries is None else max_retries + 1

    def __call__(
        self, msg_id: str, fields: Fields | None, deliveries: int, *, claimed: bool = False
    ) -> None:
        """Queue one entry to run, or route it (the caller holds its permit; a deleted
        entry, ``fields`` None, needs none: it is only acked)."""
        item = self.prepare(msg_id, fields, deliveries, claimed=claimed)
        if item is not None and self.keys is not None:
            ready = self.gate([item])
            item = ready[0] if ready else None  # None: it waits for its key
        if item is not None:
            self.pool.submit(item)
        elif fields is not None:
            self.pool.permits.release()

    def prepare(
        self, msg_id: str, fields: Fields | None, deliveries: int, *, claimed: bool = False
    ) -> Task[Any] | DeadLetterWork | None:
        """The work item for one entry (a Task to run, or dead-letter work), or None when
        nothing is to run (deleted, or undecodable without a claimer); no permit moves."""
        if fields is None:
            self._ack_deleted(msg_id)
            return None
        if other_group(fields, self._group_bytes):
            # Re-added by another group's retry: this group has run that job already.
            self.acker.add(msg_id)
            return None
        deliveries += prior_runs(fields)
        try:
            job = decode_job(self.job, fields, msg_id)
        except DecodeError as exc:
            return self._dead_letter(
                Task(msg_id, None, deliveries, self.stream, fields, exc.reason_text())
            )
        task = Task(msg_id, job, deliveries, self.stream, fields)
        if claimed:
            if self.limit is not None and deliveries > self.limit:
                # Exhausted: the mover reads its last failure as the reason.
                return self._dead_letter(task)
            on_claim = self.pool.hooks.on_claim
            if on_claim:
                call_hooks(on_claim, task)
        return task

    def gate(self, items: list[Any]) -> list[Any]:
        """Of prepared items, those that may start now: tasks whose key got its lease (one
        script call for all), and the others (dead-letter work). Tasks whose key is busy
        wait in the key gate, holding no permit; a key function that raises or gives no
        key sends its task to the dead-letter path."""
        keys = self.keys
        assert keys is not None
        ready, tasks, ids, names = self._keyed(items)
        if tasks:
            ready += self._granted(keys.admit(tasks, ids, names))
        return ready

    def gate_begin(self, items: list[Any]) -> tuple[list[Any], Asking | None]:
        """:meth:`gate` in two steps, for the reader to send the lease call with its next
        read: (the items that may start now, the tasks asking for their lease); then
        :meth:`gate_end` with the call's reply."""
        keys = self.keys
        assert keys is not None
        ready, tasks, ids, names = self._keyed(items)
        return ready, keys.begin(tasks, ids, names) if tasks else None

    def gate_end(self, asking: Asking, reply: Any) -> list[Any]:
        """The tasks of ``asking`` that got their lease (see :meth:`gate_begin`)."""
        assert self.keys is not None
        return self._granted(self.keys.end(asking, reply))

    def _granted(self, admitted: tuple[list[Any], list[Any]]) -> list[Any]:
        granted, overflow = admitted
        if overflow:
            self._hand_back_waiting(overflow)
        return granted

    def _keyed(self, items: list[Any]) -> tuple[list[Any], list[Any], list[str], list[Name]]:
        """Split prepared items into (items needing no key, tasks, their ids, their keys'
        names); a task whose key function fails goes to the first, as dead-letter work."""
        key_of = self.concurrency_key
        assert self.keys is not None and key_of is not None
        leases = self.keys.leases
        prefix, name = leases.prefix, leases.name
        ready: list[Any] = []
        tasks: list[Any] = []
        ids: list[str] = []
        names: list[Name] = []
        for item in items:
            if type(item) is not Task:
                ready.append(item)
                continue
            try:
                value = key_of(item.job)
            except Exception as exc:
                reason = f"concurrency_key raised {reason_of(exc)}"
            else:
                # The common kinds first, without a call.
                if type(value) is int:
                    key: Name | None = prefix + str(value)
                elif isinstance(value, str):
                    key = prefix + value
                else:
                    key = name(value)
                if key is not None:
                    tasks.append(item)
                    ids.append(item.id)
                    names.append(key)
                    continue
                reason = bad_key(value)
            dead = self._dead_letter(dataclasses.replace(item, error=reason))
            if dead is not None:
                ready.append(dead)
        return ready, tasks, ids, names

    def _hand_back_waiting(self, items: list[Any]) -> None:
        """More entries wait for their keys than the gate keeps: any consumer may take them."""
        keys = self.keys
        assert keys is not None
        try:
            handed = hand_back(keys.session(), self.stream, self.group, self.consumer, items)
        except Exception as exc:
            logger.warning(
                "could not hand back %d messages waiting for their concurrency key on %s/%s "
                "(%s); they stay pending and are claimed after min_idle_time",
                len(items),
                self.stream,
                self.group,
                exc,
            )
            return
        logger.debug(
            "handed back %d messages waiting for their concurrency key on %s/%s (%d wait here)",
            handed,
            self.stream,
            self.group,
            keys.parked,
        )

    def let_go(self, task: Task[Any]) -> None:
        """``task`` ended without a success, or will not start here: end its key's lease."""
        if self.keys is not None:
            self.keys.let_go(task.id)

    def let_go_items(self, items: list[Any]) -> None:
        """Buffered items handed back, never started: end their keys' leases."""
        keys = self.keys
        if keys is not None:
            for item in items:
                task = getattr(item, "task", item)
                if task.stream == self.stream:
                    keys.let_go(task.id)

    def _dead_letter(self, task: Task[Any]) -> DeadLetterWork | None:
        if self.mover is None:
            logger.error(
                "message %s on %s/%s cannot be processed (%s); no claimer is "
                "configured, so it stays pending",
                task.id,
                self.stream,
                self.group,
                task.error,
            )
            return None
        return DeadLetterWork(task)

    def _ack_deleted(self, msg_id: str) -> None:
        """A pending entry deleted from the stream: ack it so it leaves the PEL, count it."""
        logger.info(
            "message %s on %s/%s was deleted from the stream while pending; acking it",
            msg_id,
            self.stream,
            self.group,
        )
        self.acker.add(msg_id, True)
        self.pool.count_deleted()

    def group_lost(self) -> None:
        """The group vanished while running and was just recreated: say that data was lost."""
        logger.error(
            "consumer group %s of stream %s vanished while the queue was running: the stream "
            "was evicted (maxmemory-policy), flushed or deleted, or the group destroyed; the "
            "jobs and pending entries it held are lost. The group was recreated",
            self.group,
            self.stream,
        )
        self.pool.count_group_lost()

    def held(self) -> set[str]:
        """Ids this process holds: running now, or finished with the XACK not yet written."""
        # Running first: a job that finishes is added to the acker before it leaves running.
        held = (
            self.pool.running_ids(self.stream)
            | self.acker.unwritten_ids()
            | set(ids_of(self.pool.permits.buffered_items(), self.stream))
        )
        if self.keys is not None:
            held.update(self.keys.parked_ids())  # waiting for their key, leased too
        return held

    def running_since(self, cutoff: float) -> list[str]:
        return self.pool.running_since(self.stream, cutoff)

    def close(self) -> None:
        """Close what the worker threads opened for this stream (the mover's sessions)."""
        if self.mover is not None:
            self.mover.close()
        if self.keys is not None:
            self.keys.close()
        self._retry.close()
        self._runs.close()

    # -- the pool's route back for this stream

    def _result_record(self, task: Task[Any], value: object, started_at: float) -> str:
        """A success's record (flowd._redis.records); raises EncodeError for a value that
        has no JSON form, which fails the run."""
        return self._records.record(
            encode_value(value),
            task.deliveries,
            int(started_at * 1000),
            int(time.time() * 1000),
            traceparent_of(task.fields),
        )

    def ack(self, task: Task[Any], retried: bool, record: str | None = None) -> None:
        self.acker.add(task.id, retried, record)
        if self.keys is not None:
            self.keys.finished(task.id)  # its XACK ends its key's lease
        if UniqueRelease.holds_key(task.fields):
            self._unique.release(task)

    def record_start(self, task: Task[Any]) -> bool:
        started = self._runs.started(task)
        if not started:
            self.let_go(task)
        return started

    def record_failure(self, msg_id: str, exc: BaseException, traceback: str) -> None:
        if self.mover is not None:
            self.mover.record_failure(msg_id, exc, traceback)

    @property
    def retry(self) -> RetryControl:
        return self._retry

    def move_dead(self, task: Task[Any]) -> Task[Any] | None:
        assert self.mover is not None  # only queued for the mover when there is one
        return self.mover.handle(task)

    def _expired_record(self, task: Task[Any]) -> str:
        """The record of an expired job acked without a dead-letter move (no claimer)."""
        record = {
            "status": "failed",
            "error": task.error,
            "deliveries": task.deliveries,
            "consumer": self.consumer,
            "group": self.group,
            "finished": int(time.time() * 1000),
        }
        traceparent = traceparent_of(task.fields)
        if traceparent is not None:
            record["traceparent"] = traceparent
        return json.dumps(record, ensure_ascii=False)

    def expire(self, task: Task[Any]) -> Task[Any] | None:
        """A job not to run (``task.error``: "expired", or an unreadable deadline):
        dead-letter it (the dead task back), or ack it. On a queue without a claimer
        (no dead-letter path) an expired job is acked and an unreadable one stays pending."""
        expired = task.error == expiry.EXPIRED
        if not expired or (self.dead_letter_expired and self.mover is not None):
            if self.mover is not None:
                return self.mover.handle(task)
            self._dead_letter(task)  # logs that it stays pending
            return None
        if self.mover is not None:
            # Acked with its record (failed, "expired"), so Results says what happened.
            acked = self.mover.handle(task, dead_letter=False) is not None
        else:
            record = None if self.acker.result_ttl_ms is None else self._expired_record(task)
            self.acker.add(task.id, task.deliveries > 1, record)
            acked = True
        if acked:
            logger.log(
                logging.WARNING if self.dead_letter_expired else logging.INFO,
                "job %s on %s/%s expired before it started; acked without running it (%s)",
                task.id,
                self.stream,
                self.group,
                "the queue has no claimer, so no dead-letter path"
                if self.dead_letter_expired
                else "dead_letter_expired=False",
            )
        if UniqueRelease.holds_key(task.fields):
            self._unique.release(task)
        return None
