"""Streams that change or break under the decoder: a resolution change mid-stream (new SPS) and
a damaged H.264 bitstream. The camera keeps streaming, messages report each frame's own size
with boxes inside it, `seq` stays gap-free, and the camera beside them is undisturbed."""
import uuid
from collections import Counter

from scripts.testbed import REPO, Daemon, consume, daemon_config, free_port

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


def test_resolution_change_and_damaged_stream_keep_streaming(tmp_path, rtsp_server, broker):
    topic = f"streams-{uuid.uuid4().hex[:8]}"
    cameras = [("resize", rtsp_server.url("resize"), 10), ("corrupt", rtsp_server.url("corrupt"), 10),
               ("steady", rtsp_server.url("classic"), 5)]
    config = daemon_config(tmp_path / "streams.yaml", {"path": MODEL, "confidence": 0.05}, broker.bootstrap,
                           cameras, topic=topic, status_topic=f"{topic}-status", metrics_port=free_port())
    daemon = Daemon(config, tmp_path / "streams.log")
    daemon.start()
    try:
        def enough(records):  # two loops of the 4 s clip for each changing camera
            counts = Counter(r.key for r in records if r.topic == topic)
            return counts["resize"] >= 80 and counts["corrupt"] >= 60 and counts["steady"] >= 30
        records = consume(broker.bootstrap, [topic, f"{topic}-status"], enough, 60)
    finally:
        daemon.stop()
    frames = [r.value for r in records if r.topic == topic]
    for cam in ("resize", "corrupt", "steady"):
        own = [m for m in frames if m["camera_id"] == cam]
        assert [m["frame"]["seq"] for m in own] == list(range(len(own))), cam
        for m in own:
            w, h = m["frame"]["width"], m["frame"]["height"]
            assert all(0 <= d["bbox"][0] < d["bbox"][2] <= w and 0 <= d["bbox"][1] < d["bbox"][3] <= h
                       for d in m["detections"]), (cam, m)
    sizes = Counter((m["frame"]["width"], m["frame"]["height"]) for m in frames if m["camera_id"] == "resize")
    assert set(sizes) == {(640, 360), (1280, 720)} and min(sizes.values()) >= 20, sizes
    assert len([m for m in frames if m["camera_id"] == "corrupt"]) >= 60
    states = [(r.key, r.value["state"]) for r in records if r.topic.endswith("-status")]
    assert not [s for s in states if s[1] in ("backing_off", "stalled")], states  # nobody reconnected
