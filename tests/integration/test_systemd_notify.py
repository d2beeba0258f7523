"""Under systemd (`Type=notify`, `WatchdogSec`), the daemon speaks sd_notify on a real
NOTIFY_SOCKET: READY=1 once its cameras are started, WATCHDOG=1 while it works, RELOADING=1 then
READY=1 around a SIGHUP, STOPPING=1 at SIGTERM."""
import signal
import socket
import threading
import time
import uuid

import pytest

from scripts.lab.broker import consume
from scripts.lab.common import REPO, wait_for
from scripts.lab.daemons import Daemon, daemon_config

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


class NotifyListener:
    """What systemd does: a datagram socket whose path is given to the service as NOTIFY_SOCKET,
    read by its own thread so each message's time is when it arrived (the test's thread is often
    busy elsewhere, e.g. consuming Kafka, and would stamp queued messages late)."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def poll(self) -> list[tuple[float, dict]]:
        """Every message so far as (arrival time, {KEY: value})."""
        with self._lock:
            return list(self.messages)

    def times(self, key: str) -> list[float]:
        return [at for at, fields in self.poll() if key in fields]

    def close(self) -> None:
        self._closed.set()
        self._reader.join(5)
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    notify = NotifyListener(tmp_path / "notify.sock")
    yield notify
    notify.close()


def test_daemon_speaks_sd_notify_to_a_real_notify_socket(tmp_path, rtsp_server, broker, listener):
    topic = f"notify-{uuid.uuid4().hex[:8]}"
    path = daemon_config(tmp_path / "notify.yaml", MODEL, broker.bootstrap,
                         [("a", rtsp_server.url("classic"), 5), ("b", rtsp_server.url("wide"), 5)], topic=topic)
    daemon = Daemon(path, tmp_path / "notify.log",
                    env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "1000000"})  # WatchdogSec=1
    daemon.start()
    try:
        wait_for(lambda: listener.times("READY"), 60, "READY=1")
        ready_at = listener.times("READY")[0]
        ready_status = next(f["STATUS"] for _, f in listener.poll() if "READY" in f)
        assert "/2 cameras streaming" in ready_status, ready_status  # both cameras started by then
        consume(broker.bootstrap, [topic], lambda rs: {"a", "b"} <= {r.key for r in rs}, 60)
        wait_for(lambda: len([t for t in listener.times("WATCHDOG") if t > ready_at]) >= 4, 10, "four WATCHDOG=1")
        pets = [t for t in listener.times("WATCHDOG") if t > ready_at]
        status = [f["STATUS"] for _, f in listener.poll() if "WATCHDOG" in f][-1]
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(listener.times("READY")) >= 2, 30, "READY=1 after the reload")
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.stop()
    assert code == 0
    keys = [next(iter(k for k in ("READY", "RELOADING", "STOPPING") if k in f), None) for _, f in listener.poll()]
    events = [k for k in keys if k]
    assert events == ["READY", "RELOADING", "READY", "STOPPING"], events
    gaps = [b - a for a, b in zip(pets, pets[1:])]
    assert max(gaps) < 1.0, f"the watchdog (1 s) was petted in time: gaps {gaps}"
    assert status == "2/2 cameras streaming; Kafka connected"
    reloading = next(f for _, f in listener.poll() if "RELOADING" in f)
    assert int(reloading["MONOTONIC_USEC"]) > 0


def test_without_notify_socket_nothing_is_sent_and_the_daemon_runs(tmp_path, rtsp_server, broker):
    # outside systemd: no socket, no error, detections flow (the demo and tests run this way)
    topic = f"nonotify-{uuid.uuid4().hex[:8]}"
    path = daemon_config(tmp_path / "plain.yaml", MODEL, broker.bootstrap, [("a", rtsp_server.url("classic"), 5)],
                         topic=topic)
    daemon = Daemon(path, tmp_path / "plain.log", env={"NOTIFY_SOCKET": ""})
    daemon.start()
    try:
        consume(broker.bootstrap, [topic], lambda rs: len(rs) >= 3, 60)
    finally:
        code = daemon.stop()
    assert code == 0
    assert "cannot notify systemd" not in daemon.log_text()
