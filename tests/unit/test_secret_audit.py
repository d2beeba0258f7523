"""The suite's secret audit finds a leaked credential wherever a daemon emitted it."""
from scripts.lab.audit import emitted_texts, secret_findings, transcribe
from scripts.lab.common import CAMERA_CREDENTIALS, KAFKA_PASSWORD


def test_audit_finds_listed_secrets_and_url_passwords_in_logs_http_and_kafka(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_TRANSCRIPTS", str(tmp_path))
    log = tmp_path / "daemon.log"
    log.write_text('{"event": "camera connected", "url": "rtsp://operator:***@127.0.0.1:8554/wide"}\n'
                   f'{{"event": "oops", "error": "login {KAFKA_PASSWORD} refused"}}\n')
    transcribe("daemon-logs", str(log))
    transcribe("http", 'rtsp_pipeline_camera_up{camera="a"} 1\n')
    transcribe("kafka", "b'gate' b'{\"url\": \"rtsp://admin:hunter2@10.0.0.5/s\"}'")
    texts = emitted_texts(tmp_path)
    assert set(texts) == {str(log), "http", "kafka"}
    findings = secret_findings(texts)
    assert findings == [f"{log}:2: ['{KAFKA_PASSWORD}']", "kafka:1: ['hunter2']"]


def test_audit_is_quiet_for_redacted_output(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_TRANSCRIPTS", str(tmp_path))
    user = CAMERA_CREDENTIALS.split(":")[0]
    transcribe("http", f'{{"url": "rtsp://{user}:***@127.0.0.1/x", "state": "streaming"}}')
    assert secret_findings(emitted_texts(tmp_path)) == []
