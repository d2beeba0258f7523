"""SIGHUP re-reads the config: added cameras start, removed ones stop, unchanged ones are not
touched (their seq continues, no reconnect), and an invalid file is rejected with the same errors
as validate-config while the running config stays."""
import signal
import time
import uuid
from collections import Counter
from datetime import datetime

import yaml

from scripts.lab.broker import consume
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


def captured(record) -> float:
    return datetime.fromisoformat(record.value["frame"]["captured_at"].replace("Z", "+00:00")).timestamp()


def test_sighup_adds_and_removes_cameras_without_touching_the_others(tmp_path, rtsp_server, broker):
    topic, port = f"reload-{uuid.uuid4().hex[:8]}", free_port()
    status = f"{topic}-status"
    path = daemon_config(tmp_path / "reload.yaml", MODEL, broker.bootstrap,
                         [("keep", rtsp_server.url("classic"), 5), ("drop", rtsp_server.url("wide"), 5)],
                         topic=topic, status_topic=status, metrics_port=port)
    daemon = Daemon(path, tmp_path / "reload.log")
    daemon.start()

    def metric(name, labels):
        return metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1], name).get(labels, 0)
    try:
        consume(broker.bootstrap, [topic], lambda rs: {"keep", "drop"} <= {r.key for r in rs}, 60)
        config = yaml.safe_load(path.read_text())
        config["cameras"] = [config["cameras"][0], {"id": "new", "url": rtsp_server.url("portrait"), "fps": 5}]
        path.write_text(yaml.safe_dump(config))
        reloaded_at = time.time()
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metric("rtsp_pipeline_config_reloads_total", '{result="applied"}') == 1, 30, "the reload")
        records = consume(broker.bootstrap, [topic, status],
                          lambda rs: Counter(r.key for r in rs if r.topic == topic)["new"] >= 10, 60)
        # an invalid file: rejected, nothing changes
        path.write_text(path.read_text().replace("fps: 5", "fps: -1", 1))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metric("rtsp_pipeline_config_reloads_total", '{result="rejected"}') == 1, 30, "the rejection")
        keep_reconnects = metric("rtsp_pipeline_reconnects_total", '{camera="keep"}')
        seen_keep = Counter(r.key for r in records if r.topic == topic)["keep"]
        after = consume(broker.bootstrap, [topic], lambda rs: Counter(r.key for r in rs)["keep"] >= seen_keep + 10, 60)
    finally:
        daemon.stop()
    keep = [r.value["frame"]["seq"] for r in after if r.key == "keep"]
    assert keep == list(range(len(keep))), "the unchanged camera's seq continued through both reloads"
    assert keep_reconnects == 0
    keep_states = [r.value["state"] for r in records if r.topic == status and r.key == "keep"]
    assert keep_states == ["connecting", "streaming"], keep_states  # never restarted
    drop_states = [r.value["state"] for r in records if r.topic == status and r.key == "drop"]
    assert drop_states[-1] == "stopped"
    drop_last = max(captured(r) for r in after if r.key == "drop")
    assert drop_last < reloaded_at + 1, "the removed camera stopped publishing at the reload"
    assert min(captured(r) for r in after if r.key == "new") > reloaded_at
    log = daemon.log_text()
    assert "config reload rejected; running config kept" in log
    assert f"{path}:" in log and "cameras[0].fps: Input should be greater than 0" in log  # validate-config's line
