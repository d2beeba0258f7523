"""systemd's service notification protocol (sd_notify), for `Type=notify` units with `WatchdogSec`.

The daemon says READY=1 once its cameras are started, WATCHDOG=1 from its health loop while its
inference is alive (a hung pipeline stops petting the watchdog and systemd restarts it),
RELOADING=1 / READY=1 around a SIGHUP reload and STOPPING=1 at shutdown, each with a STATUS= line
that `systemctl status` shows. Outside systemd (no NOTIFY_SOCKET) every call does nothing.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from pipeline.logs import log_event

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to the socket systemd named in NOTIFY_SOCKET (a datagram socket)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address) if address else None
        self.watchdog_interval_s = watchdog_usec / 1e6 / 2 if watchdog_usec else None  # pet twice per period
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID as systemd sets them for the service."""
        env = os.environ if environ is None else environ
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        for_us = not pid or pid == str(os.getpid())  # the watchdog is meant for another process otherwise
        return cls(env.get("NOTIFY_SOCKET") or None, int(usec) if usec.isdigit() and for_us else None)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    def ready(self, status: str) -> None:
        """Startup finished (cameras started); systemd marks the unit active."""
        self._send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        """A configuration reload began (READY=1 follows when it ends)."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def watchdog(self, status: str) -> None:
        """Still alive and working: resets systemd's watchdog timer (when the unit has one)."""
        self._send(f"WATCHDOG=1\nSTATUS={status}" if self.watchdog_interval_s else f"STATUS={status}")

    def stopping(self) -> None:
        """Shutdown began."""
        self._send("STOPPING=1\nSTATUS=stopping")

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone or socket not ours: never a reason to stop detecting
            if not self._warned:
                log_event(log, logging.WARNING, "cannot notify systemd", socket=str(self._address), error=str(exc))
                self._warned = True


def _socket_address(name: str) -> str | bytes:
    """NOTIFY_SOCKET is a path, or an abstract socket name written with a leading '@'."""
    return b"\0" + name[1:].encode() if name.startswith("@") else name
