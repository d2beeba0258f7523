"""The README's main command, run for real: the demo (scripts/demo.sh is setup, then this) with a
restart in the middle, as the getting-started page shows: three cameras, detections printed from
Kafka, the daemon stopped with SIGTERM and started again on the same spool folder, and every
camera's messages of both runs whole."""
import re
import subprocess
import sys

import pytest

from scripts.lab.audit import transcribe
from scripts.lab.common import REPO


@pytest.mark.timeout(600)
def test_the_demo_runs_restarts_and_every_camera_streams_in_both_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scripts.demo", "--seconds", "40", "--restart-after", "15"],
                            cwd=REPO, capture_output=True, text=True, timeout=500)
    transcribe("daemon-logs", str(REPO / "demo" / "daemon.log"))
    transcribe("daemon-logs", str(REPO / "demo" / "daemon-2.log"))
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    before, restart, after = out.partition("[demo] restarting the daemon")
    assert restart, out[-2000:]
    for camera in ("lobby-1080p", "yard-720p", "dock-4x3"):
        assert re.search(rf"\[detect\] {camera} +seq=\d+ .* objects: \w+ 0\.\d\d", before), camera
        assert re.search(rf"\[detect\] {camera} +seq=0 ", after), camera  # the second run, from seq 0
    assert "daemon exited with 0, then 0;" in out and "from 2 run(s)" in out and "no gap): yes" in out
