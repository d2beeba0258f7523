"""sd_notify messages as systemd reads them, on real datagram sockets (path and abstract)."""
import os
import socket
import uuid

import pytest

from pipeline.systemd import SystemdNotifier


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify.sock")
        sock.bind(name)
    else:
        name = f"@pipeline-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name[1:].encode())
    sock.settimeout(2)
    yield name, sock
    sock.close()


def test_messages_arrive_as_systemd_expects(listener):
    name, sock = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000"})
    assert notifier.enabled and notifier.watchdog_interval_s == 2.0  # half of WatchdogSec
    notifier.ready("2/2 cameras streaming")
    notifier.watchdog("1/2 cameras streaming")
    notifier.stopping()
    notifier.close()
    got = [sock.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=2/2 cameras streaming", "WATCHDOG=1\nSTATUS=1/2 cameras streaming",
                   "STOPPING=1\nSTATUS=stopping"]


def test_a_watchdog_meant_for_another_process_is_not_petted(listener):
    name, sock = listener
    notifier = SystemdNotifier.from_environment(
        {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.watchdog_interval_s is None
    notifier.watchdog("ok")
    notifier.close()
    assert sock.recv(4096).decode() == "STATUS=ok"  # status only, no WATCHDOG=1


def test_outside_systemd_nothing_is_sent_and_nothing_fails():
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog("x")
    notifier.stopping()


def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path, caplog):
    notifier = SystemdNotifier(str(tmp_path / "gone.sock"), 1_000_000)
    for _ in range(3):
        notifier.watchdog("x")
    notifier.close()
    assert sum("cannot notify systemd" in r.getMessage() for r in caplog.records) == 1
