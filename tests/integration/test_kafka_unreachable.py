"""With no broker reachable the daemon keeps running: alive, not ready, drops counted, and
SIGINT still stops it promptly with exit code 0, also with dead cameras (one that never answers,
one that accepts the stream and never sends a packet)."""
import json
import os
import signal
import time

from scripts.lab.cameras import FakeRtspCamera, SilentServer
from scripts.lab.common import KAFKA_PASSWORD, REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values


def test_daemon_without_broker_stays_alive_spools_and_stops_on_sigint(tmp_path, rtsp_server):
    port = free_port()
    silent, mute = SilentServer(), FakeRtspCamera("mute")
    cameras = [("classic", rtsp_server.url("classic"), 10), ("silent", f"rtsp://127.0.0.1:{silent.port}/s", 5),
               ("mute", mute.url(), 5)]
    config = daemon_config(tmp_path / "nokafka.yaml", REPO / "engines" / "yolov8n.onnx", f"127.0.0.1:{free_port()}",
                           cameras, metrics_port=port, kafka={"stop_timeout_s": 2})
    daemon = Daemon(config, tmp_path / "nokafka.log")
    daemon.start()
    try:
        def spooled():
            text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
            return metric_values(text, "rtsp_pipeline_publish_queue_depth").get("", 0)

        wait_for(lambda: spooled() >= 20, 60, "messages to wait in the spool")
        text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        assert metric_values(text, "rtsp_pipeline_spool_bytes")[""] > 0
        assert not metric_values(text, "rtsp_pipeline_messages_dropped_total")  # kept, not dropped
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        detail = json.loads(body)
        assert status == 503 and detail["kafka"]["connected"] is False and detail["kafka"]["queued"] >= 20
        assert detail["cameras"]["classic"]["state"] == "streaming"
        sent_at = time.monotonic()
        daemon.proc.send_signal(signal.SIGINT)
        assert daemon.proc.wait(15) == 0
        assert time.monotonic() - sent_at < 10
        assert "kafka unreachable; retrying" in daemon.log_text()
        assert '"undelivered_kept_in_spool"' in daemon.log_text()
    finally:
        daemon.stop()
        silent.close()
        mute.close()


def test_broker_refusing_our_sasl_login_is_retried_counted_and_never_leaks_the_password(tmp_path, rtsp_server, broker):
    port = free_port()
    config = daemon_config(tmp_path / "sasl.yaml", REPO / "engines" / "yolov8n.onnx", broker.bootstrap,
                           [("classic", rtsp_server.url("classic"), 5)], metrics_port=port,
                           kafka={"security_protocol": "SASL_PLAINTEXT",
                                  "sasl": {"mechanism": "SCRAM-SHA-256", "username": "pipeline",
                                           "password": "${KAFKA_PASSWORD}"}})
    daemon = Daemon(config, tmp_path / "sasl.log", env={**os.environ, "KAFKA_PASSWORD": KAFKA_PASSWORD})
    daemon.start()
    try:
        def connect_errors():
            text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
            return sum(metric_values(text, "rtsp_pipeline_kafka_connect_errors_total").values())
        wait_for(lambda: connect_errors() >= 2, 60, "failed Kafka logins to be counted")
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and json.loads(body)["kafka"]["connected"] is False
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(15) == 0
    finally:
        daemon.stop()
    log = daemon.log_text()
    assert '"security_protocol": "SASL_PLAINTEXT"' in log and '"sasl_mechanism": "SCRAM-SHA-256"' in log
    assert KAFKA_PASSWORD not in log + metrics
