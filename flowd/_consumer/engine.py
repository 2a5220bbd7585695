"""The engine: the one owner of a queue's run, from start to join, and of a drain.

How one message travels from XADD to XACK, module by module, in the order
the code takes:

1. ``flowd.producer`` -- ``Producer.enqueue`` encodes the job with the
   encoder ``flowd._codec.plan`` generates for its class (codecs from
   ``flowd._codec.codecs``) and XADDs the fields to the stream. A delayed job
   (``delay=``/``at=``) is written instead into the stream's scheduled set by
   a script of ``flowd._redis.scheduling``; the stream's scheduler loop
   (``flowd._consumer.scheduler``) XADDs it when Redis's clock says it is due, and
   from there on it travels like any other message.
2. ``flowd.queue`` -- ``Queue.run`` checks the server and creates the group
   (``flowd._redis.session``), then starts an :class:`Engine` with its settings.
3. ``flowd._consumer.engine`` (here) -- the engine builds the worker pool
   (``flowd._consumer.pool``) and, per stream, its parts (``flowd._consumer.streams``): an
   acker, a dispatcher, and a frozen ``flowd._consumer.context.StreamContext``; then
   each stream's loops, each a ``flowd._consumer.threads.LoopThread`` with a
   ``flowd._redis.session.Session`` of its own. ``flowd._lifecycle`` knows the
   engine, to stop it at interpreter exit and forget it after fork.
4. ``flowd._consumer.reader`` -- the reader waits for free permits (``flowd._consumer.permits``),
   reads with XREADGROUP (``xreadgroup``) as many as are free plus the
   read-ahead that recent job durations allow (``flowd._consumer.readahead``), takes
   one permit per entry it can start and calls its context's ``dispatch``.
5. ``flowd._consumer.dispatch`` -- the dispatcher decodes the fields into the Job
   (``flowd._codec.plan``), wraps it in a ``flowd.task.Task`` and submits it to the
   pool; read-ahead entries wait, leased, in the buffer kept with the
   permits (``flowd._consumer.permits``) until a worker is free.
6. ``flowd._consumer.pool`` -- a worker loop calls the application's worker with the
   task (``flowd.hooks`` around it; ``flowd._consumer.timelimit`` watches its time
   limit); when it returns, the loop hands the id back to the stream's
   dispatcher, which adds it to its acker, and gives the permit back.
7. ``flowd._consumer.acker`` -- the acker thread writes the finished ids in one
   pipelined XACK, with the per-minute counters of ``flowd._redis.throughput``.
   With ``result_ttl``, the worker encodes what the job returned
   (``flowd._codec.values``) into its record (``flowd._redis.records``), and
   the acker writes the records and their XACKs in one MULTI; ``flowd.results``
   reads them back, and where a job is (``flowd._redis.lookup``).

A failed job leaves its message pending, with its reason and traceback
(``flowd._codec.failure``): the claimer (``flowd._consumer.claim``) XAUTOCLAIMs it after
``min_idle_time`` and dispatches it again; past ``max_retries`` the
dispatcher queues it for the dead-letter path, which a worker runs with
``flowd._consumer.dead_letter_move``. ``Retry``, ``GiveUp`` and a claimer's backoff
are handled by ``flowd._consumer.retry``: a short retry stays pending until its
delay, a long one is acked and scheduled in one script. ``flowd._consumer.claim``'s
lease loop keeps running and read-ahead jobs from being claimed, and
``flowd._consumer.housekeeper`` trims the stream.

A drain is the same engine in "until the backlog is empty" mode: the same
reader, dispatcher, pool, claimer and acker, driven from the calling thread
until nothing is left (as rq's burst mode is its normal loop).
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import socket
import threading
import time

from .. import _lifecycle
from .._redis.records import alias_ttl_ms
from .._redis.session import COMMAND_TIMEOUT, Session
from .._redis.timeutil import remaining
from ..flow.pause import PauseWatch
from .claim import ClaimLoop, ClaimOutcome
from .context import StopSignal
from .pool import QueueStats, WorkerPool
from .readahead import hand_back_logged
from .reader import Reader
from .scheduler import move_due_before_drain
from .streams import BACKGROUND, RunSettings, StreamParts, add_loops, ready_to_drain, run_parts

__all__ = ["Engine", "RunSettings", "default_consumer_name"]

logger = logging.getLogger(__name__)

#: How often stop() repeats CLIENT UNBLOCK while the reader has not returned yet.
_UNBLOCK_EVERY = 0.05


def bounded(deadline: float | None) -> float:
    """A socket timeout for one step of a stop: what is left of its deadline, at most
    flowd's own command timeout (and enough for one loopback round trip)."""
    left = remaining(deadline)
    return COMMAND_TIMEOUT if left is None else max(0.05, min(left, COMMAND_TIMEOUT))


#: How often a drain waiting for permits looks at its stop event.
_DRAIN_POLL = 0.25


def default_consumer_name() -> str:
    """A consumer name unique to this process: ``host-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class State(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Engine:
    """One run (or one drain) of a queue: builds the threads, holds the stop signal and
    its deadline, and is the only thing that changes them.

    ``start``/``stop``/``join`` are a run; ``drain`` is the same parts driven
    from the calling thread until the backlog is empty.
    """

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.stop_signal = StopSignal()
        #: Lease renewal outlives the stop signal: running jobs stay leased until they finish.
        self.lease_stop = threading.Event()
        self.pool = WorkerPool(
            settings.worker,
            settings.hooks,
            settings.concurrency,
            settings.name,
            settings.time_limit,
            settings.limit_reporter(),
        )
        #: Each queue stream's parts and its priority bands' (streams.run_parts).
        self.streams: list[StreamParts] = run_parts(settings, self.pool, self.stop_signal)
        #: The pause state of the queue (its base stream), shared by every stream's loops.
        self.pause = PauseWatch(settings.client, settings.name, settings.group, settings.consumer)
        self.state = State.RUNNING
        self._state_lock = threading.Lock()
        self._stopper: threading.Thread | None = None
        self._done = threading.Event()
        self._clean = False

    def _fatal(self, exc: BaseException) -> None:
        """A loop met an error it cannot go on after: the run ends (join() winds it down)."""
        self.stop_signal.set()

    def _loops(self, *roles: str) -> list[threading.Thread]:
        return [t for part in self.streams for role, t in part.loops.items() if role in roles]

    # -- run

    def start(self) -> None:
        """Start every stream's acker, then its loops."""
        for part in self.streams:
            add_loops(part, self.settings, self.lease_stop, self._fatal, pause=self.pause)
            if self.settings.claimer is not None:
                # On a resume the claimer sweeps at once: what was handed back runs now.
                self.pause.on_resume(part.dispatcher.retry.timer.wake)
        for part in self.streams:
            part.acker.start()
        for part in self.streams:
            for thread in part.loops.values():
                thread.start()
        _lifecycle.started(self, self.settings.stop_timeout)

    def forget_after_fork(self) -> str:
        """In a forked child: this run's threads are the parent's; mark it stopped here."""
        self._state_lock = threading.Lock()  # may have been held by a parent thread at fork
        self.state = State.STOPPED
        self._stopper = threading.current_thread()
        self._clean = True
        self._done = threading.Event()
        self._done.set()
        self.stop_signal.set()
        self.lease_stop.set()
        self.settings.after_fork()
        return f"{self.settings.name}/{self.settings.group}"

    @property
    def is_running(self) -> bool:
        return self.state is State.RUNNING and not self.stop_signal.is_set()

    def stats(self) -> QueueStats:
        return self.pool.stats()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the run has stopped; a run ended by a fatal error is wound down here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.stop_signal.wait(timeout):
            return False
        if self.state is State.RUNNING:
            return self.stop(remaining(deadline)) or not self.is_running
        return self._done.wait(remaining(deadline))

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the run (see QueueHandle.stop); safe from any thread, more than once."""
        current = threading.current_thread()
        if self.pool.is_worker_thread(current):
            self._stop_in_background(timeout)
            return False
        with self._state_lock:
            first = self._stopper is None
            if first:
                self._stopper = current
                self.state = State.STOPPING
        if not first:
            self.stop_signal.set()
            if self._done.is_set():
                return self._clean
            if self._stopper is current:
                return False  # re-entered (a signal handler during stop): the outer call finishes
            return self._done.wait(timeout) and self._clean
        return self._perform_stop(timeout)

    def _perform_stop(self, timeout: float | None) -> bool:
        try:
            self._clean = self._stop(timeout)
        except BaseException:
            self.abort()
            raise
        finally:
            self.state = State.STOPPED
            self._done.set()
            _lifecycle.stopped(self)
        return self._clean

    def _stop_in_background(self, timeout: float | None) -> None:
        self.stop_signal.set()
        with self._state_lock:
            if self._stopper is not None:
                return
            self.state = State.STOPPING
            self._stopper = threading.Thread(
                name=f"flowd-stopper-{self.settings.name}",
                target=self._perform_stop,
                args=(timeout,),
            )
            self._stopper.start()

    def _stop(self, timeout: float | None) -> bool:
        s = self.settings
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self.stop_signal.begin(deadline)
        self.pool.permits.wake()
        for part in self.streams:
            self._interrupt_reader(part, deadline)
        for thread in self._loops(*BACKGROUND):
            thread.join(remaining(deadline))
        if s.claimer is not None:  # after the claimer's end: it would take them itself
            self._hand_back(deadline)
        self._hand_back_waiting(deadline)
        finished = self.pool.permits.wait_all_free(remaining(deadline))
        self.wind_down(deadline, finished=finished, ack_deadline=deadline)
        alive = [t.name for part in self.streams for t in part.threads() if t.is_alive()]
        unwritten = sum(part.acker.unwritten for part in self.streams)
        clean = finished and not alive and unwritten == 0
        stats = self.pool.stats()
        if not clean:
            logger.warning(
                "queue %s/%s did not stop cleanly within %ss: still running: %s; live "
                "threads: %s; unfinished messages stay pending",
                s.name,
                s.group,
                timeout,
                self.pool.running_report() or "none",
                ", ".join(alive) or "none",
            )
        logger.info(
            "queue %s/%s stopped (consumer %s): processed=%d failed=%d retried=%d "
            "dead_lettered=%d deleted=%d",
            s.name,
            s.group,
            s.consumer,
            stats.processed,
            stats.failed,
            stats.retried,
            stats.dead_lettered,
            stats.deleted,
        )
        return clean

    def _hand_back(self, deadline: float | None) -> None:
        """Make the messages read ahead and not started claimable by any consumer now.

        Without a claimer nothing would take them back, so they run instead (the
        workers empty the buffer before wait_all_free() sees every permit free).
        """
        items = self.pool.permits.take_buffer()
        for part in self.streams:
            part.dispatcher.let_go_items(items)  # their key leases (per-key concurrency)
        self._give_back(items, deadline, "read ahead")

    def _hand_back_waiting(self, deadline: float | None) -> None:
        """Hand back the messages waiting for their concurrency key (after the keys loop
        ended): never started here, they are any consumer's to take."""
        for part in self.streams:
            if part.dispatcher.keys is not None:
                items = part.dispatcher.keys.take_parked()
                self._give_back(items, deadline, "waiting for their concurrency key")

    def _give_back(self, items: list[object], deadline: float | None, what: str) -> None:
        """XCLAIM the items' messages idle long ago (readahead.hand_back), per stream."""
        if not items:
            return
        for part in self.streams:
            ctx, reader_session = part.ctx, part.reader_session
            address = None if reader_session is None else reader_session.address
            session = Session(
                self.settings.client, ctx.stream, address=address, timeout=bounded(deadline)
            )
            try:
                hand_back_logged(session, ctx.stream, ctx.group, ctx.consumer, items, what)
            finally:
                session.close()

    def _interrupt_reader(self, part: StreamParts, deadline: float | None) -> None:
        """End a blocked XREADGROUP now instead of after its block time."""
        reader, reader_session = part.loops.get("reader"), part.reader_session
        if reader is None or reader_session is None:
            return

        # No client retries (a stop must not stall), and the reader's own node on a cluster.
        # A failed call drops the session: the next one waits only what is left.
        def new_session() -> Session:
            return Session(
                self.settings.client,
                part.ctx.stream,
                address=reader_session.address,
                timeout=bounded(deadline),
            )

        session = new_session()
        try:
            while reader.is_alive():
                client_id = reader_session.client_id
                if client_id is not None:
                    try:
                        session.call("CLIENT", "UNBLOCK", client_id)
                    except Exception as exc:
                        logger.debug(
                            "CLIENT UNBLOCK failed (%s); the read ends at its block time", exc
                        )
                        session = new_session()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                reader.join(min(_UNBLOCK_EVERY, remaining(deadline) or _UNBLOCK_EVERY))
        finally:
            session.close()

    # -- drain

    def drain(self, deadline: float | None, stop: threading.Event) -> bool:
        """Run the backlog from the calling thread; True if every job finished in time.

        Per stream: due scheduled jobs and schedule ticks into the stream, then
        this consumer's own pending entries, then new ones until
        none are left, then (with a claimer) one sweep of idle entries.
        A pause that begins meanwhile ends the reading, as a stop does.
        """
        claimer = self.settings.claimer
        for part in self.streams:
            add_loops(part, self.settings, self.lease_stop, self._fatal, lease_only=True)
            part.acker.start()
            for thread in part.loops.values():
                thread.start()
        s = self.settings
        sessions = [Session(s.client, part.ctx.stream) for part in self.streams]
        gates = [
            s.rate_gate(part.ctx.stream, session)
            for part, session in zip(self.streams, sessions, strict=True)
        ]
        finished = False
        try:
            for part, session, gate in zip(self.streams, sessions, gates, strict=True):
                ctx = part.ctx.for_loop(session, rate=gate)
                move_due_before_drain(
                    session, ctx.stream, s.schedules, s.streams, alias_ttl_ms(s.result_ttl_ms)
                )
                if not ready_to_drain(session, part, s.group):
                    continue
                reader = Reader(ctx, self.settings.block)
                while (free := self._drain_permits(deadline, stop)) and reader.read_backlog(free):
                    pass
                if claimer is not None:
                    sweep = ClaimLoop(ctx, claimer.min_idle_time, claimer.interval, claimer.batch)
                    while self._drain_permits(deadline, stop):
                        if sweep.claim_batch() is ClaimOutcome.DONE:
                            break
            finished = self._wait_done(deadline, stop)
        finally:
            self.stop_signal.begin(deadline)
            ack_deadline = deadline if deadline is not None else time.monotonic() + 30
            self.wind_down(deadline, finished=finished, ack_deadline=ack_deadline)
            for session in sessions:
                session.close()
            for gate in gates:
                if gate is not None:
                    gate.close()
            self.state = State.STOPPED
            self._done.set()
        return finished

    def _wait_done(self, deadline: float | None, stop: threading.Event) -> bool:
        """Wait until every job is done, those waiting for their concurrency key too
        (a stop leaves those pending); False on timeout."""
        gates = [part.dispatcher.keys for part in self.streams if part.dispatcher.keys]
        permits = self.pool.permits
        while True:
            left = remaining(deadline)
            if not any(gate.parked for gate in gates):
                return permits.wait_all_free(left)
            if left == 0.0 or stop.is_set():
                return False
            permits.wait_all_free(_DRAIN_POLL if left is None else min(left, _DRAIN_POLL))

    def _drain_permits(self, deadline: float | None, stop: threading.Event) -> int:
        """Wait for a free permit; 0 once the drain must stop reading (or is paused)."""
        permits = self.pool.permits
        while not stop.is_set() and not self.stop_signal.is_set() and not self.pause.paused():
            left = remaining(deadline)
            if left == 0.0:
                return 0
            free = permits.wait_free(_DRAIN_POLL if left is None else min(left, _DRAIN_POLL))
            if free:
                return free
        return 0

    # -- the end of a run or a drain

    def wind_down(
        self, deadline: float | None, *, finished: bool, ack_deadline: float | None
    ) -> None:
        """After the jobs: end the leases, flush and close every stream's acker (retrying
        until ``ack_deadline``), and end the worker loops (waiting if ``finished``)."""
        self.lease_stop.set()
        for lease in self._loops("lease", "keys"):
            lease.join(remaining(deadline))
        for part in self.streams:
            part.acker.close(ack_deadline)
        for part in self.streams:
            part.acker.thread.join(remaining(deadline))
        self.pool.shutdown(wait=finished)
        for part in self.streams:
            part.dispatcher.close()
        self.pause.close()

    def abort(self) -> None:
        """End every loop at once (a stop that failed): nothing may keep running."""
        self.stop_signal.set()
        self.lease_stop.set()
        for part in self.streams:
            part.acker.close(time.monotonic())
        self.pool.shutdown(wait=False)
        self.pause.close()
