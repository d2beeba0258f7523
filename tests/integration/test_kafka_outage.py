"""Kafka outages lose no detection: while the broker is away messages wait in the on-disk spool and
are delivered afterwards, in order per camera (at least once: a repeat has the same camera_id,
run_id and frame.seq); a daemon killed with SIGKILL during the outage sends what it had spooled
when it starts again.

The outage is made by cutting the network path to the broker (every connection closed, the port
refusing connections for 60 s, then accepting again on the same port), not by restarting the
broker process: Tansu keeps topics in memory and, restarted, acknowledges writes to topics it has
lost without storing them (measured: 300 acknowledged, 0 readable)."""
import signal
import time
import uuid
from collections import defaultdict

from scripts.lab.broker import Broker, consume
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values
from scripts.lab.network import NetworkCut

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"
OUTAGE_S = 60


def by_camera(records, topic):
    """camera -> [(run_id, seq)] in delivery order, repeats removed (the documented dedupe)."""
    seen, out = set(), defaultdict(list)
    for r in records:
        if r.topic != topic:
            continue
        key = (r.key, r.value["run_id"], r.value["frame"]["seq"])
        if key not in seen:
            seen.add(key)
            out[r.key].append(key[1:])
    return out


def spooled(port):
    return metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1], "rtsp_pipeline_publish_queue_depth").get("", 0)


def test_a_60s_broker_outage_loses_nothing_and_keeps_order(tmp_path, rtsp_server):
    topic, port, kafka_port = f"outage-{uuid.uuid4().hex[:8]}", free_port(), free_port()
    broker = Broker(advertised_port=kafka_port)
    broker.start()
    network = NetworkCut(broker.port, kafka_port)
    config = daemon_config(tmp_path / "outage.yaml", MODEL, broker.bootstrap,
                           [("a", rtsp_server.url("classic"), 5), ("b", rtsp_server.url("wide"), 5)],
                           topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                           )
    daemon = Daemon(config, tmp_path / "outage.log")
    daemon.start()
    try:
        consume(broker.bootstrap, [topic], lambda rs: len(rs) >= 10, 60)
        network.cut()
        time.sleep(OUTAGE_S)
        during = spooled(port)
        network.restore()
        wait_for(lambda: spooled(port) == 0, 120, "the spool to drain")
        inferred = metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1], "rtsp_pipeline_frames_inferred_total")
        last = {cam: inferred[f'{{camera="{cam}"}}'] for cam in ("a", "b")}  # messages so far, per camera
        records = consume(broker.bootstrap, [topic],
                          lambda rs: all(len(by_camera(rs, topic)[c]) >= last[c] for c in last), 60)
    finally:
        daemon.stop()
        network.close()
        broker.stop()
    delivered = by_camera(records, topic)
    assert during >= OUTAGE_S * 2 * 5 * 0.8  # what the two cameras produced while the broker was away
    aiokafka_lines = sum('"logger": "aiokafka' in line for line in daemon.log_text().splitlines())
    assert aiokafka_lines <= 2 * OUTAGE_S / 10 * 4, aiokafka_lines  # rate-limited: no log flood
    for cam in ("a", "b"):
        seqs = [seq for _, seq in delivered[cam]]
        # every message of the run, before, during and after the outage: from 0, gap-free, in order
        assert seqs[:int(last[cam])] == list(range(int(last[cam]))), cam
    print(f"{during:.0f} messages spooled during the {OUTAGE_S} s outage; "
          f"{sum(1 for r in records if r.topic == topic) - sum(map(len, delivered.values()))} repeats")


def test_messages_spooled_before_a_kill_9_are_sent_after_the_restart(tmp_path, rtsp_server):
    topic, port = f"kill-{uuid.uuid4().hex[:8]}", free_port()
    broker = Broker()  # not started yet: the outage
    config = daemon_config(tmp_path / "kill.yaml", MODEL, broker.bootstrap, [("a", rtsp_server.url("classic"), 5)],
                           topic=topic, status_topic=f"{topic}-status", metrics_port=port)
    first = Daemon(config, tmp_path / "first.log")
    first.start()
    try:
        wait_for(lambda: spooled(port) >= 25, 60, "messages to be spooled")
        at_kill = spooled(port)  # detections and the camera's two status messages
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        first.stop()
    broker.start()
    second = Daemon(config, tmp_path / "second.log")
    second.start()
    try:
        def both_runs(rs):
            runs = {r.value["run_id"] for r in rs if r.topic == topic}
            return len(runs) == 2 and sum(1 for r in rs if r.topic == topic) >= at_kill + 10
        records = consume(broker.bootstrap, [topic], both_runs, 60)
    finally:
        second.stop()
        broker.stop()
    runs = []
    for r in records:
        if r.topic == topic and r.value["run_id"] not in runs:
            runs.append(r.value["run_id"])
    first_run = [r.value["frame"]["seq"] for r in records if r.topic == topic and r.value["run_id"] == runs[0]]
    # every detection the killed run had spooled, from seq 0, none missing
    assert first_run == list(range(len(first_run))) and len(first_run) >= at_kill - 2, (at_kill, first_run)
    assert "spool holds messages from an earlier run" in second.log_text()
