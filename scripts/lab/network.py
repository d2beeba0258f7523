"""Network faults: a network namespace as a host of its own (root), and a TCP forwarder that can
be cut and restored.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading

from scripts.lab.common import free_port


class NetNamespace:
    """A network namespace joined to this host by a veth pair (root): a separate host for one
    daemon, at `address`, reaching this host at `host_address`. `block` cuts its TCP to one port
    (iptables DROP inside it: packets vanish, as in a network partition); `unblock` heals it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"rtspt{os.getpid() % 100000}n{index}"
        self._veth = f"vh{os.getpid() % 100000}n{index}"[:15]
        self.host_address, self.address = f"10.231.{index}.1", f"10.231.{index}.2"
        self.run_in = ("ip", "netns", "exec", self.name)
        steps = [["ip", "netns", "add", self.name],
                 ["ip", "link", "add", self._veth, "type", "veth", "peer", "name", "ns0", "netns", self.name],
                 ["ip", "addr", "add", f"{self.host_address}/30", "dev", self._veth],
                 ["ip", "link", "set", self._veth, "up"],
                 [*self.run_in, "ip", "addr", "add", f"{self.address}/30", "dev", "ns0"],
                 [*self.run_in, "ip", "link", "set", "ns0", "up"],
                 [*self.run_in, "ip", "link", "set", "lo", "up"]]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)

    @staticmethod
    def unavailable() -> str | None:
        """Why no namespace can be made here (None: it can)."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
        return f"not installed: {', '.join(missing)}" if missing else None

    def _rule(self, action: str, address: str, port: int) -> None:
        subprocess.run([*self.run_in, "iptables", action, "OUTPUT", "-p", "tcp", "-d", address, "--dport", str(port),
                        "-j", "DROP"], check=True, capture_output=True)

    def block(self, address: str, port: int) -> None:
        self._rule("-I", address, port)

    def unblock(self, address: str, port: int) -> None:
        self._rule("-D", address, port)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self._veth], capture_output=True)


class NetworkCut:
    """A TCP forwarder 127.0.0.1:port -> 127.0.0.1:target that can be cut (every connection
    closed, new ones refused: the far side looks down) and restored on the same port. Tests use
    it for Kafka outages: Tansu keeps topics in memory only and, restarted, acknowledges writes to
    topics it lost without storing them, so the broker process itself is not restarted."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target, self.port = target, port or free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Accept connections again (on the same port); nothing to do while not cut."""
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close the listener and every forwarded connection."""
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the blocked accept(); close() alone does not
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
