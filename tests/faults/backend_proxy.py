"""A loopback TCP proxy whose backend can be switched while clients are connected.

``switch(port)`` points new connections at another server and cuts every open
one, so clients reconnect and land on the new backend (as after a failover).
Threads are named ``backend-proxy-*`` and are daemons; ``close()`` ends them.
"""

from __future__ import annotations

import socket
import threading

from tests.faults.proxy import accepted

_CHUNK = 65536


class _Pair:
    """One client connection and its backend connection; closed once both pumps ended."""

    def __init__(self, client: socket.socket, backend: socket.socket) -> None:
        self.client = client
        self.backend = backend
        self._lock = threading.Lock()
        self._pumps_left = 2

    def cut(self) -> None:
        for sock in (self.client, self.backend):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already shut or closed

    def pump_ended(self) -> bool:
        """True for the last of the two pumps: it closes both sockets."""
        with self._lock:
            self._pumps_left -= 1
            last = self._pumps_left == 0
        if last:
            self.client.close()
            self.backend.close()
        return last


class BackendProxy:
    """Listens on 127.0.0.1:``port`` and forwards each connection to the current backend."""

    def __init__(self, backend_port: int) -> None:
        self._backend_port = backend_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self.connections = 0  # accepted so far
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="backend-proxy-accept", daemon=True
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def backend_port(self) -> int:
        return self._backend_port

    def start(self) -> BackendProxy:
        self._accept_thread.start()
        return self

    def switch(self, backend_port: int) -> int:
        """New connections go to ``backend_port``; open ones are cut. Returns how many."""
        with self._lock:
            self._backend_port = backend_port
            pairs = list(self._pairs)
        for pair in pairs:
            pair.cut()
        return len(pairs)

    def close(self) -> None:
        self._closed.set()
        self._accept_thread.join(5)
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
            threads = list(self._threads)
        for pair in pairs:
            pair.cut()
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> BackendProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        for client in accepted(self._listener, self._closed.is_set):
            with self._lock:
                port = self._backend_port
            try:
                backend = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                client.close()  # the client sees a refused/closed connection, as without a proxy
                continue
            backend.settimeout(None)
            for sock in (client, backend):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, backend)
            pumps = [
                threading.Thread(
                    target=self._pump, args=(pair, src, dst), name=f"backend-proxy-{i}", daemon=True
                )
                for i, (src, dst) in enumerate(((client, backend), (backend, client)))
            ]
            with self._lock:
                self.connections += 1
                self._pairs.add(pair)
                self._threads = [t for t in self._threads if t.is_alive()] + pumps
            for pump in pumps:
                pump.start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass  # cut, or the other side went away
        finally:
            pair.cut()
            if pair.pump_ended():
                with self._lock:
                    self._pairs.discard(pair)
