"""Rolling out a model to some cameras (canary)."""
import hashlib
import uuid

from scripts.lab.broker import consume
from scripts.lab.common import REPO, free_port
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"
CANARY = REPO / "engines" / "shapes-yolov8n.int8.onnx"


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_canary_cameras_run_the_new_model_and_metrics_compare_the_two(tmp_path, rtsp_server, broker):
    topic, port = f"canary-{uuid.uuid4().hex[:8]}", free_port()
    cams = [("main-a", rtsp_server.url("classic"), 5), ("main-b", rtsp_server.url("portrait"), 5),
            ("canary-c", rtsp_server.url("wide"), 5)]
    path = daemon_config(tmp_path / "canary.yaml", MODEL, broker.bootstrap, cams, topic=topic, metrics_port=port,
                         canary={"model": {"path": str(CANARY)}, "cameras": ["canary-c"]})
    daemon = Daemon(path, tmp_path / "canary.log")
    daemon.start()
    try:
        records = consume(broker.bootstrap, [topic], lambda rs: all(
            sum(r.key == c for r in rs) >= 5 for c, _, _ in cams), 90)
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        health = http_get(f"http://127.0.0.1:{port}/healthz")
    finally:
        code = daemon.stop()
    assert code == 0
    models = {r.key: r.value["model"]["sha256"] for r in records}
    assert models == {"main-a": sha(MODEL), "main-b": sha(MODEL), "canary-c": sha(CANARY)}
    frames = metric_values(metrics, "rtsp_pipeline_model_frames_total")
    main_label, canary_label = f"shapes-yolov8n@{sha(MODEL)[:12]}", f"shapes-yolov8n.int8@{sha(CANARY)[:12]}"
    assert {k for k, v in frames.items() if v > 0} == {
        f'{{camera="main-a",model="{main_label}"}}', f'{{camera="main-b",model="{main_label}"}}',
        f'{{camera="canary-c",model="{canary_label}"}}'}
    assert f'model="{canary_label}"' in metrics.split("rtsp_pipeline_model_detections_total")[-1]
    assert health[0] == 200 and '"cpu-canary"' in health[1] and '"cpu"' in health[1]
