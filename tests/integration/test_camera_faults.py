"""Cameras that refuse, lie or go mute: only that camera degrades, the status topic and metrics
say what happened, credential and path errors are retried slowly and logged once, and a working
camera beside them keeps its frame rate."""
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from scripts.lab.broker import consume
from scripts.lab.cameras import FakeRtspCamera
from scripts.lab.common import REPO, WRONG_CAMERA_CREDENTIALS, WRONG_CAMERA_PASSWORD, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"
RUN_S = 10


@pytest.fixture()
def faulty_cameras():
    cams = {"wrong-password": FakeRtspCamera(401), "wrong-path": FakeRtspCamera(404), "mute": FakeRtspCamera("mute"),
            "no-transport": FakeRtspCamera("no_transport")}
    yield cams
    for cam in cams.values():
        cam.close()


def test_bad_cameras_are_reported_and_retried_without_disturbing_a_good_one(tmp_path, rtsp_server, broker, faulty_cameras):
    topic, port = f"faults-{uuid.uuid4().hex[:8]}", free_port()
    cameras = [("good", rtsp_server.url("classic"), 5)]
    cameras += [(name, cam.url(credentials=WRONG_CAMERA_CREDENTIALS), 5) for name, cam in faulty_cameras.items()]
    config = daemon_config(tmp_path / "faults.yaml", MODEL, broker.bootstrap, cameras, topic=topic,
                           status_topic=f"{topic}-status", metrics_port=port,
                           source={"open_timeout_s": 2, "stall_timeout_s": 2, "backoff_initial_s": 0.2,
                                   "backoff_max_s": 4})
    daemon = Daemon(config, tmp_path / "faults.log")
    daemon.start()
    try:
        records = consume(broker.bootstrap, [topic, f"{topic}-status"],
                          lambda rs: sum(r.topic == topic for r in rs) >= RUN_S * 5 * 0.8, RUN_S + 30)
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        daemon.stop()
    detections = Counter(r.key for r in records if r.topic == topic)
    assert set(detections) == {"good"}, detections  # nothing from the bad cameras, the good one at 5 fps
    reasons = {r.key: r.value["reason"] for r in records if r.topic.endswith("-status") and r.value["state"] == "backing_off"}
    assert reasons["wrong-password"].startswith("unauthorized: check the credentials")
    assert reasons["wrong-path"].startswith("stream not found: check the URL path")
    assert reasons["mute"].startswith("timed out")
    assert reasons["no-transport"].startswith("the camera refuses RTP over TCP and UDP (461 Unsupported transport): "
                                              "check how the camera is set to stream"), reasons["no-transport"]
    assert faulty_cameras["no-transport"].requests.count("SETUP") >= 2  # TCP, then UDP
    errors = metric_values(metrics, "rtsp_pipeline_source_errors_total")
    # credential and path errors wait the longest delay (2-4 s): a handful of tries, not dozens
    for cam, kind in (("wrong-password", "unauthorized"), ("wrong-path", "not_found"), ("no-transport", "transport")):
        tries = errors[f'{{camera="{cam}",kind="{kind}"}}']
        assert 1 <= tries <= 1 + RUN_S / 2, (cam, tries)
    assert errors['{camera="mute",kind="timeout"}'] >= 1
    log = [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]
    unauthorized = [e for e in log if e.get("camera") == "wrong-password" and "unauthorized" in e.get("reason", "")]
    assert errors['{camera="wrong-password",kind="unauthorized"}'] >= 2
    assert len(unauthorized) == 1, "the same failure again is counted and published, but logged once"
    assert WRONG_CAMERA_PASSWORD not in daemon.log_text() + metrics + json.dumps([r.value for r in records])


def open_files_and_threads(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def threads_and_stacks(pid: int) -> str:
    """The daemon's threads (native id and name) and, where py-spy is installed, their Python
    stacks: what a failure of the leak check needs to say which threads were added."""
    tasks = {tid: Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() for tid in os.listdir(f"/proc/{pid}/task")}
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    stacks = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                            timeout=30).stdout if os.access(spy, os.X_OK) else "(py-spy not installed)"
    return f"threads: {sorted(tasks.items())}\n{stacks}"


def test_no_thread_or_file_descriptor_leaks_after_20_fault_cycles(tmp_path, rtsp_server, broker):
    mute, missing = FakeRtspCamera("mute"), FakeRtspCamera(404)
    port = free_port()
    cameras = [("good", rtsp_server.url("classic"), 5), ("mute", mute.url(), 5), ("missing", missing.url(), 5)]
    config = daemon_config(tmp_path / "leaks.yaml", MODEL, broker.bootstrap, cameras, metrics_port=port,
                           topic=f"leaks-{uuid.uuid4().hex[:8]}",
                           source={"open_timeout_s": 0.5, "stall_timeout_s": 0.5, "backoff_initial_s": 0.05,
                                   "backoff_max_s": 0.2})
    daemon = Daemon(config, tmp_path / "leaks.log")
    daemon.start()

    def cycles() -> float:
        errors = metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1], "rtsp_pipeline_source_errors_total")
        return min(errors.get('{camera="mute",kind="timeout"}', 0), errors.get('{camera="missing",kind="not_found"}', 0))
    try:
        wait_for(lambda: cycles() >= 5, 60, "5 fault cycles of each bad camera")
        early = open_files_and_threads(daemon.proc.pid)
        wait_for(lambda: cycles() >= 25, 120, "20 more fault cycles")
        late = open_files_and_threads(daemon.proc.pid)
        if late[1] > early[1]:
            print(threads_and_stacks(daemon.proc.pid))
    finally:
        daemon.stop()
        mute.close()
        missing.close()
    print(f"fds/threads after 5 cycles: {early}, after 25: {late}")
    assert late[0] <= early[0] + 2 and late[1] <= early[1], (early, late)  # +2: a reconnect in progress
