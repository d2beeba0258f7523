"""SIGTERM at any moment of a daemon's start is an orderly stop with exit 0: an autoscaler or a
rollout can stop a pod a second after starting it (the placement storm did, and a daemon died of
the signal's default action, exit -15, because nothing caught SIGTERM before the Runtime's own
handlers, after a second or two of imports). pipeline.launch catches it from the first moment,
before any heavy import: checked in /proc (the process catches SIGTERM while neither numpy nor
ONNX Runtime is loaded), then a SIGTERM at that moment and later ones."""
import signal
import time
from pathlib import Path

import pytest

from scripts.lab.cameras import RefusingPort
from scripts.lab.common import REPO, wait_for
from scripts.lab.daemons import Daemon, daemon_config


def catches(pid: int, sig: int) -> bool:
    """The process has a handler for `sig` (/proc's SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("after_s", [None, 1.0, 3.0])
def test_sigterm_while_starting_exits_0(tmp_path, after_s):
    port, daemon = RefusingPort(), None
    try:
        model = {"path": REPO / "engines" / "shapes-yolov8n.onnx", "input_size": 320}
        config = daemon_config(tmp_path / "cams.yaml", model, f"127.0.0.1:{port.port}",  # no broker, no camera
                               [("cam-1", f"rtsp://127.0.0.1:{port.port}/x", 5)])
        daemon = Daemon(config, tmp_path / "daemon.log")
        daemon.start()
        if after_s is None:  # the first moment SIGTERM is caught: before the heavy imports
            wait_for(lambda: catches(daemon.proc.pid, signal.SIGTERM) or daemon.proc.poll() is not None, 30,
                     "the daemon to catch SIGTERM", interval=0.002)
            loaded = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
            assert "_multiarray_umath" not in loaded and "onnxruntime" not in loaded
        else:
            time.sleep(after_s)
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(60)
        assert code == 0, f"exit {code} after SIGTERM at {after_s} s:\n{daemon.log_text()[-2000:]}"
        assert "Traceback" not in daemon.log_text()
    finally:
        if daemon is not None:
            daemon.stop()
        port.close()
