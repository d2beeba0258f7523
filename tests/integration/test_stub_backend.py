"""`model.backend: stub` (the pipeline's own ceiling) runs the whole daemon without inference:
every sampled frame is decoded, batched, preprocessed and published, with no detections."""
import uuid
from collections import Counter

from scripts.lab.broker import consume
from scripts.lab.common import REPO, free_port
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


def test_stub_backend_publishes_every_inferred_frame_with_no_detections(tmp_path, rtsp_server, broker):
    topic, port = f"stub-{uuid.uuid4().hex[:8]}", free_port()
    cameras = [("classic", rtsp_server.url("classic"), 10), ("wide", rtsp_server.url("wide"), 5)]
    config = daemon_config(tmp_path / "stub.yaml", {"path": MODEL, "backend": "stub"}, broker.bootstrap,
                           cameras, topic=topic, status_topic=f"{topic}-status", metrics_port=port)
    daemon = Daemon(config, tmp_path / "stub.log")
    daemon.start()
    try:
        records = consume(broker.bootstrap, [topic], lambda rs: min(Counter(r.key for r in rs).values(),
                                                                     default=0) >= 10 and len(set(r.key for r in rs)) == 2, 60)
        inferred = metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1], "rtsp_pipeline_frames_inferred_total")
    finally:
        daemon.stop()
    assert {r.key for r in records} == {"classic", "wide"}
    for cam in ("classic", "wide"):
        own = [r.value for r in records if r.key == cam]
        assert len(own) >= 10
        assert [m["frame"]["seq"] for m in own] == list(range(len(own)))
        assert all(m["detections"] == [] and m["model"]["backend"] == "stub" for m in own)
        assert inferred[f'{{camera="{cam}"}}'] >= len(own)
    assert '"backend": "stub", "decoder": "pyav"' in daemon.log_text()
