"""What every part of the lab shares: the repository root, the suite's credentials, free ports,
waiting for a condition with a deadline, and a child process stopped by its PID.
"""
from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has python3-gi and GstRtspServer

# Credentials the test suite hands the daemon. Every camera URL of the local RTSP server carries
# CAMERA_CREDENTIALS (the server does not ask for them, the daemon still holds them), and the
# suite's secret audit checks that none of SUITE_SECRETS appears in anything a daemon emitted.
CAMERA_PASSWORD, WRONG_CAMERA_PASSWORD, KAFKA_PASSWORD = "Cam-Pa55-7f3k", "Secr3t-pw", "Kafka-Pa55word"

API_TOKEN, WRONG_API_TOKEN = "api-tok-3f9c1d7a5b2e8f40", "api-tok-0000000000000000"  # the daemon's bearer token

CAMERA_CREDENTIALS = f"operator:{CAMERA_PASSWORD}"

WRONG_CAMERA_CREDENTIALS = f"viewer:{WRONG_CAMERA_PASSWORD}"

SUITE_SECRETS = (CAMERA_PASSWORD, WRONG_CAMERA_PASSWORD, KAFKA_PASSWORD, API_TOKEN, WRONG_API_TOKEN)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll `condition` until it returns something truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class ChildProcess:
    """A child process that is stopped by its PID on exit."""

    proc: subprocess.Popen | None = None

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False
