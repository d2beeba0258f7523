"""A camera read behind real time (the daemon could not keep up for a while) skips to its next
keyframes instead of carrying the lag: latency comes back, the skipped frames are counted."""
import signal
import time
import uuid
from datetime import datetime

from scripts.lab.broker import consume
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


def age(record) -> float:
    captured = datetime.fromisoformat(record.value["frame"]["captured_at"].replace("Z", "+00:00")).timestamp()
    return record.received_at - captured


def test_a_camera_that_fell_behind_skips_to_the_present(tmp_path, rtsp_server, broker):
    topic, port = f"lag-{uuid.uuid4().hex[:8]}", free_port()
    path = daemon_config(tmp_path / "lag.yaml", MODEL, broker.bootstrap, [("cam", rtsp_server.url("wide"), 5)],
                         topic=topic, metrics_port=port, source={"max_lag_s": 1.0})
    daemon = Daemon(path, tmp_path / "lag.log")
    daemon.start()

    lag_seen = []  # the camera's source_lag_seconds gauge, read with every poll

    def lagging() -> float:
        text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        lag_seen.append(metric_values(text, "rtsp_pipeline_source_lag_seconds")['{camera="cam"}'])
        return metric_values(text, "rtsp_pipeline_frames_dropped_total").get('{camera="cam",reason="lagging"}', 0)
    try:
        consume(broker.bootstrap, [topic], lambda rs: len(rs) >= 5, 60)
        daemon.proc.send_signal(signal.SIGSTOP)  # the daemon falls 4 s behind; the server keeps sending
        time.sleep(4)
        daemon.proc.send_signal(signal.SIGCONT)
        resumed = time.time()
        wait_for(lambda: lagging() > 0, 20, "frames skipped as lagging")
        records = consume(broker.bootstrap, [topic], lambda rs: sum(r.received_at > resumed + 3 for r in rs) >= 5, 60)
        lagging()  # one more read of the gauge, now that latency is back
    finally:
        code = daemon.stop()
    assert code == 0
    assert "camera fell behind real time" in daemon.log_text() and "camera caught up" in daemon.log_text()
    late = [age(r) for r in records if r.received_at > resumed + 3]
    assert max(late) < 1.5, f"latency came back after catching up: {late}"
    # the backlog drains in well under a poll interval, so only the end of the lag is certain to be seen
    assert lag_seen[-1] < 0.5, f"/metrics shows the camera back within half of max_lag_s: {lag_seen}"
