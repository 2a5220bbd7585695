"""One flowd Session per worker thread, for code that worker threads call concurrently."""

from __future__ import annotations

import threading
from typing import Any

from .session import Session


class ThreadSessions:
    """Hands each calling thread a Session of its own on ``stream``; closes them all at once.

    A Session is one connection, not safe to share between threads; the
    dead-letter mover and retry control are called from every worker thread.
    """

    def __init__(self, client: Any, stream: str) -> None:
        self._client = client
        self._stream = stream
        self._local = threading.local()
        self._sessions: list[Session] = []
        self._lock = threading.Lock()

    def get(self) -> Session:
        """This thread's Session (made on first use)."""
        session: Session | None = getattr(self._local, "session", None)
        if session is None:
            session = Session(self._client, self._stream)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        """Close every thread's Session; a thread that asks again gets a new one."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        self._local = threading.local()
        for session in sessions:
            session.close()
