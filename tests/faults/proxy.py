"""A loopback TCP proxy that a test controls: drop, reset, stall, refuse, cut mid-command.

The proxy listens on ``127.0.0.1:<free port>`` and forwards every connection
to one backend on the loopback interface. Each connection (a :class:`Link`)
has two pump threads, one per direction. The test can:

- ``drop()``: close every current connection on both sides (FIN);
- ``reset()``: abort every current connection on both sides (RST, SO_LINGER 0);
- ``stall(seconds)`` / ``unstall()``: stop forwarding bytes in both directions
  without closing anything, so clients run into their socket timeouts. Bytes
  read while stalled are delivered after the stall, like a network that
  heals: a command a client gave up on may still run late on the server;
- ``refuse(True)``: abort new connections as soon as they are accepted;
- ``cut_when(match, mode=...)``: reset the connection on which the client's
  bytes match, either before forwarding them (``mode="command"``: the command
  is lost) or after forwarding them and before the server's reply gets back
  (``mode="reply"``: the command ran, its reply is lost). A "reply" cut resets
  the connection as soon as the server's next bytes arrive (they are dropped):
  for one command that is its reply; in a pipeline it may be the reply to an
  earlier command, and then later commands still in flight are lost as well.

Threads are named ``proxy-...`` and are daemons; ``close()`` ends them all.
Only loopback addresses are accepted, and the number of live connections is
bounded (beyond it new connections are refused).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CutMode", "CutRule", "Link", "Proxy"]

CutMode = Literal["command", "reply"]

#: Seconds a "reply" cut waits, once armed, before it resets the connection.
_REPLY_CUT_GRACE = 0.2
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_POLL = 0.05  # how often a pump looks at its link's state while idle or stalled
_TAIL = 256  # bytes of a connection's earlier data kept to match across reads


@dataclass
class CutRule:
    """Reset a connection when the client's bytes match.

    ``match`` is either a bytes pattern (each occurrence in the client-to-server
    data counts once, even across reads) or a predicate called with each new
    read preceded by up to 256 earlier bytes of the same connection (a true
    result counts as one occurrence). The rule lets ``skip`` occurrences pass,
    then cuts the next ``times`` ones. Occurrences are counted over all
    connections, in the order the pumps see them.
    """

    match: bytes | Callable[[bytes], bool]
    mode: CutMode
    times: int = 1
    skip: int = 0
    seen: int = 0
    fired: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.fired >= self.times

    def occurrences(self, tail: bytes, chunk: bytes) -> int:
        window = tail + chunk
        if callable(self.match):
            return 1 if self.match(window) else 0
        count, start = 0, 0
        while (at := window.find(self.match, start)) >= 0:
            if at + len(self.match) > len(tail):  # ends in new data: not counted before
                count += 1
            start = at + 1
        return count


def _abort(sock: socket.socket) -> None:
    """Close a socket with RST (SO_LINGER 0), not FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class Link:
    """One proxied connection: client socket, server socket, two pump threads."""

    def __init__(self, proxy: Proxy, number: int, client: socket.socket, server: socket.socket):
        self.proxy = proxy
        self.number = number
        self.client = client
        self.server = server
        self.closed = False
        self.how = ""
        self._lock = threading.Lock()
        self._live_pumps = 2
        self._tail = b""
        #: Set (monotonic time) once a "reply" cut forwarded its command: the next
        #: bytes from the server are dropped and the connection is reset.
        self.reply_cut_since: float | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        name = f"proxy-{proxy.port}-{number}"
        self.threads = [
            threading.Thread(
                name=f"{name}-up", target=self._pump, args=(client, server, True), daemon=True
            ),
            threading.Thread(
                name=f"{name}-down", target=self._pump, args=(server, client, False), daemon=True
            ),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def kill(self, how: str = "reset", *, wait: bool = True) -> None:
        """Close both sides: ``"reset"`` (RST) or ``"drop"`` (FIN); idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.how = how
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                if how == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)  # wakes the pumps; sends nothing
                else:
                    sock.shutdown(socket.SHUT_RDWR)  # FIN now
        # The pumps close the sockets once both have left (no fd is closed under them).
        if wait and threading.current_thread() not in self.threads:
            for thread in self.threads:
                thread.join(2.0)

    def _pump_left(self) -> None:
        with self._lock:
            self._live_pumps -= 1
            last = self._live_pumps == 0
            if not self.closed:
                self.closed = True
                self.how = self.how or "eof"
        if not last:
            # Wake the other pump (the peer of a closed side may never send again).
            for sock in (self.client, self.server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)
            return
        if self.how == "reset":
            _abort(self.client)
            _abort(self.server)
        else:
            for sock in (self.client, self.server):
                with contextlib.suppress(OSError):
                    sock.close()
        self.proxy._forget(self)

    def _wait_flowing(self) -> bool:
        """Wait while the proxy is stalled; False if the link closed meanwhile."""
        flowing = self.proxy._flowing
        while not flowing.wait(_POLL):
            if self.closed or self.proxy._closed:
                return False
        return not self.closed

    def _pump(self, source: socket.socket, target: socket.socket, upstream: bool) -> None:
        try:
            while not self.closed:
                readable, _, _ = select.select([source], [], [], _POLL)
                if not readable:
                    if not upstream and self._reply_cut_overdue():
                        self.proxy._record_cut(self, "reply (no reply within 2s)")
                        self.kill("reset")
                    continue
                try:
                    chunk = source.recv(self.proxy.chunk)
                except OSError:
                    chunk = b""
                if not chunk or self.closed:
                    break
                if not self._wait_flowing():
                    break
                if upstream:
                    if not self._forward_up(chunk, target):
                        break
                elif self.reply_cut_since is not None:
                    self.proxy._record_cut(
                        self, f"reply ({len(chunk)} reply bytes dropped: {chunk[:24]!r})"
                    )
                    # In a pipeline these may be earlier commands' replies: give the server
                    # time to read the armed command from its socket before the reset
                    # discards what it has not read (it ran, as a "reply" cut promises).
                    time.sleep(
                        max(0.0, _REPLY_CUT_GRACE - (time.monotonic() - self.reply_cut_since))
                    )
                    self.kill("reset")
                    break
                else:
                    target.sendall(chunk)
                    self.bytes_down += len(chunk)
        except OSError:
            pass
        finally:
            self._pump_left()

    def _reply_cut_overdue(self) -> bool:
        since = self.reply_cut_since
        return since is not None and time.monotonic() - since > 2.0

    def _forward_up(self, chunk: bytes, target: socket.socket) -> bool:
        """Forward client bytes, unless a cut rule fires; False once the link is cut."""
        tail, self._tail = self._tail, (self._tail + chunk)[-_TAIL:]
        rule = self.proxy._match(tail, chunk)
        if rule is not None and rule.mode == "command":
            self.proxy._record_cut(self, "command", rule, tail + chunk)
            self.kill("reset")
            return False
        if rule is not None:  # "reply": the command goes through, its reply does not
            self.proxy._record_cut(self, "reply armed", rule, tail + chunk)
            self.reply_cut_since = time.monotonic()
        target.sendall(chunk)
        self.bytes_up += len(chunk)
        return True


def accepted(listener: socket.socket, closed: Callable[[], bool]) -> Iterator[socket.socket]:
    """The connections ``listener`` accepts (blocking, no timeout) until ``closed()`` or the
    listener is closed; ``listener`` has a timeout so that ``closed`` is looked at often."""
    while not closed():
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        client.settimeout(None)
        yield client


class Proxy:
    """A loopback TCP proxy to ``backend``; see the module docstring for the controls.

    :param backend: ``(host, port)`` of the real server, on the loopback interface.
    :param chunk: most bytes a pump reads (and forwards) at once; a small value
        splits a large pipeline over many reads, so a cut can land mid-pipeline.
    :param max_links: most live connections; beyond it new ones are refused.
    """

    def __init__(
        self, backend: tuple[str, int], *, chunk: int = 65536, max_links: int = 256
    ) -> None:
        host, port = backend
        if host not in _LOOPBACK:
            raise ValueError(f"the proxy only forwards to loopback, not {host!r}")
        self.backend = (host, int(port))
        self.chunk = chunk
        self.max_links = max_links
        self._lock = threading.Lock()
        self._links: set[Link] = set()
        self._rules: list[CutRule] = []
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._closed = False
        self._count = 0
        self._timers: list[threading.Timer] = []
        #: What happened, for the test's report: counters and one line per cut.
        self.accepted = 0
        self.refused = 0
        self.drops = 0
        self.resets = 0
        self.stalls = 0
        self.cuts: list[str] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            name=f"proxy-accept-{self.port}", target=self._accept_loop, daemon=True
        )
        self._acceptor.start()

    def __repr__(self) -> str:
        return f"<Proxy 127.0.0.1:{self.port} -> {self.backend[0]}:{self.backend[1]}>"

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- controls

    @property
    def links(self) -> list[Link]:
        with self._lock:
            return list(self._links)

    def drop(self) -> int:
        """Close every current connection on both sides (FIN); returns how many."""
        killed = self._kill_all("drop")
        self.drops += 1
        return killed

    def reset(self) -> int:
        """Abort every current connection on both sides (RST); returns how many."""
        killed = self._kill_all("reset")
        self.resets += 1
        return killed

    def _kill_all(self, how: str) -> int:
        links = self.links
        for link in links:
            link.kill(how)
        return len(links)

    def stall(self, seconds: float | None = None) -> None:
        """Stop forwarding in both directions; resume after ``seconds`` if given."""
        if seconds is not None and not 0 < seconds <= 60:
            raise ValueError("a stall lasts between 0 and 60 seconds")
        self._flowing.clear()
        self.stalls += 1
        if seconds is not None:
            timer = threading.Timer(seconds, self.unstall)
            timer.name = f"proxy-unstall-{self.port}"
            timer.daemon = True
            with self._lock:
                self._timers.append(timer)
            timer.start()

    def unstall(self) -> None:
        """Forward again, starting with the bytes held during the stall."""
        self._flowing.set()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def refuse(self, on: bool) -> None:
        """While on, new connections are aborted (RST) as soon as they are accepted."""
        self._refusing = on

    def cut_when(
        self,
        match: bytes | Callable[[bytes], bool],
        *,
        mode: CutMode = "command",
        times: int = 1,
        skip: int = 0,
    ) -> CutRule:
        """Arm a rule that resets the connection whose client bytes match (see CutRule)."""
        if mode not in ("command", "reply"):
            raise ValueError(f"mode must be 'command' or 'reply', not {mode!r}")
        rule = CutRule(match, mode, times, skip)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def close(self) -> None:
        """Stop accepting, reset every connection and end every proxy thread."""
        self._closed = True
        self._flowing.set()
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        self._acceptor.join(2.0)
        with contextlib.suppress(OSError):
            self._listener.close()
        for link in self.links:
            link.kill("reset")
        for timer in timers:
            timer.join(1.0)

    def threads(self) -> list[threading.Thread]:
        """This proxy's live threads (for the test to check that close() ended them)."""
        prefixes = (
            f"proxy-{self.port}-",
            f"proxy-accept-{self.port}",
            f"proxy-unstall-{self.port}",
        )
        return [t for t in threading.enumerate() if t.name.startswith(prefixes) and t.is_alive()]

    # -- internals

    def _accept_loop(self) -> None:
        self._listener.settimeout(_POLL)
        for client in accepted(self._listener, lambda: self._closed):
            with self._lock:
                full = len(self._links) >= self.max_links
            if self._refusing or full or self._closed:
                self.refused += 1
                _abort(client)
                continue
            try:
                server = socket.create_connection(self.backend, timeout=2.0)
            except OSError:
                self.refused += 1
                _abort(client)
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._count += 1
                link = Link(self, self._count, client, server)
                self._links.add(link)
            self.accepted += 1
            link.start()

    def _forget(self, link: Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _match(self, tail: bytes, chunk: bytes) -> CutRule | None:
        """The rule that fires on this read, if any (every armed rule counts what it sees)."""
        with self._lock:
            firing: CutRule | None = None
            for rule in self._rules:
                if rule.done:
                    continue
                found = rule.occurrences(tail, chunk)
                rule.seen += found
                if firing is None and found and rule.seen > rule.skip:
                    # One of the new occurrences is past the ones to let through.
                    rule.fired += 1
                    firing = rule
            return firing

    def _record_cut(
        self, link: Link, what: str, rule: CutRule | None = None, data: bytes = b""
    ) -> None:
        at = data.rfind(rule.match) if rule is not None and isinstance(rule.match, bytes) else -1
        excerpt = (data[max(0, at - 30) : at + 50] if at >= 0 else data[-80:]).replace(
            b"\r\n", b" "
        )
        line = f"link {link.number}: {what}" + (f" on {excerpt!r}" if data else "")
        with self._lock:
            self.cuts.append(line)
            if rule is not None:
                rule.log.append(line)
