"""The alerting consumer against the real broker: detections/v1 in (encoded as the daemon does),
alerts/v2 out, offsets committed so a restart does not repeat alerts, junk skipped."""
import json
import signal
import subprocess
import sys
import time
import uuid
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from pipeline.core import CameraState, Detection, FrameMeta, FrameResult, ModelRef
from pipeline.messages import encode_detections, encode_status
from scripts.lab.audit import transcribe
from scripts.lab.broker import consume, produce
from scripts.lab.common import REPO, wait_for

SCHEMA = json.loads(resources.files("pipeline").joinpath("schemas/alerts-v2.schema.json").read_text())
IN_BAY = (400, 700, 500, 900)


def detections(camera: str, at: float, seq: int, boxes=()) -> bytes:
    meta = FrameMeta(camera, float(seq) / 10, at, "rtcp", 1920, 1080)
    dets = tuple(Detection(0, "person", 0.9, b) for b in boxes)
    return encode_detections(FrameResult(meta, seq, dets), ModelRef("m", "0" * 64, "onnxruntime"), "run")


def episode(camera: str, start: float, seq0: int) -> list[tuple[str, bytes]]:
    """6 s with a person in the bay, then 3 s without, at 10 frames/s of capture time."""
    frames = [(i, [IN_BAY] if i < 60 else []) for i in range(90)]
    return [(camera, detections(camera, start + i / 10, seq0 + i, boxes)) for i, boxes in frames]


class AlertProcess:
    def __init__(self, rules: Path, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        transcribe("daemon-logs", str(log.resolve()))
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "alerts", "--rules", str(rules)],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self._log.close()


def test_alerts_fire_and_resolve_from_real_topics_and_a_restart_repeats_none(tmp_path, broker):
    run = uuid.uuid4().hex[:8]
    topic, alerts_topic = f"det-{run}", f"alerts-{run}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": broker.bootstrap, "detections_topic": topic, "alerts_topic": alerts_topic,
                  "group_id": f"alerts-{run}", "start_from": "earliest"},
        "metrics": {"listen": None},
        "zones": {"bay": {"camera": "gate-1", "polygon": [[100, 600], [900, 600], [900, 1080], [100, 1080]]}},
        "rules": [{"id": "person-in-bay", "kind": "dwell", "classes": ["person"], "zone": "bay",
                   "for_s": 5, "clear_s": 2}],
    }))
    t0 = time.time() - 60
    junk = [("gate-1", b"not json"), ("gate-1", encode_status("gate-1", CameraState.STREAMING, None, "ok", t0))]
    produce(broker.bootstrap, topic, junk + episode("gate-1", t0, 0) + episode("gate-2", t0, 0))

    first = AlertProcess(rules, tmp_path / "alerts.log")
    try:
        got = consume(broker.bootstrap, [alerts_topic], lambda rs: len(rs) >= 2, 60)
    finally:
        code = first.stop()
    assert code == 0, first.text()
    assert [(r.key, r.value["state"]) for r in got] == [("gate-1", "firing"), ("gate-1", "resolved")]
    for record in got:
        jsonschema.validate(record.value, SCHEMA)
    assert got[0].value["duration_s"] == 5.0 and got[1].value["alert_id"] == got[0].value["alert_id"]
    assert "skipping messages that are not detections/v1" in first.text()

    # a restart with the same group resumes after the committed offsets: the first episode is not
    # alerted again, a new one is
    second = AlertProcess(rules, tmp_path / "alerts.log")
    try:
        wait_for(lambda: first.text().count('"alerting"') >= 2, 30, "the restarted consumer")
        produce(broker.bootstrap, topic, episode("gate-1", t0 + 30, 90))
        got = consume(broker.bootstrap, [alerts_topic], lambda rs: len(rs) >= 4, 60)
    finally:
        assert second.stop() == 0
    assert [r.value["state"] for r in got] == ["firing", "resolved", "firing", "resolved"]
    assert len({r.value["alert_id"] for r in got}) == 2
