"""Logs are JSON lines and never carry credentials."""
import json
import logging
from pathlib import Path

from pipeline.logs import JsonFormatter, scrub


def test_scrub_removes_url_passwords_and_known_secrets():
    text = "open rtsp://admin:hunter2@10.0.0.5/s failed; retry with hunter2; kafka pw Sekr1t"
    cleaned = scrub(text, ["hunter2", "Sekr1t"])
    assert "hunter2" not in cleaned and "Sekr1t" not in cleaned
    assert "rtsp://admin:***@10.0.0.5/s" in cleaned
    # a URL password is removed even when nobody listed it as a secret
    assert scrub("rtsp://u:unlisted@h/x") == "rtsp://u:***@h/x"


def test_formatter_writes_one_json_object_with_fields_and_scrubs_exceptions():
    record = logging.LogRecord("pipeline", logging.WARNING, __file__, 1, "camera state", (), None)
    record.fields = {"camera": "gate-1", "reason": "rtsp://u:pw123@h/x refused"}
    try:
        raise OSError("cannot open rtsp://u:pw123@h/x")
    except OSError:
        import sys
        record.exc_info = sys.exc_info()
    line = JsonFormatter(["pw123"]).format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["event"] == "camera state" and entry["camera"] == "gate-1" and entry["level"] == "warning"
    assert "pw123" not in line


def test_onnx_runtimes_telemetry_is_off_in_our_commands(tmp_path):
    """ONNX Runtime 1.32 writes a device id and an event store under $XDG_CACHE_HOME/Microsoft when
    imported (and warns on stderr where it cannot: a read-only container); our commands turn it off."""
    import subprocess
    import sys

    code = ("from pipeline.cli import main; main(['validate-config', 'configs/demo.yaml']); "
            "import onnxruntime")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2],
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
                                 "DEMO_RTSP": "127.0.0.1:8554"})
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cache" / "Microsoft").exists() and "telemetry" not in result.stderr


def test_the_daemons_level_reaches_aiokafkas_group_events(capsys):
    """An operator who sets log_level sees aiokafka's group protocol at that level (JoinGroup and
    SyncGroup at debug, 'Joined group ... generation N' at info); each generation's line passes the
    rate limit that keeps a reconnect storm's repeats out."""
    from pipeline.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    try:
        setup_logging("debug")
        coordinator.debug("Sending JoinGroup (%s) to coordinator %s", "request", 1)
        setup_logging("info")
        coordinator.debug("Sending SyncGroup %s", "not at info")
        for generation in (7, 8, 8):
            coordinator.info("Joined group '%s' (generation %s) with member_id %s", "g", generation, "m-1")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert events == ["Sending JoinGroup (request) to coordinator 1", "Joined group 'g' (generation 7) with member_id m-1",
                      "Joined group 'g' (generation 8) with member_id m-1"]
