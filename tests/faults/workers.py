"""Worker processes of the fault suite: ``python -m flowd worker tests.faults.app:make_queue``."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.faults.accounting import REPO, subprocess_env

TARGET = "tests.faults.app:make_queue"


class WorkerProcess:
    """One ``flowd worker`` process started by this test, as consumer ``consumer``."""

    def __init__(
        self,
        url: str,
        stream: str,
        consumer: str,
        log_dir: Path,
        *,
        shutdown_timeout: float = 10.0,
        **settings: str,
    ) -> None:
        self.consumer = consumer
        self.stderr_path = log_dir / f"{consumer}.stderr"
        env = subprocess_env(
            FLOWD_REDIS_URL=url, FAULTS_STREAM=stream, FAULTS_CONSUMER=consumer, **settings
        )
        args = [
            sys.executable,
            "-m",
            "flowd",
            "worker",
            TARGET,
            "--processes",
            "1",
            "--shutdown-timeout",
            str(shutdown_timeout),
            "--url",
            url,
        ]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL this process (started here, by its PID) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM; the exit status, or None if it did not exit within ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
