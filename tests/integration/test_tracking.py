"""Tracking end to end against ground truth: scripted tracking scenes (same-class objects
crossing, occlusions, stop and go, turns and speed changes, entering and leaving) served over
RTSP, the daemon tracking every camera (default settings) at its default sampling and at 5 fps,
its messages from Kafka scored against the scenes' object identities (scripts/lab/track_score.py,
motmetrics); and the alerting consumer counting line crossings from the same topic, against the
crossings of the truth at the frames the daemon inferred.

Scene seeds 9201-9203 are used by nothing else (the detector never saw them).

The breaker scenes (scripts/lab/breaker_scenes.py: a generator of their own, objects that stop,
look-alike pairs that cross, injected class flicker and misses) go through the same path at 10
and 5 fps, scored over the three scenes together, with line rules per class."""
import json
import subprocess
import sys
import uuid
from collections import defaultdict

import pytest
import yaml

from pipeline.alerting.rules import Line
from scripts.bench.bench_tracking import BREAKER_CAMERAS, TRACKING_CAMERAS, tracking_clip
from scripts.lab.audit import transcribe
from scripts.lab.breaker_scenes import breaker_clip
from scripts.lab.broker import consume, produce
from scripts.lab.cameras import RtspServer
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values
from scripts.lab.scenes import CLASSES, Truth, truth_path
from scripts.lab.track_score import HEADER, by_camera, pooled, score, truth_crossings

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"
CONFIDENCE = 0.35  # the model card's operating point
SAMPLING = {"": None, "-5fps": 5}  # camera-name suffix -> fps (None: every frame the daemon can take)
MESSAGES_AT_5FPS = 100  # 20 s: more than one loop of the 15 s clips
BREAKER_RATES = (10, 5)


def lines_of(camera: str, width: int, height: int) -> dict[str, dict]:
    """Lines through the middle of the picture, across (`in` is downwards) and along (`in` is rightwards)."""
    return {f"across-{camera}": {"camera": camera, "points": [[0, height / 2], [width, height / 2]], "in_side": "right"},
            f"along-{camera}": {"camera": camera, "points": [[width / 2, 0], [width / 2, height]], "in_side": "left"}}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, broker):
    work = tmp_path_factory.mktemp("tracking")
    clips = {name: tracking_clip(work, *scene) for name, scene in TRACKING_CAMERAS.items()}
    cameras = {f"{name}{suffix}": (name, fps) for name in TRACKING_CAMERAS for suffix, fps in SAMPLING.items()}
    topic = f"trk-{uuid.uuid4().hex[:8]}"
    lines = {name: line for cam, (scene, _) in cameras.items() for name, line in lines_of(cam, *TRACKING_CAMERAS[scene][1:]).items()}
    rules = [{"id": f"count-{name}", "kind": "line", "line": name, "classes": list(CLASSES)} for name in lines]
    with AlertingConsumer(work, broker, topic, lines, rules) as alerts:
        with RtspServer(clips) as rtsp:
            for suffix, fps in SAMPLING.items():  # one rate at a time: 6 cameras at once overload 2 cores
                run_daemon(work / f"daemon{suffix}", rtsp, broker, topic,
                           [(f"{name}{suffix}", rtsp.url(name), fps) for name in TRACKING_CAMERAS])
        messages, crossings = alerts.results()
    (work / "messages.json").write_text(json.dumps(messages))  # for a look when a figure is off
    truths = {scene: Truth.load(truth_path(clip)) for scene, clip in clips.items()}
    per_camera = by_camera(messages)
    scores = {cam: score(per_camera[cam], truths[scene]) for cam, (scene, _) in cameras.items()}
    expected = {name: truth_crossings(per_camera[line["camera"]], truths[cameras[line["camera"]][0]], Line.model_validate(line))
                for name, line in lines.items()}
    together = {suffix: pooled([(per_camera[cam], truths[scene]) for cam, (scene, rate) in cameras.items() if rate == fps])
                for suffix, fps in SAMPLING.items()}
    print("\n" + HEADER + "\n" + "\n".join(scores[cam].row(cam) for cam in sorted(scores)) + "\n"
          + "\n".join(together[suffix].row(f"together{suffix}") for suffix in SAMPLING))
    print("crossings (consumer / truth at the inferred frames): " + ", ".join(
        f"{name} in {crossings[name]['in']}/{expected[name]['in']} out {crossings[name]['out']}/{expected[name]['out']}"
        for name in sorted(lines)))
    return scores, crossings, expected, per_camera, together


@pytest.fixture(scope="module")
def breakers(tmp_path_factory, broker):
    """The breaker scenes at 10 and 5 fps (three cameras per daemon, one rate after the other), line rules per class ->
    ({fps: pooled score}, {fps: {label: (consumer's count, truth's)}})."""
    work = tmp_path_factory.mktemp("breakers")
    clips = {name: breaker_clip(work, *scene) for name, scene in BREAKER_CAMERAS.items()}
    cameras = {f"{name}-{fps}fps": (name, fps) for name in BREAKER_CAMERAS for fps in BREAKER_RATES}
    topic = f"brk-{uuid.uuid4().hex[:8]}"
    lines = {name: line for cam, (scene, _) in cameras.items() for name, line in lines_of(cam, *BREAKER_CAMERAS[scene][1:]).items()}
    rules = [{"id": f"count-{name}-{label}", "kind": "line", "line": name, "classes": [label]}
             for name in lines for label in CLASSES]
    with AlertingConsumer(work, broker, topic, lines, rules) as alerts:
        with RtspServer(clips) as rtsp:
            for fps in BREAKER_RATES:  # one rate at a time: all six cameras at once overload 2 cores (10 fps ones got 6)
                run_daemon(work / f"daemon-{fps}fps", rtsp, broker, topic,
                           [(cam, rtsp.url(scene), rate) for cam, (scene, rate) in cameras.items() if rate == fps],
                           least=int(0.8 * 15 * fps))
        messages, crossings = alerts.results()
    (work / "messages.json").write_text(json.dumps(messages))
    truths = {scene: Truth.load(truth_path(clip)) for scene, clip in clips.items()}
    per_camera = by_camera(messages)
    scores, counts = {}, {}
    for fps in BREAKER_RATES:
        mine = [cam for cam, (_, rate) in cameras.items() if rate == fps]
        scores[fps] = pooled([(per_camera[cam], truths[cameras[cam][0]]) for cam in mine])
        for cam in mine:
            print(score(per_camera[cam], truths[cameras[cam][0]]).row(cam))
        counts[fps] = {label: (sum(sum(crossings[f"{name}-{label}"].values()) for name, line in lines.items() if line["camera"] in mine),
                               sum(sum(truth_crossings(per_camera[line["camera"]], truths[cameras[line["camera"]][0]],
                                                       Line.model_validate(line), [label]).values())
                                   for name, line in lines.items() if line["camera"] in mine))
                       for label in CLASSES}
    print("\n" + HEADER + "\n" + "\n".join(scores[fps].row(f"breakers @ {fps} fps") for fps in BREAKER_RATES))
    print("crossings by class (consumer, truth): " + str(counts))
    return scores, counts


class AlertingConsumer:
    """`rtsp-pipeline alerts` on `topic` with `lines` and `rules`, for the length of a `with`."""

    def __init__(self, work, broker, topic: str, lines: dict, rules: list) -> None:
        self.broker, self.topic, self.port = broker, topic, free_port()
        self.rules = work / "rules.yaml"
        self.rules.write_text(yaml.safe_dump({
            "kafka": {"bootstrap_servers": broker.bootstrap, "detections_topic": topic, "alerts_topic": f"{topic}-alerts",
                      "group_id": f"{topic}-alerts", "start_from": "earliest"},
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


def run_daemon(path, rtsp, broker, topic: str, cameras: list, least: int = MESSAGES_AT_5FPS) -> None:
    """The daemon on `cameras` (id, url, fps), until each has sent `least` messages and looped its clip."""
    names = {cam for cam, _, _ in cameras}
    config = daemon_config(path.with_suffix(".yaml"), {"path": MODEL, "input_size": 320, "confidence": CONFIDENCE},
                           broker.bootstrap, cameras, topic=topic, status_topic=f"{topic}-status",
                           metrics_port=free_port())
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


@pytest.mark.parametrize("camera", sorted(f"{n}{s}" for n in TRACKING_CAMERAS for s in SAMPLING))
def test_each_object_keeps_one_track_id_idf1_at_least_0_9(tracked, camera):
    scores, _, _, per_camera, _ = tracked
    s = scores[camera]
    assert s.frames >= MESSAGES_AT_5FPS
    assert s.idf1 >= 0.9, f"{camera}: IDF1 {s.idf1:.3f}, {s.id_switches} ID switches, {s.tracks} tracks for {s.objects} objects"
    loops = sum(1 for a, b in zip(per_camera[camera], per_camera[camera][1:]) if b["frame"]["pts"] < a["frame"]["pts"])
    assert loops >= 1  # the scene restarted at least once: its objects got new ids, as their truth did


@pytest.mark.parametrize("suffix", SAMPLING)
def test_the_three_scenes_together_reach_idf1_0_93_at_each_sampling(tracked, suffix):
    """What the tracker was tuned on must not lose to the breaker scenes' changes."""
    s = tracked[4][suffix]
    assert s.objects >= 30 and s.idf1 >= 0.93, s


def test_line_crossings_counted_by_the_alerting_consumer_are_within_5_percent_of_the_truth(tracked):
    _, crossings, expected, _, _ = tracked
    counted = {d: sum(crossings[name][d] for name in expected) for d in ("in", "out")}
    truth = {d: sum(expected[name][d] for name in expected) for d in ("in", "out")}
    print(f"crossings of all lines: consumer {counted}, truth {truth}")
    assert min(truth.values()) >= 20, truth
    assert abs(sum(counted.values()) - sum(truth.values())) <= 0.05 * sum(truth.values()), (counted, truth)
    for d in ("in", "out"):  # and each direction within 10 % (fewer crossings: one miss is 2-3 %)
        assert abs(counted[d] - truth[d]) <= 0.1 * truth[d], (d, counted, truth)


def test_track_starts_and_ends_are_announced_once_and_match_the_ids_seen(tracked):
    _, _, _, per_camera, _ = tracked
    for camera, messages in per_camera.items():
        started = [t for m in messages for t in m["tracks"]["started"]]
        ended = [e["track_id"] for m in messages for e in m["tracks"]["ended"]]
        seen = {d["track_id"] for m in messages for d in m["detections"]} - {None}
        assert len(started) == len(set(started)) and len(ended) == len(set(ended)), camera
        assert seen == set(started), camera  # every id is announced when it first appears
        assert set(ended) <= set(started), camera
        first = {}
        for m in messages:
            for d in m["detections"]:
                if d["track_id"] is not None:
                    first.setdefault(d["track_id"], m["frame"]["seq"])
        for m in messages:
            for t in m["tracks"]["started"]:
                assert first[t] == m["frame"]["seq"], (camera, t)


@pytest.mark.parametrize("fps", BREAKER_RATES)
def test_breaker_scenes_keep_identity_through_stops_crossings_flicker_and_misses(breakers, fps):
    """Over the three breaker scenes together (a scene's 9 objects move its own IDF1 by 0.05 per
    ID switch): IDF1 at least 0.9 and at most 1.5 track ids per object and pass."""
    s = breakers[0][fps]
    assert s.objects >= 27 and s.frames >= 3 * 12 * fps, s
    assert s.idf1 >= 0.9 and s.ids_per_object <= 1.5, (fps, s)


@pytest.mark.parametrize("fps", BREAKER_RATES)
def test_line_crossings_by_class_with_injected_flicker_are_within_5_percent(breakers, fps):
    """Line rules per class count what the truth's objects did (the voted class: a one-frame
    "square" on a disc neither counts a square nor loses the disc's crossing)."""
    counts = breakers[1][fps]
    truth = sum(t for _, t in counts.values())
    off = sum(abs(c - t) for c, t in counts.values())
    assert truth >= 20 and sum(t > 0 for _, t in counts.values()) >= 3, counts
    assert off <= 0.05 * truth, (fps, counts)
