"""Tracking end to end: scenes served over RTSP, the daemon tracking them (default settings unless
told), its messages read back from Kafka and scored against the scenes' truth
(scripts/lab/track_score.py), and the alerting consumer counting line crossings per class on the
same topic. Used by tests/integration/test_tracking.py and `bench_tracking e2e`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import yaml

from pipeline.alerting.rules import Line
from scripts.lab.audit import transcribe
from scripts.lab.broker import consume, produce
from scripts.lab.cameras import RtspServer
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values
from scripts.lab.scenes import CLASSES, Truth, truth_path
from scripts.lab.track_score import HEADER, by_camera, pooled, score, truth_crossings

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"
CONFIDENCE = 0.35  # the model card's operating point
INPUT_SIZE = 320  # ... and its input size
MESSAGES_AT_5FPS = 100  # 20 s: more than one loop of the 15 s clips


def lines_of(camera: str, width: int, height: int) -> dict[str, dict]:
    """Lines through the middle of the picture, across (`in` is downwards) and along (`in` is rightwards)."""
    return {f"across-{camera}": {"camera": camera, "points": [[0, height / 2], [width, height / 2]], "in_side": "right"},
            f"along-{camera}": {"camera": camera, "points": [[width / 2, 0], [width / 2, height]], "in_side": "left"}}


def scenes_by_class(work: Path, broker, scenes: dict[str, tuple], make_clip: Callable, rates: tuple,
                    tracking: dict | None = None, prefix: str = "e2e", model: Path = MODEL,
                    input_size: int = INPUT_SIZE, confidence: float = CONFIDENCE):
    """`scenes` (name -> (seed, width, height)) made by `make_clip` and served over RTSP, the
    daemon on each at each of `rates` fps (one rate at a time: all at once overload 2 cores),
    `tracking`: the daemon's tracking section (default: its defaults), `model` its detector (at `input_size` and
    `confidence`), line rules per class ->
    ({fps: pooled score}, {fps: {label: (consumer's count, truth's)}}, {camera: score})."""
    clips = {name: make_clip(work, *scene) for name, scene in scenes.items()}
    cameras = {f"{name}-{fps}fps": (name, fps) for name in scenes for fps in rates}
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    lines = {name: line for cam, (scene, _) in cameras.items() for name, line in lines_of(cam, *scenes[scene][1:]).items()}
    rules = [{"id": f"count-{name}-{label}", "kind": "line", "line": name, "classes": [label]}
             for name in lines for label in CLASSES]
    with AlertingConsumer(work, broker, topic, lines, rules) as alerts:
        with RtspServer(clips) as rtsp:
            for fps in rates:
                run_daemon(work / f"daemon-{fps}fps", rtsp, broker, topic,
                           [(cam, rtsp.url(scene), rate) for cam, (scene, rate) in cameras.items() if rate == fps],
                           least=int(0.8 * 15 * fps), tracking=tracking, model=model,
                           input_size=input_size, confidence=confidence)
        messages, crossings = alerts.results()
    (work / "messages.json").write_text(json.dumps(messages))
    truths = {scene: Truth.load(truth_path(clip)) for scene, clip in clips.items()}
    per_camera = by_camera(messages)
    scores, counts, each = {}, {}, {}
    for fps in rates:
        mine = [cam for cam, (_, rate) in cameras.items() if rate == fps]
        scores[fps] = pooled([(per_camera[cam], truths[cameras[cam][0]]) for cam in mine])
        for cam in mine:
            each[cam] = score(per_camera[cam], truths[cameras[cam][0]])
            print(each[cam].row(cam))
        counts[fps] = {label: (sum(sum(crossings[f"{name}-{label}"].values()) for name, line in lines.items() if line["camera"] in mine),
                               sum(sum(truth_crossings(per_camera[line["camera"]], truths[cameras[line["camera"]][0]],
                                                       Line.model_validate(line), [label]).values())
                                   for name, line in lines.items() if line["camera"] in mine))
                       for label in CLASSES}
    print("\n" + HEADER + "\n" + "\n".join(scores[fps].row(f"{prefix} @ {fps} fps") for fps in rates))
    print("crossings by class (consumer, truth): " + str(counts))
    return scores, counts, each


class AlertingConsumer:
    """`rtsp-pipeline alerts` on `topic` with `lines` and `rules`, for the length of a `with`."""

    def __init__(self, work, broker, topic: str, lines: dict, rules: list, kafka: dict | None = None) -> None:
        self.broker, self.topic, self.port = broker, topic, free_port()
        self.rules = work / "rules.yaml"
        self.rules.write_text(yaml.safe_dump({
            "kafka": {"bootstrap_servers": broker.bootstrap, "detections_topic": topic, "alerts_topic": f"{topic}-alerts",
                      "group_id": f"{topic}-alerts", "start_from": "earliest", **(kafka or {})},
            "metrics": {"listen": f"127.0.0.1:{self.port}"}, "lines": lines, "rules": rules}))
        self.log = work / "alerts.log"

    def __enter__(self):
        produce(self.broker.bootstrap, self.topic, [("setup", b"{}")])  # the topic exists before the consumer subscribes
        transcribe("daemon-logs", str(self.log.resolve()))
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "pipeline", "alerts", "--rules", str(self.rules)],
                                            stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def results(self) -> tuple[list[dict], dict[str, dict[str, int]]]:
        """Every message on the topic (now that it is complete) and the consumer's line counts per rule."""
        records = consume(self.broker.bootstrap, [self.topic], lambda rs: False, 15)
        return [r.value for r in records if r.key != "setup"], _counts_after(self.port, len(records))

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(30)


def run_daemon(path, rtsp, broker, topic: str, cameras: list, least: int = MESSAGES_AT_5FPS,
               tracking: dict | None = None, model: Path = MODEL, input_size: int = INPUT_SIZE,
               confidence: float = CONFIDENCE) -> None:
    """The daemon on `cameras` (id, url, fps), until each has sent `least` messages and looped its clip."""
    names = {cam for cam, _, _ in cameras}
    config = daemon_config(path.with_suffix(".yaml"), {"path": model, "input_size": input_size, "confidence": confidence},
                           broker.bootstrap, cameras, topic=topic, status_topic=f"{topic}-status",
                           metrics_port=free_port(), **({"tracking": tracking} if tracking else {}))
    daemon = Daemon(config, path.with_suffix(".log"))
    daemon.start()
    try:
        def enough(records) -> bool:  # every camera past a loop of its clip, with enough frames
            mine = [r for r in records if r.key in names]
            counts, looped, last = defaultdict(int), set(), {}
            for r in mine:
                counts[r.key] += 1
                if r.value["frame"]["pts"] < last.get(r.key, -1):
                    looped.add(r.key)
                last[r.key] = r.value["frame"]["pts"]
            return all(counts[cam] >= least and cam in looped for cam in names)

        consume(broker.bootstrap, [topic], enough, 180)
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def _counts_after(port: int, messages: int) -> dict[str, dict[str, int]]:
    """The consumer's line-crossing counters once it has read `messages` messages."""
    def metrics() -> str:
        return http_get(f"http://127.0.0.1:{port}/metrics")[1]

    wait_for(lambda: metric_values(metrics(), "rtsp_alerts_messages_read_total").get("", 0) >= messages, 90,
             f"the alerting consumer to read all {messages} messages")
    counts = defaultdict(lambda: {"in": 0, "out": 0})
    for labels, value in metric_values(metrics(), "rtsp_alerts_line_crossings_total").items():
        fields = dict(part.split("=") for part in labels.strip("{}").replace('"', "").split(","))
        counts[fields["rule"].removeprefix("count-")][fields["direction"]] = int(value)
    return counts
