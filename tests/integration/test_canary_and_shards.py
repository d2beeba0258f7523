"""Rolling out a model to some cameras (canary) and splitting cameras across replicas (--shard)."""
import hashlib
import uuid

from scripts.testbed import REPO, Daemon, consume, daemon_config, free_port, http_get, metric_values, wait_for

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


def test_replicas_with_shards_serve_every_camera_exactly_once(tmp_path, rtsp_server, broker):
    topic = f"shards-{uuid.uuid4().hex[:8]}"
    cams = [(f"cam-{i}", rtsp_server.url(clip), 2) for i, clip in enumerate(["classic", "wide", "portrait", "gop1s"])]
    path = daemon_config(tmp_path / "shards.yaml", MODEL, broker.bootstrap, cams, topic=topic)
    replicas = [Daemon(path, tmp_path / f"replica-{i}.log", args=("--shard", f"{i}/2")) for i in range(2)]
    for replica in replicas:
        replica.start()
    try:
        records = consume(broker.bootstrap, [topic], lambda rs: {r.key for r in rs} == {c for c, _, _ in cams}
                          and all(sum(r.key == c for r in rs) >= 3 for c, _, _ in cams), 90)
        wait_for(lambda: all('"running"' in r.log_text() for r in replicas), 10, "both replicas running")
    finally:
        codes = [r.stop() for r in replicas]
    assert codes == [0, 0]
    runs = {}
    for r in records:
        runs.setdefault(r.key, set()).add(r.value["run_id"])
    assert all(len(ids) == 1 for ids in runs.values()), f"a camera was served by two replicas: {runs}"
    by_replica = {}
    for cam, ids in runs.items():
        by_replica.setdefault(next(iter(ids)), set()).add(cam)
    assert sorted(len(c) for c in by_replica.values()) == [2, 2]  # balanced: two cameras each


def test_a_replica_whose_share_is_empty_is_ready_and_idle(tmp_path, rtsp_server, broker):
    from pipeline.config import shard_assignment

    port = free_port()
    path = daemon_config(tmp_path / "one.yaml", MODEL, broker.bootstrap, [("only", rtsp_server.url("classic"), 2)],
                         topic=f"empty-{uuid.uuid4().hex[:8]}", metrics_port=port)
    idle = 1 - shard_assignment(["only"], 2)["only"]
    daemon = Daemon(path, tmp_path / "idle.log", args=("--shard", f"{idle}/2"))
    daemon.start()
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60, "the idle replica to be ready")
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        assert daemon.stop() == 0
    assert '"cameras": 0' in daemon.log_text()
